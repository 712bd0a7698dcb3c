"""The streaming server on 127.0.0.1 with a fake runtime: URLs and tokens, the SPDY and
WebSocket remotecommand protocols, port forwarding, faults. No root needed."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from typing import Iterator

import pytest
from wsproto.events import BytesMessage

from streaming import spdy
from streaming.cache import RequestCache
from streaming.runtime import ExitError, StreamingError
from streaming.server import AttachRequest, ExecRequest, PortForwardRequest, StreamConfig, StreamServer
from streaming.testing import FakeRuntime, SpdyClient, WsClient, http_request


def _sh(cmd, io) -> None:
    """A tiny 'shell' for the fake runtime: echo, cat, fail N, sleep, size."""
    if cmd[0] == "echo":
        io.stdout.write((" ".join(cmd[1:]) + "\n").encode())
        if io.stderr is not None:
            io.stderr.write(b"to stderr\n")
    elif cmd[0] == "cat":
        while chunk := io.stdin.read():
            io.stdout.write(chunk)
    elif cmd[0] == "fail":
        raise ExitError(f"error executing command {cmd}, exit code {cmd[1]}", int(cmd[1]))
    elif cmd[0] == "broken":
        raise StreamingError("container is gone")
    elif cmd[0] == "size":
        size = io.resize.get(timeout=10)
        io.stdout.write(f"{size.width}x{size.height}\n".encode())
    elif cmd[0] == "wait":
        io.cancelled.wait(30)
    elif cmd[0] == "flood":   # output until the client is gone, never reading stdin
        while not io.cancelled.is_set():
            try:
                io.stdout.write(b"y" * 65536)
            except OSError:
                io.cancelled.wait(30)
                return
    elif cmd[0] == "big":
        io.stdout.write(b"z" * (48 << 20))


@pytest.fixture
def echo_server() -> Iterator[socket.socket]:
    """A TCP server on 127.0.0.1 answering 'pong:' + what it got, until EOF."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)

    def serve() -> None:
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return

            def one(c: socket.socket) -> None:
                got = b""
                while chunk := c.recv(65536):
                    got += chunk
                c.sendall(b"pong:" + got)
                c.close()
            threading.Thread(target=one, args=(c,), daemon=True).start()
    threading.Thread(target=serve, daemon=True).start()
    yield srv
    srv.close()


SILENT_PODS: list[tuple[socket.socket, threading.Event]] = []


def _silent_pod() -> socket.socket:
    """A pod that reads to EOF and then neither answers nor closes."""
    a, b = socket.socketpair()
    eof = threading.Event()

    def read() -> None:
        while b.recv(65536):
            pass
        eof.set()
    threading.Thread(target=read, daemon=True).start()
    SILENT_PODS.append((b, eof))
    return a


@pytest.fixture
def runtime(echo_server: socket.socket) -> FakeRuntime:
    port = echo_server.getsockname()[1]

    def pf(p: int) -> socket.socket:
        if p == 83:
            return _silent_pod()
        if p == 82:   # a pod that answers at once and closes, reading nothing
            a, b = socket.socketpair()
            b.sendall(b"bye")
            b.close()
            return a
        if p != 80:
            raise StreamingError(f"failed to connect to localhost:{p}: Connection refused")
        return socket.create_connection(("127.0.0.1", port))
    return FakeRuntime(exec=_sh, attach=lambda io: _sh(["cat"], io), port_forward=pf)


@pytest.fixture
def server(runtime: FakeRuntime) -> Iterator[StreamServer]:
    s = StreamServer(runtime, StreamConfig(creation_timeout=2))
    s.start()
    yield s
    s.stop()


def _threads_settle(before: int, timeout: float = 5) -> int:
    deadline = time.monotonic() + timeout
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    return threading.active_count()


# -- URLs and tokens -------------------------------------------------------------------

def test_url_token_single_use_and_kinds(server: StreamServer) -> None:
    url = server.get_exec(ExecRequest("c1", ("echo", "hi"), stdout=True))
    base, token = url.rsplit("/", 1)
    assert base == f"{server.base_url}/exec" and len(token) == 8
    assert server.base_url.startswith("http://127.0.0.1:")
    c = SpdyClient(url)
    assert c.status == 101 and c.protocol == "v4.channel.k8s.io"
    assert c.command(stderr=False) == {"stdout": b"hi\n", "error": b'{"metadata":{},"status":"Success"}'}
    c.close()
    status, hdrs, body, sock = http_request(url, "POST")   # used
    sock.close()
    assert (status, body) == (404, b"404 page not found\n")
    assert hdrs["content-type"] == ["text/plain; charset=utf-8"]
    other = server.get_exec(ExecRequest("c1", ("echo",), stdout=True)).rsplit("/", 1)[1]
    status, _, body, sock = http_request(f"{server.base_url}/attach/{other}")   # wrong kind
    sock.close()
    assert status == 404
    status, _, body, sock = http_request(f"{server.base_url}/exec/{other}")   # consumed by it
    sock.close()
    assert status == 404


@pytest.mark.parametrize("method,path,code,body", [
    ("PUT", "/exec/abcdefgh", 405, b"405: Method Not Allowed"),
    ("GET", "/exec/", 404, b"404: Page Not Found"),
    ("GET", "/nothing/abc", 404, b"404: Page Not Found"),
])
def test_routes(server: StreamServer, method: str, path: str, code: int, body: bytes) -> None:
    status, hdrs, got, sock = http_request(server.base_url + path, method)
    sock.close()
    assert (status, got) == (code, body)
    if code == 405:
        assert hdrs["allow"] == ["GET, POST"]


def test_cache_expiry_and_limit() -> None:
    cache = RequestCache(ttl=0.05, max_in_flight=2)
    t = cache.insert("a")
    cache.insert("b")
    with pytest.raises(Exception, match="maximum number of in-flight requests exceeded"):
        cache.insert("c")
    time.sleep(0.1)
    assert cache.consume(t) is None and len(cache) == 0
    assert cache.consume(cache.insert("d")) == "d"


def test_handshake_errors(server: StreamServer) -> None:
    url = server.get_exec(ExecRequest("c1", ("echo",), stdout=True))
    status, _, body, sock = http_request(url, "POST", (("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1")))
    sock.close()
    assert status == 400 and b"X-Stream-Protocol-Version does not exist" in body
    url = server.get_exec(ExecRequest("c1", ("echo",), stdout=True))
    c = SpdyClient(url, protocols=("v9.channel.k8s.io",))
    assert c.status == 403
    assert c.headers["x-accepted-stream-protocol-versions"][0] == "v4.channel.k8s.io"
    c.close()


# -- recorded client-go exchange -------------------------------------------------------

def test_client_go_upgrade_request_replayed(server: StreamServer) -> None:
    """The request head client-go's SPDY executor writes (transport/spdy, httpstream
    Negotiate: one X-Stream-Protocol-Version line per protocol, newest first), byte for
    byte, and the 101 it must get back."""
    url = server.get_exec(ExecRequest("c1", ("echo", "go"), stdout=True))
    host = url.split("/")[2]
    path = "/" + url.split("/", 3)[3]
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: crictl/v1.36.0\r\n"
            "Content-Length: 0\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n"
            "X-Stream-Protocol-Version: v5.channel.k8s.io\r\n"
            "X-Stream-Protocol-Version: v4.channel.k8s.io\r\n"
            "X-Stream-Protocol-Version: v3.channel.k8s.io\r\n"
            "X-Stream-Protocol-Version: v2.channel.k8s.io\r\n"
            "X-Stream-Protocol-Version: channel.k8s.io\r\n"
            "Accept-Encoding: gzip\r\n\r\n").encode()
    name, port = host.split(":")
    sock = socket.create_connection((name, int(port)))
    sock.sendall(head)
    reply = b""
    while b"\r\n\r\n" not in reply:
        reply += sock.recv(4096)
    assert reply == (b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n"
                     b"X-Stream-Protocol-Version: v4.channel.k8s.io\r\n\r\n")
    f = spdy.Framer()
    # the error stream first, then stdout, each after the reply to the one before
    sock.sendall(f.encode(spdy.SynStream(1, (("streamtype", "error"),))))
    sock.sendall(f.encode(spdy.SynStream(3, (("streamtype", "stdout"),))))
    got: list = []
    deadline = time.monotonic() + 10
    while not any(isinstance(x, spdy.GoAway) for x in got) and time.monotonic() < deadline:
        got += f.feed(sock.recv(65536))
    sock.close()
    kinds = [(type(x).__name__, getattr(x, "stream_id", None)) for x in got]
    assert kinds[:2] == [("SynReply", 1), ("SynReply", 3)]
    assert [x.data for x in got if isinstance(x, spdy.Data) and x.stream_id == 3] == [b"go\n", b""]
    assert b"".join(x.data for x in got if isinstance(x, spdy.Data) and x.stream_id == 1) == \
        b'{"metadata":{},"status":"Success"}'
    assert kinds[-1][0] == "GoAway"


# -- remotecommand over SPDY -----------------------------------------------------------

def test_exit_code_and_internal_error_v4(server: StreamServer) -> None:
    c = SpdyClient(server.get_exec(ExecRequest("c1", ("fail", "3"), stdout=True, stderr=True)))
    err = json.loads(c.command()["error"])
    c.close()
    assert err == {"metadata": {}, "status": "Failure", "reason": "NonZeroExitCode",
                   "message": "command terminated with non-zero exit code: error executing command "
                              "['fail', '3'], exit code 3",
                   "details": {"causes": [{"reason": "ExitCode", "message": "3"}]}}
    c = SpdyClient(server.get_exec(ExecRequest("c1", ("broken",), stdout=True)))
    err = json.loads(c.command(stderr=False)["error"])
    c.close()
    assert err["reason"] == "InternalError" and err["code"] == 500
    assert err["message"] == "Internal error occurred: error executing command in container: container is gone"


@pytest.mark.parametrize("protocol", ["v3.channel.k8s.io", "v2.channel.k8s.io"])
def test_older_protocols_write_the_message_only_on_failure(server: StreamServer, protocol: str) -> None:
    c = SpdyClient(server.get_exec(ExecRequest("c1", ("echo", "x"), stdout=True, stderr=True)), (protocol,))
    assert c.protocol == protocol
    assert c.command() == {"stdout": b"x\n", "stderr": b"to stderr\n", "error": b""}
    c.close()
    c = SpdyClient(server.get_exec(ExecRequest("c1", ("fail", "2"), stdout=True)), (protocol,))
    assert c.command(stderr=False)["error"].startswith(b"command terminated with non-zero exit code")
    c.close()


def test_v1_resets_the_error_stream_and_closes_stdin(server: StreamServer) -> None:
    c = SpdyClient(server.get_exec(ExecRequest("c1", ("cat",), stdin=True, stdout=True)), ("channel.k8s.io",))
    eid = c.open(streamType="error")
    sid = c.open(streamType="stdin")
    oid = c.open(streamType="stdout")
    assert c.read_all(sid) == b"" and sid not in c.resets    # our half of stdin: closed
    c.write(sid, b"still read\n", fin=True)
    assert c.read_all(oid) == b"still read\n"
    assert c.resets.get(eid) == spdy.CANCEL
    c.close()


def test_stdin_and_huge_paste(server: StreamServer) -> None:
    paste = os.urandom(8 << 20)
    c = SpdyClient(server.get_exec(ExecRequest("c1", ("cat",), stdin=True, stdout=True)))
    out = c.command(stdin=paste, stderr=False)
    c.close()
    assert out["stdout"] == paste and json.loads(out["error"])["status"] == "Success"


def test_tty_resize_stream(server: StreamServer) -> None:
    c = SpdyClient(server.get_exec(ExecRequest("c1", ("size",), stdout=True, tty=True)))
    out = c.command(tty=True, resize=[(120, 40)])
    c.close()
    assert out["stdout"] == b"120x40\n"


def test_streams_that_never_come_time_out(server: StreamServer, runtime: FakeRuntime) -> None:
    c = SpdyClient(server.get_exec(ExecRequest("c1", ("echo",), stdout=True, stderr=True)))
    c.open(streamType="error")
    c.open(streamType="bogus")   # taken, answered, not counted
    assert c.closed.wait(10) and runtime.calls == []   # no exec without its streams
    c.close()


def test_client_gone_mid_stream_cancels_the_exec(server: StreamServer, runtime: FakeRuntime) -> None:
    before = threading.active_count()
    c = SpdyClient(server.get_exec(ExecRequest("c1", ("wait",), stdin=True, stdout=True)))
    for kind in ("error", "stdin", "stdout"):
        c.open(streamType=kind)
    deadline = time.monotonic() + 5
    while not runtime.ios and time.monotonic() < deadline:
        time.sleep(0.01)
    c.sock.shutdown(socket.SHUT_RDWR)   # gone without a word
    assert runtime.ios[0].cancelled.wait(5)
    assert _threads_settle(before) <= before + 1


def test_fifty_concurrent_execs(server: StreamServer) -> None:
    before = threading.active_count()
    results: list = []

    def one(i: int) -> None:
        c = SpdyClient(server.get_exec(ExecRequest("c1", ("echo", str(i)), stdout=True)))
        results.append(c.command(stderr=False)["stdout"])
        c.close()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(results) == sorted(f"{i}\n".encode() for i in range(50))
    assert _threads_settle(before) <= before + 2


def test_attach(server: StreamServer, runtime: FakeRuntime) -> None:
    c = SpdyClient(server.get_attach(AttachRequest("c1", stdin=True, stdout=True)))
    assert c.command(stdin=b"typed\n", stderr=False)["stdout"] == b"typed\n"
    c.close()
    assert runtime.calls == [("attach", "c1")]


# -- remotecommand over WebSocket ------------------------------------------------------

def test_websocket_v5_with_close_signal(server: StreamServer) -> None:
    ws = WsClient(server.get_exec(ExecRequest("c1", ("cat",), stdin=True, stdout=True, stderr=True)))
    assert ws.protocol == "v5.channel.k8s.io"
    ws.send(0, b"over ws\n")
    ws.close_stdin()
    got = ws.collect()
    assert got[-2] == b"" and got[1] == b"over ws\n"   # the opening empty message on stdout
    assert json.loads(got[3]) == {"metadata": {}, "status": "Success"}
    assert ws.close_code == 1000


def _masked_frame(payload: bytes) -> bytes:
    """A client's binary WebSocket frame (RFC 6455 5.2), masked with 0x01020304."""
    mask = bytes([1, 2, 3, 4])
    return bytes([0x82, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def test_websocket_frames_in_the_same_packet_as_the_head(server: StreamServer) -> None:
    """What a client sends right behind its upgrade request is not lost."""
    from urllib.parse import urlsplit
    from wsproto import ConnectionType, WSConnection
    from wsproto.events import AcceptConnection, CloseConnection, Request
    u = urlsplit(server.get_exec(ExecRequest("c1", ("cat",), stdin=True, stdout=True)))
    ws = WSConnection(ConnectionType.CLIENT)
    sock = socket.create_connection((u.hostname, u.port), timeout=10)
    sock.sendall(ws.send(Request(host=u.netloc, target=u.path, subprotocols=["v5.channel.k8s.io"]))
                 + _masked_frame(b"\x00early\n") + _masked_frame(b"\xff\x00"))
    got, accepted, closed = b"", False, False
    while not closed:
        data = sock.recv(65536)
        if not data:
            break
        ws.receive_data(data)
        for event in ws.events():
            if isinstance(event, AcceptConnection):
                accepted = True
            elif isinstance(event, BytesMessage) and event.data[:1] == b"\x01":
                got += event.data[1:]
            elif isinstance(event, CloseConnection):
                closed = True
    sock.close()
    assert accepted and got == b"early\n" and closed


def test_connections_without_a_request_are_capped_oldest_out(runtime: FakeRuntime, monkeypatch) -> None:
    from streaming import server as srv
    monkeypatch.setattr(srv, "MAX_UNCHECKED", 3)
    s = StreamServer(runtime, StreamConfig())
    s.start()
    try:
        host, port = s._sock.getsockname()[:2]
        idle = []
        for _ in range(3):
            idle.append(socket.create_connection((host, port), timeout=5))
            time.sleep(0.1)
        # A real client comes while three idle ones wait: the oldest idle one goes,
        # the client is served.
        c = SpdyClient(s.get_exec(ExecRequest("c1", ("echo", "hi"), stdout=True)))
        assert c.command(stderr=False)["stdout"] == b"hi\n"
        c.close()
        assert idle[0].recv(10) == b""               # the oldest was closed
        idle[1].settimeout(0.3)
        with pytest.raises(TimeoutError):
            idle[1].recv(10)                         # the others still wait
        for sock in idle:
            sock.close()
    finally:
        s.stop()


def test_a_request_head_has_one_deadline(runtime: FakeRuntime, monkeypatch) -> None:
    """A client sending a byte now and then is cut at the head's deadline."""
    from streaming import server as srv
    monkeypatch.setattr(srv, "HEAD_TIMEOUT", 1.0)
    s = StreamServer(runtime, StreamConfig())
    s.start()
    try:
        sock = socket.create_connection(s._sock.getsockname()[:2], timeout=10)
        t = time.monotonic()
        try:
            for ch in b"GET /exec/x HTTP/1.1\r\nHost: a\r\n":
                sock.sendall(bytes([ch]))
                time.sleep(0.2)
        except OSError:
            pass
        assert sock.recv(10) == b""
        assert time.monotonic() - t < 4
        sock.close()
    finally:
        s.stop()


@pytest.mark.parametrize("protocol,v4", [("v4.channel.k8s.io", True), ("v4.base64.channel.k8s.io", True),
                                         ("channel.k8s.io", False), ("base64.channel.k8s.io", False)])
def test_websocket_protocols(server: StreamServer, protocol: str, v4: bool) -> None:
    ws = WsClient(server.get_exec(ExecRequest("c1", ("fail", "4"), stderr=True)), (protocol,))
    assert ws.protocol == protocol
    got = ws.collect()
    assert -3 in got   # nothing on stdout asked: the opening message is on stderr
    if v4:
        assert json.loads(got[3])["details"]["causes"][0]["message"] == "4"
    else:
        assert got[3].startswith(b"command terminated with non-zero exit code")


def test_websocket_unknown_protocol_is_forbidden(server: StreamServer) -> None:
    ws = WsClient(server.get_exec(ExecRequest("c1", ("echo",), stdout=True)), ("v9.channel.k8s.io",))
    assert ws.status == 403
    ws.close()


# -- port forward ----------------------------------------------------------------------

def test_spdy_port_forward_many_connections(server: StreamServer) -> None:
    c = SpdyClient(server.get_port_forward(PortForwardRequest("pod1")), ("portforward.k8s.io",))
    assert c.protocol == "portforward.k8s.io"
    for req in range(3):
        err = c.open(streamType="error", port="80", requestID=str(req))
        c.write(err, b"", fin=True)
        data = c.open(streamType="data", port="80", requestID=str(req))
        c.write(data, f"ping{req}".encode(), fin=True)
        assert c.read_all(data) == f"pong:ping{req}".encode()
        assert c.read_all(err) == b""
    c.close()


def test_spdy_port_forward_pod_closes_while_client_sends(server: StreamServer) -> None:
    """The pod's side goes while the client still sends megabytes: what comes is
    dropped, and the session keeps serving other connections."""
    c = SpdyClient(server.get_port_forward(PortForwardRequest("pod1")), ("portforward.k8s.io",))
    err = c.open(streamType="error", port="82", requestID="0")
    data = c.open(streamType="data", port="82", requestID="0")
    for _ in range(8):
        c.write(data, bytes(1 << 20))
    c.write(data, b"", fin=True)
    assert c.read_all(data) == b"bye" and c.read_all(err) == b""
    err = c.open(streamType="error", port="80", requestID="1")
    c.write(err, b"", fin=True)
    data = c.open(streamType="data", port="80", requestID="1")
    c.write(data, b"again", fin=True)
    assert c.read_all(data) == b"pong:again"
    c.close()


def test_spdy_port_forward_pod_silent_after_half_close(server: StreamServer) -> None:
    """As containerd: the client's half-close goes on to the pod, which then has a
    second to finish; after that both sides are closed."""
    c = SpdyClient(server.get_port_forward(PortForwardRequest("pod1")), ("portforward.k8s.io",))
    err = c.open(streamType="error", port="83", requestID="0")
    c.write(err, b"", fin=True)
    data = c.open(streamType="data", port="83", requestID="0")
    c.write(data, b"request", fin=True)
    t = time.monotonic()
    assert c.read_all(data, timeout=10) == b""
    assert 0.8 < time.monotonic() - t < 5
    pod, eof = SILENT_PODS[-1]
    assert eof.is_set()                       # the pod saw the client's end
    assert pod.recv(10) == b""                # and then its connection was closed
    c.close()


def test_spdy_port_forward_unpaired_streams_time_out_on_one_thread(server: StreamServer) -> None:
    c = SpdyClient(server.get_port_forward(PortForwardRequest("pod1")), ("portforward.k8s.io",))
    time.sleep(0.2)
    before = threading.active_count()
    errs = [c.open(streamType="error", port="80", requestID=str(i)) for i in range(20)]
    assert threading.active_count() - before <= 2       # one expiry thread, not one per pair
    t = time.monotonic()
    for sid in errs:
        assert c.read_all(sid, timeout=10).endswith(f"request={errs.index(sid)}) timed out "
                                                    "waiting for streams".encode())
        assert c.resets.get(sid) == spdy.CANCEL
    assert 1.5 < time.monotonic() - t < 6                 # the creation timeout is 2 s
    assert _threads_settle(before) <= before              # the expiry thread is gone too
    err = c.open(streamType="error", port="80", requestID="x")   # the session still serves
    c.write(err, b"", fin=True)
    data = c.open(streamType="data", port="80", requestID="x")
    c.write(data, b"late", fin=True)
    assert c.read_all(data) == b"pong:late"
    c.close()


def test_spdy_streams_per_session_are_capped(server: StreamServer, monkeypatch) -> None:
    from streaming import spdyconn
    monkeypatch.setattr(spdyconn, "MAX_STREAMS", 4)
    c = SpdyClient(server.get_port_forward(PortForwardRequest("pod1")), ("portforward.k8s.io",))
    kept = [c.open(streamType="error", port="80", requestID=str(i)) for i in range(4)]
    refused = c.open(streamType="error", port="80", requestID="4")
    assert c.resets.get(refused) == spdy.REFUSED_STREAM
    assert not any(sid in c.resets for sid in kept)
    # the cap counts every open stream, a waiting pair's second one too
    data = c.open(streamType="data", port="80", requestID="0")
    assert c.resets.get(data) == spdy.REFUSED_STREAM
    c.close()


def test_spdy_port_forward_nothing_listening(server: StreamServer) -> None:
    c = SpdyClient(server.get_port_forward(PortForwardRequest("pod1")), ("portforward.k8s.io",))
    err = c.open(streamType="error", port="81", requestID="0")
    data = c.open(streamType="data", port="81", requestID="0")
    assert c.read_all(err) == (b"error forwarding port 81 to pod pod1, uid : failed to connect to "
                               b"localhost:81: Connection refused")
    assert c.resets.get(data) == spdy.CANCEL
    c.close()


@pytest.mark.parametrize("headers", [{"streamType": "data"}, {"streamType": "data", "port": "x"},
                                     {"streamType": "data", "port": "0"}, {"streamType": "odd", "port": "80"}])
def test_spdy_port_forward_bad_streams_are_reset(server: StreamServer, headers: dict) -> None:
    c = SpdyClient(server.get_port_forward(PortForwardRequest("pod1")), ("portforward.k8s.io",))
    sid = c.open(**headers)
    assert c.resets.get(sid) == spdy.CANCEL
    c.close()


def test_websocket_port_forward(server: StreamServer) -> None:
    ws = WsClient(server.get_port_forward(PortForwardRequest("pod1", (80,))), ("v4.channel.k8s.io",))
    first = [ws.messages.get(timeout=5) for _ in range(2)]
    assert first == [b"\x00\x50\x00", b"\x01\x50\x00"]   # the port, little-endian, on both
    ws.send(0, b"over ws")
    # the fake pod answers at its EOF only: end our side by closing
    time.sleep(0.2)
    ws.close()


def test_websocket_port_forward_query_ports_and_errors(server: StreamServer) -> None:
    status, _, body, sock = http_request(
        server.get_port_forward(PortForwardRequest("pod1")) + "?port=x",
        headers=(("Connection", "Upgrade"), ("Upgrade", "websocket"), ("Sec-WebSocket-Version", "13"),
                 ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")))
    sock.close()
    assert status == 400 and body.startswith(b'unable to parse "x" as a port')
    ws = WsClient(server.get_port_forward(PortForwardRequest("pod1")) + "?port=81", ("v4.channel.k8s.io",))
    got = ws.collect()
    assert got[1].endswith(b"Connection refused") and got[1][:2] == b"\x51\x00"


def test_spdy_over_websocket_tunnel(server: StreamServer) -> None:
    """client-go's tunnel: SPDY frames as the bytes of binary messages."""
    ws = WsClient(server.get_port_forward(PortForwardRequest("pod1")), ("SPDY/3.1+portforward.k8s.io",))
    assert ws.protocol == "SPDY/3.1+portforward.k8s.io"
    f = spdy.Framer()

    def send(frame) -> None:
        with ws._lock:
            ws.sock.sendall(ws.ws.send(BytesMessage(data=f.encode(frame))))
    send(spdy.SynStream(1, (("streamtype", "error"), ("port", "80"), ("requestid", "0"))))
    send(spdy.SynStream(3, (("streamtype", "data"), ("port", "80"), ("requestid", "0"))))
    send(spdy.Data(3, b"tunnelled", fin=True))
    got: list = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not any(isinstance(x, spdy.Data) and x.stream_id == 3 and x.fin
                                                  for x in got):
        m = ws.messages.get(timeout=10)
        assert m is not None
        got += f.feed(m)
    assert b"".join(x.data for x in got if isinstance(x, spdy.Data) and x.stream_id == 3) == b"pong:tunnelled"
    ws.close()


def test_tls_self_signed(runtime: FakeRuntime) -> None:
    import ssl
    from streaming.tls import server_context
    s = StreamServer(runtime, StreamConfig(tls=True), tls_context=server_context())
    s.start()
    try:
        url = s.get_exec(ExecRequest("c1", ("echo", "tls"), stdout=True))
        assert url.startswith("https://127.0.0.1:")
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE   # as crictl: insecure
        host, port = url.split("/")[2].split(":")
        raw = socket.create_connection((host, int(port)))
        tls = ctx.wrap_socket(raw, server_hostname="localhost")
        cert = tls.getpeercert(binary_form=True)
        assert cert
        tls.close()
    finally:
        s.stop()


# -- review findings: each failed before its fix ----------------------------------------

def test_client_reset_while_output_flows_cancels(server: StreamServer, runtime: FakeRuntime) -> None:
    import struct
    c = SpdyClient(server.get_exec(ExecRequest("c1", ("flood",), stdout=True)))
    c.open(streamType="error")
    c.open(streamType="stdout")
    deadline = time.monotonic() + 10
    while not runtime.ios and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.sock.close()   # an RST, while the server writes
    assert runtime.ios[0].cancelled.wait(10)


def test_a_slow_reader_gets_everything(server: StreamServer) -> None:
    c = SpdyClient(server.get_exec(ExecRequest("c1", ("big",), stdout=True)))
    eid, oid = c.open(streamType="error"), c.open(streamType="stdout")
    time.sleep(2.5)   # not reading for longer than any poll interval of the server
    assert len(c.read_all(oid, timeout=30)) == 48 << 20
    assert json.loads(c.read_all(eid))["status"] == "Success"
    c.close()


def test_nothing_goes_out_on_a_stream_before_its_reply(server: StreamServer) -> None:
    for _ in range(20):
        c = SpdyClient(server.get_port_forward(PortForwardRequest("pod1")), ("portforward.k8s.io",))
        seen: list = []
        original = c._dispatch

        def record(frames, original=original, seen=seen):
            seen.extend(frames)
            original(frames)
        c._dispatch = record   # type: ignore[method-assign]
        err = c.open(streamType="error", port="81", requestID="0")
        data = c.open(streamType="data", port="81", requestID="0")
        c.read_all(err)
        c.fin[data].wait(5)
        for sid in (err, data):
            kinds = [type(f).__name__ for f in seen if getattr(f, "stream_id", None) == sid]
            assert kinds[0] == "SynReply", kinds
        c.close()


def test_websocket_stdin_nobody_reads_does_not_wedge(server: StreamServer, runtime: FakeRuntime) -> None:
    before = threading.active_count()
    ws = WsClient(server.get_exec(ExecRequest("c1", ("wait",), stdin=True, stdout=True)))
    deadline = time.monotonic() + 10
    while not runtime.ios and time.monotonic() < deadline:   # the command runs
        time.sleep(0.01)
    # More than the channel holds (1 MiB), less than the sockets buffer: the client's
    # end still reaches the server (with more, TCP's closed window would hold the FIN
    # back, as it would from any runtime).
    for _ in range(12):
        ws.send(0, bytes(128 << 10))   # 1.5 MiB the command never reads
    ws.sock.shutdown(socket.SHUT_RDWR)
    ws.close()
    assert runtime.ios[0].cancelled.wait(10)
    assert _threads_settle(before) <= before + 1
