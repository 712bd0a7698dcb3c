"""Clients of our own for the streaming protocols, and a fake runtime, for tests.

``SpdyClient`` speaks to a streaming URL as client-go's SPDY executor and port
forwarder do (the upgrade request with its headers in client-go's order, streams opened
one by one, each waiting for its SYN_REPLY); ``WsClient`` as client-go's WebSocket
executor (binary channels, the v5 close signal) or a base64 one. ``FakeRuntime``
answers exec, attach and port forward from scripted functions.
"""

from __future__ import annotations

import base64
import json
import queue
import socket
import threading
import time
from typing import Any, Callable
from urllib.parse import urlsplit

from wsproto import ConnectionType, WSConnection
from wsproto.events import (AcceptConnection, BytesMessage, CloseConnection, Ping, RejectConnection,
                            RejectData, Request, TextMessage)

from . import spdy
from .runtime import StreamIO

__all__ = ["SpdyClient", "WsClient", "FakeRuntime", "http_request", "REMOTECOMMAND_VERSIONS"]

REMOTECOMMAND_VERSIONS = ("v5.channel.k8s.io", "v4.channel.k8s.io", "v3.channel.k8s.io",
                          "v2.channel.k8s.io", "channel.k8s.io")   # client-go's offer, in order


Connect = Callable[[str, int], socket.socket]


def _connect(host: str, port: int) -> socket.socket:
    return socket.create_connection((host, port), timeout=10)


def http_request(url: str, method: str = "GET", headers: tuple[tuple[str, str], ...] = (),
                 connect: Connect = _connect) -> tuple[int, dict, bytes, socket.socket]:
    """Send one request head; returns (status, headers, body read so far, socket).
    *connect* makes the TCP connection (a test in another netns passes its own)."""
    u = urlsplit(url)
    assert u.hostname is not None and u.port is not None
    sock = connect(u.hostname, u.port)
    sock.settimeout(30)
    lines = [f"{method} {u.path}{'?' + u.query if u.query else ''} HTTP/1.1", f"Host: {u.netloc}",
             *(f"{k}: {v}" for k, v in headers)]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(4096)
        if not chunk:
            break
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    hdrs: dict[str, list[str]] = {}
    for line in header_lines:
        k, _, v = line.partition(":")
        hdrs.setdefault(k.strip().lower(), []).append(v.strip())
    status = int(status_line.split()[1]) if status_line else 0
    length = int(hdrs.get("content-length", ["0"])[0])
    while status != 101 and len(rest) < length:
        chunk = sock.recv(4096)
        if not chunk:
            break
        rest += chunk
    return status, hdrs, rest, sock


class SpdyClient:
    """One SPDY session to a streaming URL."""

    def __init__(self, url: str, protocols: tuple[str, ...] = REMOTECOMMAND_VERSIONS,
                 method: str = "POST", connect: Connect = _connect) -> None:
        headers = [("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1")]
        headers += [("X-Stream-Protocol-Version", p) for p in protocols]
        self.status, self.headers, rest, self.sock = http_request(url, method, tuple(headers), connect)
        self.sock.settimeout(None)
        self.protocol = (self.headers.get("x-stream-protocol-version") or [""])[0]
        self.framer = spdy.Framer()
        self._next_id = 1
        self._lock = threading.Lock()
        self.data: dict[int, bytearray] = {}
        self.fin: dict[int, threading.Event] = {}
        self.replies: dict[int, threading.Event] = {}
        self.resets: dict[int, int] = {}
        self.goaway = threading.Event()
        self.closed = threading.Event()
        if self.status == 101:
            self._buf = rest
            threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            if self._buf:
                self._dispatch(self.framer.feed(self._buf))
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    break
                self._dispatch(self.framer.feed(chunk))
        except OSError:
            pass
        finally:
            self.closed.set()
            for ev in list(self.fin.values()) + list(self.replies.values()):
                ev.set()

    def _dispatch(self, frames: list[Any]) -> None:
        for f in frames:
            if isinstance(f, spdy.SynReply):
                self.replies[f.stream_id].set()
            elif isinstance(f, spdy.Data):
                self.data.setdefault(f.stream_id, bytearray()).extend(f.data)
                if f.fin:
                    self.fin[f.stream_id].set()
            elif isinstance(f, spdy.RstStream):
                self.resets[f.stream_id] = f.status
                self.fin[f.stream_id].set()
                self.replies[f.stream_id].set()
            elif isinstance(f, spdy.Ping):
                self.send(spdy.Ping(f.id))
            elif isinstance(f, spdy.GoAway):
                self.goaway.set()

    def send(self, frame: Any) -> None:
        with self._lock:
            self.sock.sendall(self.framer.encode(frame))

    def open(self, **headers: str) -> int:
        """Open a stream with *headers* (``streamType=...``), wait for the reply."""
        with self._lock:
            sid = self._next_id
            self._next_id += 2
        self.fin[sid], self.replies[sid] = threading.Event(), threading.Event()
        self.send(spdy.SynStream(sid, tuple((k.lower(), v) for k, v in headers.items())))
        if not self.replies[sid].wait(10):
            raise TimeoutError(f"no SYN_REPLY for stream {sid}")
        return sid

    def write(self, sid: int, data: bytes, fin: bool = False) -> None:
        self.send(spdy.Data(sid, data, fin))

    def read_all(self, sid: int, timeout: float = 20) -> bytes:
        """What the server sent on *sid* until its FIN (or reset, or the end)."""
        if not self.fin[sid].wait(timeout):
            raise TimeoutError(f"no end of stream {sid}: {bytes(self.data.get(sid, b''))!r}")
        return bytes(self.data.get(sid, b""))

    def command(self, stdin: bytes | None = None, stdout: bool = True, stderr: bool = True,
                tty: bool = False, resize: list[tuple[int, int]] | None = None,
                close_stdin: bool = True) -> dict[str, Any]:
        """Run the session as client-go does; returns the streams' bytes."""
        ids = {"error": self.open(streamType="error")}
        if stdin is not None:
            ids["stdin"] = self.open(streamType="stdin")
        if stdout:
            ids["stdout"] = self.open(streamType="stdout")
        if stderr and not tty:
            ids["stderr"] = self.open(streamType="stderr")
        if tty and self.protocol in ("v4.channel.k8s.io", "v3.channel.k8s.io"):
            ids["resize"] = self.open(streamType="resize")
            for w, h in resize or []:
                self.write(ids["resize"], json.dumps({"Width": w, "Height": h}).encode() + b"\n")
        if stdin is not None:
            if stdin:
                self.write(ids["stdin"], stdin)
            if close_stdin:
                self.write(ids["stdin"], b"", fin=True)
        out = {k: self.read_all(v) for k, v in ids.items() if k in ("stdout", "stderr", "error")}
        return out

    def close(self) -> None:
        try:
            self.send(spdy.GoAway(0))
        except OSError:
            pass
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


class WsClient:
    """One WebSocket to a streaming URL, reading messages into per-channel buffers."""

    def __init__(self, url: str, protocols: tuple[str, ...] = ("v5.channel.k8s.io",),
                 connect: Connect = _connect) -> None:
        u = urlsplit(url)
        assert u.hostname is not None and u.port is not None
        self.sock = connect(u.hostname, u.port)
        self.sock.settimeout(None)
        self.ws = WSConnection(ConnectionType.CLIENT)
        target = u.path + ("?" + u.query if u.query else "")
        self.sock.sendall(self.ws.send(Request(host=u.netloc, target=target,
                                               subprotocols=list(protocols))))
        self.protocol: str | None = None
        self.status = 0
        self.messages: queue.Queue[bytes | str | None] = queue.Queue()
        self._lock = threading.Lock()
        self.close_code: int | None = None
        self._accepted = threading.Event()
        self.binary = True
        threading.Thread(target=self._read, daemon=True).start()
        self._accepted.wait(10)

    def _read(self) -> None:
        parts: list[Any] = []
        try:
            while True:
                data = self.sock.recv(65536)
                self.ws.receive_data(data or None)
                for e in self.ws.events():
                    if isinstance(e, AcceptConnection):
                        self.protocol, self.status = e.subprotocol or "", 101
                        self.binary = "base64" not in (e.subprotocol or "")
                        self._accepted.set()
                    elif isinstance(e, (RejectConnection, RejectData)):
                        if isinstance(e, RejectConnection):
                            self.status = e.status_code
                        self._accepted.set()
                    elif isinstance(e, (BytesMessage, TextMessage)):
                        parts.append(e.data)
                        if e.message_finished:
                            self.messages.put((b"" if isinstance(parts[0], bytes) else "").join(parts))
                            parts = []
                    elif isinstance(e, Ping):
                        with self._lock:
                            self.sock.sendall(self.ws.send(e.response()))
                    elif isinstance(e, CloseConnection):
                        self.close_code = e.code
                        try:
                            with self._lock:
                                self.sock.sendall(self.ws.send(e.response()))
                        except Exception:
                            pass
                        return
                if not data:
                    return
        except (OSError, Exception):
            return
        finally:
            self._accepted.set()
            self.messages.put(None)

    def send(self, channel: int, data: bytes) -> None:
        with self._lock:
            if self.binary:
                self.sock.sendall(self.ws.send(BytesMessage(data=bytes([channel]) + data)))
            else:
                self.sock.sendall(self.ws.send(TextMessage(
                    data=chr(ord("0") + channel) + base64.b64encode(data).decode())))

    def close_stdin(self) -> None:
        """v5's close signal for channel 0."""
        with self._lock:
            self.sock.sendall(self.ws.send(BytesMessage(data=bytes([255, 0]))))

    def collect(self, timeout: float = 20) -> dict[int, bytes]:
        """Every channel's bytes until the server closes; the first message of each
        channel is kept apart under key ``-1 - channel`` when it is empty."""
        out: dict[int, bytearray] = {}
        deadline = time.monotonic() + timeout
        while True:
            try:
                m = self.messages.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError(f"the server did not close: {out}") from None
            if m is None:
                return {k: bytes(v) for k, v in out.items()}
            if isinstance(m, str):
                ch, data = ord(m[0]) - ord("0"), base64.b64decode(m[1:])
            else:
                ch, data = m[0], m[1:]
            if not data and ch not in out:
                out.setdefault(-1 - ch, bytearray())
            out.setdefault(ch, bytearray()).extend(data)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class FakeRuntime:
    """A ``streaming.runtime.Runtime`` from functions: *exec* gets (cmd, io), *attach*
    (io), *port_forward* (port) -> socket. Calls are recorded."""

    def __init__(self, exec: Callable[[list[str], StreamIO], None] | None = None,
                 attach: Callable[[StreamIO], None] | None = None,
                 port_forward: Callable[[int], socket.socket] | None = None) -> None:
        self._exec, self._attach, self._pf = exec, attach, port_forward
        self.calls: list[tuple[str, Any]] = []
        self.ios: list[StreamIO] = []

    def exec(self, container_id: str, cmd: list[str], io: StreamIO) -> None:
        self.calls.append(("exec", (container_id, cmd)))
        self.ios.append(io)
        assert self._exec is not None
        self._exec(cmd, io)

    def attach(self, container_id: str, io: StreamIO) -> None:
        self.calls.append(("attach", container_id))
        self.ios.append(io)
        assert self._attach is not None
        self._attach(io)

    def port_forward(self, sandbox_id: str, port: int) -> socket.socket:
        self.calls.append(("port_forward", (sandbox_id, port)))
        assert self._pf is not None
        return self._pf(port)
