"""The streaming server: the URLs Exec, Attach and PortForward answer, and what is
served there (kubelet's ``cri/streaming`` server).

``get_exec``/``get_attach``/``get_port_forward`` keep the CRI request under a fresh
token (single use, one minute) and return ``<base>/exec/<token>`` (``attach``,
``portforward``). A GET or POST there with a known token is upgraded to SPDY/3.1 or
to a WebSocket and served in a thread of its own; an unknown, used or expired token
gets 404 ``404 page not found``, as Go's ``http.NotFound``.
"""

from __future__ import annotations

import logging
import queue
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

import h11

from . import portforward, remotecommand, spdyconn, wsstream
from .cache import RequestCache
from .runtime import Runtime

__all__ = ["StreamConfig", "ExecRequest", "AttachRequest", "PortForwardRequest", "StreamServer"]

log = logging.getLogger(__name__)

MAX_HEAD = 64 << 10
HEAD_TIMEOUT = 10.0   # seconds for the whole request head (and the TLS handshake)
MAX_UNCHECKED = 64    # connections at once whose token is not yet checked; the oldest goes
LINGER = 2.0          # seconds to wait for the client to close after our goodbye
TUNNEL = "SPDY/3.1+portforward.k8s.io"   # client-go's SPDY-over-WebSocket port forward


@dataclass(frozen=True)
class StreamConfig:
    address: str = "127.0.0.1"
    port: int = 0
    idle_timeout: float = 4 * 3600.0      # containerd's stream_idle_timeout, 4h
    creation_timeout: float = 30.0        # kubelet's DefaultStreamCreationTimeout
    tls: bool = False
    cert_file: str = ""
    key_file: str = ""


@dataclass(frozen=True)
class ExecRequest:
    container_id: str
    cmd: tuple[str, ...]
    stdin: bool = False
    stdout: bool = False
    stderr: bool = False
    tty: bool = False


@dataclass(frozen=True)
class AttachRequest:
    container_id: str
    stdin: bool = False
    stdout: bool = False
    stderr: bool = False
    tty: bool = False


@dataclass(frozen=True)
class PortForwardRequest:
    sandbox_id: str
    ports: tuple[int, ...] = ()


@dataclass
class _Head:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, list[str]] = field(default_factory=dict)
    raw: bytes = b""
    rest: bytes = b""

    def header(self, name: str) -> str:
        return ", ".join(self.headers.get(name, []))


class StreamServer:
    """Serves on ``config.address:config.port`` (0: a free port) once started."""

    def __init__(self, runtime: Runtime, config: StreamConfig,
                 tls_context: ssl.SSLContext | None = None) -> None:
        self.runtime, self.config = runtime, config
        self.cache = RequestCache()
        self.tls_context = tls_context
        self._sock: socket.socket | None = None
        self._closing = threading.Event()
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._unchecked: dict[socket.socket, None] = {}   # oldest first

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> None:
        family = socket.AF_INET6 if ":" in self.config.address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.config.address, self.config.port))
        sock.listen(128)
        self._sock = sock
        threading.Thread(target=self._accept_loop, daemon=True, name="stream-accept").start()
        log.info("streaming server on %s", self.base_url)

    @property
    def base_url(self) -> str:
        assert self._sock is not None
        host, port = self._sock.getsockname()[:2]
        host = f"[{host}]" if ":" in host else host
        return f"{'https' if self.tls_context else 'http'}://{host}:{port}"

    def stop(self) -> None:
        self._closing.set()
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._sock.close()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    # -- the CRI side -----------------------------------------------------------------

    def get_exec(self, request: ExecRequest) -> str:
        return f"{self.base_url}/exec/{self.cache.insert(request)}"

    def get_attach(self, request: AttachRequest) -> str:
        return f"{self.base_url}/attach/{self.cache.insert(request)}"

    def get_port_forward(self, request: PortForwardRequest) -> str:
        return f"{self.base_url}/portforward/{self.cache.insert(request)}"

    # -- connections ------------------------------------------------------------------

    def _accept_loop(self) -> None:
        assert self._sock is not None
        while not self._closing.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                if self._closing.is_set():
                    return
                time.sleep(0.05)
                continue
            threading.Thread(target=self._connection, args=(conn,), daemon=True,
                             name="stream-conn").start()

    def _connection(self, conn: socket.socket) -> None:
        with self._lock:
            self._conns.add(conn)
        # Anyone who can reach the port gets this far: the connections that have not
        # shown a token yet are held to MAX_UNCHECKED, and when a new one comes the
        # oldest goes (a real client sends its request at once; an idle flood cannot
        # lock it out).
        with self._lock:
            self._unchecked[conn] = None
            evict = next(iter(self._unchecked)) if len(self._unchecked) > MAX_UNCHECKED else None
        if evict is not None:
            log.info("streaming: %d connections without a request yet: closing the oldest",
                     MAX_UNCHECKED)
            self._drop_unchecked(evict)
            try:
                evict.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        try:
            try:
                # The TLS handshake, when there is TLS, and the request head within
                # HEAD_TIMEOUT together.
                deadline = time.monotonic() + HEAD_TIMEOUT
                conn.settimeout(HEAD_TIMEOUT)
                if self.tls_context is not None:
                    raw = conn
                    conn = self.tls_context.wrap_socket(conn, server_side=True)
                    with self._lock:
                        self._conns.discard(raw)
                        self._conns.add(conn)
                        if self._unchecked.pop(raw, False) is None:   # not evicted meanwhile
                            self._unchecked[conn] = None
                head = _read_head(conn, deadline)
            finally:
                self._drop_unchecked(conn)
            if head is not None:
                self._route(conn, head)
        except (OSError, ssl.SSLError, h11.RemoteProtocolError) as exc:
            log.debug("streaming: connection ended: %s", exc)
        except Exception:
            log.exception("streaming: serving a connection")
        finally:
            with self._lock:
                self._conns.discard(conn)
            try:
                conn.close()
            except OSError:
                pass

    def _drop_unchecked(self, conn: socket.socket) -> None:
        with self._lock:
            self._unchecked.pop(conn, None)

    def _route(self, conn: socket.socket, head: _Head) -> None:
        log.debug("streaming: %s %s upgrade=%r protocols=%r", head.method, head.path,
                  head.header("upgrade"), head.header("x-stream-protocol-version")
                  or head.header("sec-websocket-protocol"))
        parts = head.path.strip("/").split("/")
        kinds = {"exec": ExecRequest, "attach": AttachRequest, "portforward": PortForwardRequest}
        if len(parts) != 2 or parts[0] not in kinds or not parts[1]:
            return _respond(conn, 404, "404: Page Not Found")   # go-restful's words
        if head.method not in ("GET", "POST"):
            return _respond(conn, 405, "405: Method Not Allowed", (("Allow", "GET, POST"),))
        request = self.cache.consume(parts[1])
        if not isinstance(request, kinds[parts[0]]):
            return _respond(conn, 404, "404 page not found\n")
        # Blocking from here on (a slow client must not time a write out); the readers
        # poll, so idle timeouts and shutdown are seen.
        conn.settimeout(None)
        websocket = "upgrade" in head.header("connection").lower() and \
            head.header("upgrade").lower() == "websocket"
        if isinstance(request, PortForwardRequest):
            return self._port_forward(conn, head, request, websocket)
        opts = remotecommand.Options(request.stdin, request.stdout, request.stderr, request.tty)
        if isinstance(request, ExecRequest):
            cmd = list(request.cmd)
            call: Callable[[Any], None] = lambda io: self.runtime.exec(request.container_id, cmd, io)
            what = "executing command in container"
        else:
            call = lambda io: self.runtime.attach(request.container_id, io)
            what = "attaching to container"
        if websocket:
            self._ws_command(conn, head, opts, call, what)
        else:
            self._spdy_command(conn, head, opts, call, what)

    # -- remotecommand ----------------------------------------------------------------

    def _spdy_command(self, conn: socket.socket, head: _Head, opts: remotecommand.Options,
                      call: Callable[[Any], None], what: str) -> None:
        protocol = _negotiate(conn, head, remotecommand.PROTOCOLS)
        if protocol is None:
            return
        incoming: queue.Queue[Any] = queue.Queue()

        def accept(stream: spdyconn.Stream) -> bool:
            incoming.put(stream)   # every stream is taken; wait_for_streams sorts them
            return True
        session = spdyconn.Connection(_SocketTransport(conn, head.rest), accept,
                                      idle_timeout=self.config.idle_timeout)
        reader = threading.Thread(target=session.serve, daemon=True, name="spdy-reader")
        reader.start()
        gone = threading.Event()
        threading.Thread(target=lambda: (reader.join(), gone.set()), daemon=True).start()
        try:
            channels = remotecommand.wait_for_streams(incoming, protocol, opts,
                                                      self.config.creation_timeout)
        except TimeoutError as exc:
            log.info("remotecommand: %s", exc)
            return _finish(session, reader)
        remotecommand.run_session(channels, opts.tty, call, what, gone)
        _finish(session, reader)

    def _ws_command(self, conn: socket.socket, head: _Head, opts: remotecommand.Options,
                    call: Callable[[Any], None], what: str) -> None:
        modes = (wsstream.READ if opts.stdin else 0, wsstream.WRITE if opts.stdout else 0,
                 wsstream.WRITE if opts.stderr else 0, wsstream.WRITE,
                 wsstream.READ if opts.tty else 0)   # resizes are read only with a tty
        binary, text = wsstream.ChannelConfig(True, modes), wsstream.ChannelConfig(False, modes)
        offers = {"": binary, wsstream.V1: binary, wsstream.V1_BASE64: text, wsstream.V4: binary,
                  wsstream.V4_BASE64: text, wsstream.V5: binary}
        ws, protocol, config = wsstream.handshake(conn, head.raw, offers, self.config.idle_timeout, head.rest)
        if ws is None:
            return
        channels = wsstream.ChannelConn(ws, config)
        reader = threading.Thread(target=channels.serve, daemon=True, name="ws-reader")
        reader.start()
        ch = channels.channels
        # An empty message on the first channel written tells the client it is open.
        ch[1 if opts.stdout else 2 if opts.stderr else 3].write(b"")
        v4 = protocol in (wsstream.V4, wsstream.V4_BASE64, wsstream.V5)
        session = remotecommand.Channels(
            error=ch[3], stdin=ch[0] if opts.stdin else None, stdout=ch[1] if opts.stdout else None,
            stderr=ch[2] if opts.stderr else None, resize=ch[4] if opts.tty else None,
            status=remotecommand.st.encode_v4 if v4 else remotecommand.st.encode_v1)
        remotecommand.run_session(session, opts.tty, call, what, channels.done)
        channels.close()
        reader.join(LINGER)

    # -- portforward ------------------------------------------------------------------

    def _port_forward(self, conn: socket.socket, head: _Head, request: PortForwardRequest,
                      websocket: bool) -> None:
        if not websocket:
            if _negotiate(conn, head, (portforward.PROTOCOL,)) is None:
                return
            return self._spdy_port_forward(_SocketTransport(conn, head.rest), request)
        offers: dict[str, Any] = {TUNNEL: None}
        wanted = head.header("sec-websocket-protocol")
        ports = list(request.ports)
        if TUNNEL not in [p.strip() for p in wanted.split(",")]:
            # The CRI request's ports, as kubelet's CRI server takes them; without
            # any, the "port" query parameters, as kubelet's own server takes them.
            if not ports:
                try:
                    ports = portforward.parse_ports(head.query.get("port", []))
                except portforward.PortError as exc:
                    return _respond(conn, 400, str(exc))
            modes = tuple(m for _ in ports for m in (wsstream.READ | wsstream.WRITE, wsstream.WRITE))
            offers = {"": wsstream.ChannelConfig(True, modes),
                      wsstream.V4: wsstream.ChannelConfig(True, modes),
                      wsstream.V4_BASE64: wsstream.ChannelConfig(False, modes)}
        ws, protocol, config = wsstream.handshake(conn, head.raw, offers, self.config.idle_timeout, head.rest)
        if ws is None:
            return
        if protocol == TUNNEL:
            try:
                return self._spdy_port_forward(_TunnelTransport(ws), request)
            finally:
                ws.close()
        channels = wsstream.ChannelConn(ws, config)
        reader = threading.Thread(target=channels.serve, daemon=True, name="ws-reader")
        reader.start()
        workers = []
        for i, port in enumerate(ports):
            data, error = channels.channels[2 * i], channels.channels[2 * i + 1]
            for ch in (data, error):
                ch.write(port.to_bytes(2, "little"))
            t = threading.Thread(target=portforward.forward,
                                 args=(self.runtime, request.sandbox_id, port, data, error),
                                 daemon=True, name=f"ws-portforward-{port}")
            t.start()
            workers.append(t)
        for t in workers:
            t.join()
        channels.close()
        reader.join(LINGER)

    def _spdy_port_forward(self, transport: Any, request: PortForwardRequest) -> None:
        handler = portforward.SpdyPortForward(self.runtime, request.sandbox_id,
                                              self.config.creation_timeout)
        session = spdyconn.Connection(transport, handler.accept, idle_timeout=self.config.idle_timeout)
        session.serve()   # until the client is done with it


# -- HTTP ---------------------------------------------------------------------------------

def _read_head(conn: socket.socket, deadline: float) -> _Head | None:
    """The request head, read by *deadline* (``time.monotonic()``): a client that
    sends a byte now and then cannot hold a connection open."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no request head in {HEAD_TIMEOUT:g} s")
        conn.settimeout(left)
        chunk = conn.recv(4096)
        if not chunk:
            return None
        buf += chunk
        if len(buf) > MAX_HEAD:
            _respond(conn, 431, "request header fields too large\n")
            return None
    end = buf.index(b"\r\n\r\n") + 4
    parser = h11.Connection(h11.SERVER)
    parser.receive_data(buf[:end])
    event = parser.next_event()
    if not isinstance(event, h11.Request):
        _respond(conn, 400, "bad request\n")
        return None
    headers: dict[str, list[str]] = {}
    for name, value in event.headers:
        headers.setdefault(name.decode("latin-1").lower(), []).append(value.decode("latin-1"))
    target = urlsplit(event.target.decode("latin-1"))
    return _Head(event.method.decode(), target.path, parse_qs(target.query, keep_blank_values=True),
                 headers, buf[:end], buf[end:])


def _respond(conn: socket.socket, code: int, body: str, headers: tuple[tuple[str, str], ...] = ()) -> None:
    reasons = {400: "Bad Request", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
               431: "Request Header Fields Too Large"}
    data = body.encode()
    lines = [f"HTTP/1.1 {code} {reasons.get(code, 'Error')}",
             "Content-Type: text/plain; charset=utf-8", "X-Content-Type-Options: nosniff",
             f"Content-Length: {len(data)}", "Connection: close",
             *(f"{k}: {v}" for k, v in headers)]
    conn.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + data)


def _negotiate(conn: socket.socket, head: _Head, server: tuple[str, ...]) -> str | None:
    """apimachinery's ``httpstream.Handshake`` and the SPDY upgrade: the first protocol
    the client lists that the server has, then ``101 Switching Protocols``."""
    offered = [p.strip() for v in head.headers.get("x-stream-protocol-version", []) for p in v.split(",")]
    offered = [p for p in offered if p]
    if not offered:
        if "x-stream-protocol-version" not in head.headers:
            _respond(conn, 400, "unable to upgrade: header X-Stream-Protocol-Version does not exist "
                     f"in request with {sum(len(v) for v in head.headers.values())} headers\n")
        else:
            _respond(conn, 400, "unable to upgrade: header X-Stream-Protocol-Version contains "
                     f"[{' '.join(head.headers['x-stream-protocol-version'])}], but no valid protocols\n")
        return None
    chosen = next((p for p in offered if p in server), None)
    if chosen is None:
        _respond(conn, 403, f"unable to upgrade: unable to negotiate protocol: client supports "
                 f"[{' '.join(offered)}], server accepts [{' '.join(server)}]\n",
                 tuple(("X-Accepted-Stream-Protocol-Versions", p) for p in server))
        return None
    if "upgrade" not in head.header("connection").lower() or \
            "spdy/3.1" not in head.header("upgrade").lower():
        _respond(conn, 400, "unable to upgrade: missing upgrade headers in request\n")
        return None
    conn.sendall(("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n"
                  f"X-Stream-Protocol-Version: {chosen}\r\n\r\n").encode())
    return chosen


def _finish(session: spdyconn.Connection, reader: threading.Thread) -> None:
    """kubelet's deferred ``conn.Close()``: GOAWAY and the end of every stream; then
    give the client a moment to close its side, so nothing it sent last turns our
    close into a reset that could cost it the status."""
    session.goodbye()
    reader.join(LINGER)
    session.close()


class _SocketTransport:
    def __init__(self, sock: socket.socket, rest: bytes = b"") -> None:
        self.sock, self._rest = sock, rest

    def recv(self, size: int) -> bytes:
        """Bytes, b"" at the end; TimeoutError after a second of nothing (the
        session checks its idle time then)."""
        if self._rest:
            data, self._rest = self._rest, b""
            return data
        if not wsstream.readable(self.sock, 1.0):
            raise TimeoutError
        return self.sock.recv(size)

    def hung_up(self) -> bool:
        return wsstream.hung_up(self.sock)

    def sendall(self, data: bytes) -> None:
        self.sock.sendall(data)

    def shutdown_write(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class _TunnelTransport:
    """SPDY bytes in WebSocket binary messages (client-go's tunnel)."""

    def __init__(self, ws: wsstream.WebSocket) -> None:
        self.ws = ws

    def hung_up(self) -> bool:
        return wsstream.hung_up(self.ws.sock)

    def recv(self, size: int) -> bytes:
        while True:
            message = self.ws.recv()
            if message is None:
                return b""
            if isinstance(message, bytes) and message:
                return message

    def sendall(self, data: bytes) -> None:
        self.ws.send(data)

    def shutdown_write(self) -> None:
        pass

    def close(self) -> None:
        self.ws.close()
