"""The flannel CNI plugin (flannel-io/cni-plugin), a short-lived exec per pod ADD/DEL.

Plugin side, apart from the node agent (``flannel``): it imports the standard library,
``cni`` and ``atomicfile`` only. ``flannelcni.plugin`` is the program (its ``main`` is
the ``flannel`` executable), ``flannelcni.subnetenv`` reads the agent's subnet.env,
``flannelcni.install`` puts a launcher into a CNI bin dir.
"""
