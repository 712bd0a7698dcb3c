"""The CRI streaming server (kubelet's ``pkg/cri/streaming``): Exec, Attach and
PortForward answer a URL of this server, where clients speak kubelet's protocols
(remotecommand and portforward over SPDY/3.1 or WebSocket).

It knows nothing of gRPC or of containers: a :class:`~streaming.runtime.Runtime` given
to it runs the commands, joins the stdio and opens the connections.
"""
