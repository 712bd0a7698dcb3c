"""Channels over one WebSocket, as apimachinery's ``wsstream`` serves them.

Each message carries one channel's bytes: binary protocols put the channel number in
the first byte; ``base64`` ones send text, the channel as an ASCII digit and the data
in base64. Channels are read, write or both, fixed when the connection opens; data for
a channel that does not read is dropped. ``v5.channel.k8s.io`` adds the close signal:
channel 255 with one byte naming the channel whose input has ended. Closing a channel
ends only its reading side (the client is not told); the connection's close frame ends
everything.

The WebSocket protocol itself is wsproto's (sans-I/O); this module does the socket.
"""

from __future__ import annotations

import base64
import binascii
import logging
import select
import socket
import ssl
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from wsproto import ConnectionType, WSConnection
from wsproto.events import (AcceptConnection, BytesMessage, CloseConnection, Ping, RejectConnection,
                            Request, TextMessage)

__all__ = ["ChannelConfig", "WebSocket", "Channel", "ChannelConn", "handshake", "CLOSE_CHANNEL",
           "readable", "hung_up", "MAX_MESSAGE",
           "V5", "V4", "V4_BASE64", "V1", "V1_BASE64"]

log = logging.getLogger(__name__)

V5 = "v5.channel.k8s.io"
V4, V4_BASE64 = "v4.channel.k8s.io", "v4.base64.channel.k8s.io"
V1, V1_BASE64 = "channel.k8s.io", "base64.channel.k8s.io"
CLOSE_CHANNEL = 255
READ, WRITE = 1, 2
CHANNEL_BUFFER = 1 << 20
MAX_MESSAGE = 32 << 20    # x/net/websocket's default limit; more is closed with 1009
_POLLRDHUP = getattr(select, "POLLRDHUP", 0x2000)


def readable(sock: socket.socket, timeout: float) -> bool:
    """Whether *sock* has something to read (or its end) within *timeout*: the
    sockets stay blocking, so a slow reader on the other side never times a write out."""
    if isinstance(sock, ssl.SSLSocket) and sock.pending():
        return True
    p = select.poll()
    p.register(sock.fileno(), select.POLLIN | select.POLLERR | select.POLLHUP)
    return bool(p.poll(timeout * 1000))


def hung_up(sock: socket.socket) -> bool:
    """Whether the peer closed or reset the connection (without reading it)."""
    try:
        p = select.poll()
        p.register(sock.fileno(), _POLLRDHUP | select.POLLERR | select.POLLHUP)
        return bool(p.poll(0))
    except (OSError, ValueError):
        return True


@dataclass(frozen=True)
class ChannelConfig:
    binary: bool
    channels: tuple[int, ...]     # READ | WRITE per channel


class WebSocket:
    """A server WebSocket on *sock* after a handshake wsproto accepted."""

    def __init__(self, sock: socket.socket, ws: WSConnection, protocol: str, rest: bytes = b"",
                 idle_timeout: float = 0) -> None:
        self.sock, self.ws, self.protocol = sock, ws, protocol
        self.idle_timeout = idle_timeout
        self.closed = False
        self._write = threading.Lock()
        self._pending: deque[bytes | str | None] = deque()
        self._parts: list[Any] = []
        self._size = 0
        self.last_activity = time.monotonic()
        if rest:
            self.ws.receive_data(rest)

    def send(self, data: bytes | str) -> None:
        self._send(BytesMessage(data=data) if isinstance(data, bytes) else TextMessage(data=data))

    def _send(self, event: Any) -> None:
        # wsproto's state is shared by the reader and the writers: encode under the lock
        with self._write:
            if self.closed:
                raise OSError("the websocket is closed")
            self.sock.sendall(self.ws.send(event))
        self.last_activity = time.monotonic()

    def recv(self) -> bytes | str | None:
        """The next whole message; None once the peer closed (or went, or idled out)."""
        while not self._pending:
            for event in self.ws.events():
                if isinstance(event, (BytesMessage, TextMessage)):
                    self._parts.append(event.data)
                    self._size += len(event.data)
                    if self._size > MAX_MESSAGE:
                        log.info("websocket: a message over %d bytes: closing", MAX_MESSAGE)
                        self._try(CloseConnection(code=1009))
                        return None
                    if event.message_finished:
                        self._size = 0
                        first = self._parts[0]
                        joined = (b"" if isinstance(first, bytes) else "").join(self._parts)
                        self._parts = []
                        self._pending.append(joined)
                elif isinstance(event, Ping):
                    self._try(event.response())
                elif isinstance(event, CloseConnection):
                    self._try(event.response())
                    self._pending.append(None)
            if self._pending:
                break
            try:
                if not readable(self.sock, 1.0):
                    if self.idle_timeout and time.monotonic() - self.last_activity > self.idle_timeout:
                        return None
                    continue
                data = self.sock.recv(256 << 10)
            except (OSError, ValueError):
                return None
            if not data:
                return None
            self.last_activity = time.monotonic()
            self.ws.receive_data(data)
        return self._pending.popleft()

    def _try(self, event: Any) -> None:
        try:
            self._send(event)
        except Exception:   # gone, or wsproto past the close: nothing to answer
            pass

    def goodbye(self, code: int = 1000) -> None:
        """Send the close frame (once) and stop writing; reading goes on, so what the
        client still sends is taken (an unread byte would turn our close into a reset,
        which can cost the client the last messages)."""
        self._try(CloseConnection(code=code))
        with self._write:
            self.closed = True
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self, code: int = 1000) -> None:
        """Send the close frame (once), then close the socket."""
        self._try(CloseConnection(code=code))
        with self._write:
            self.closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


def handshake(sock: socket.socket, head: bytes, offers: dict[str, Any],
              idle_timeout: float = 0, rest: bytes = b"") -> tuple[WebSocket | None, str, Any]:
    """Answer the upgrade request *head* (the raw request head; *rest*, what came
    after it in the same reads, is the first of the WebSocket's frames): pick the
    first subprotocol the client lists that is in *offers* ("" when it lists none and
    "" is offered), as x/net/websocket's handshake does; 403 when none fits. Returns
    the socket, the protocol and its offer, or (None, "", None) after a refusal."""
    ws = WSConnection(ConnectionType.SERVER)
    try:
        ws.receive_data(head)
        request = next((e for e in ws.events() if isinstance(e, Request)), None)
    except Exception as exc:   # wsproto's RemoteProtocolError: not a WebSocket handshake
        log.info("websocket: bad handshake: %s", exc)
        request = None
    if request is None:
        sock.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        return None, "", None
    wanted = list(request.subprotocols) or [""]
    chosen = next((p for p in wanted if p in offers), None)
    if chosen is None:
        log.info("websocket: requested protocol(s) are not supported: %s; supports %s",
                 list(request.subprotocols), sorted(offers))
        sock.sendall(ws.send(RejectConnection(status_code=403)))
        return None, "", None
    sock.sendall(ws.send(AcceptConnection(subprotocol=chosen or None)))
    return WebSocket(sock, ws, chosen, rest, idle_timeout=idle_timeout), chosen, offers[chosen]


class Channel:
    """One channel: ``read`` what the client sent on it, ``write`` to it."""

    def __init__(self, conn: "ChannelConn", number: int, mode: int) -> None:
        self.conn, self.number, self.mode = conn, number, mode
        self._cond = threading.Condition()
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._eof = not mode & READ

    def read(self, size: int = 65536) -> bytes:
        with self._cond:
            self._cond.wait_for(lambda: self._chunks or self._eof)
            if not self._chunks:
                return b""
            chunk = self._chunks.popleft()
            if len(chunk) > size:
                self._chunks.appendleft(chunk[size:])
                chunk = chunk[:size]
            self._buffered -= len(chunk)
            self._cond.notify_all()
            return chunk

    def write(self, data: bytes) -> None:
        if self.mode & WRITE:
            self.conn.write(self.number, data)

    def close(self) -> None:
        """End the input (as wsstream's channel Close): what came before is still read,
        then EOF; nothing goes to the client."""
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def stop_reading(self) -> None:
        """Nobody reads this channel any more: drop what it holds and what comes."""
        with self._cond:
            self._eof = True
            self._chunks.clear()
            self._buffered = 0
            self._cond.notify_all()

    def _deliver(self, data: bytes) -> None:
        with self._cond:
            while not self._cond.wait_for(lambda: self._buffered < CHANNEL_BUFFER or self._eof, 1.0):
                if hung_up(self.conn.ws.sock):
                    self._eof = True   # the client is gone: drop, get to the end
            if self._eof:
                return
            self._chunks.append(data)
            self._buffered += len(data)
            self._cond.notify_all()


class ChannelConn:
    """The channels of one WebSocket (kubelet's ``wsstream.Conn`` after ``Open``)."""

    def __init__(self, ws: WebSocket, config: ChannelConfig) -> None:
        self.ws, self.binary = ws, config.binary
        self.v5 = ws.protocol == V5
        self.channels = [Channel(self, i, mode) for i, mode in enumerate(config.channels)]
        self.done = threading.Event()

    def write(self, number: int, data: bytes) -> None:
        if self.binary:
            self.ws.send(bytes([number]) + data)
        else:
            self.ws.send(chr(ord("0") + number) + base64.b64encode(data).decode())

    def serve(self) -> None:
        """Read messages into the channels until the client closes; then every
        channel's reader sees the end."""
        try:
            while True:
                message = self.ws.recv()
                if message is None:
                    return
                self._dispatch(message)
        finally:
            self.done.set()
            for ch in self.channels:
                ch.close()

    def _dispatch(self, message: bytes | str) -> None:
        if not message:
            return
        if isinstance(message, str):
            if self.binary:
                return
            number, payload = ord(message[0]) - ord("0"), message[1:]
            try:
                data = base64.b64decode(payload, validate=True)
            except (binascii.Error, ValueError):
                log.info("websocket: channel %d sent bad base64", number)
                return
        else:
            number, data = message[0], message[1:]
            if not self.binary:
                return
        if self.v5 and number == CLOSE_CHANNEL:
            if len(data) == 1 and data[0] < len(self.channels):
                self.channels[data[0]].close()
            return
        if not 0 <= number < len(self.channels):
            log.info("websocket: a frame for channel %d, which is not there", number)
            return
        channel = self.channels[number]
        if channel.mode & READ and data:
            channel._deliver(data)

    def close(self, linger: float = 2.0) -> None:
        """The close frame, then wait (at most *linger* seconds) for the client to
        close its side, then the socket."""
        self.ws.goodbye()
        for ch in self.channels:   # nobody reads them now: the reader must not wait
            ch.stop_reading()
        self.done.wait(linger)
        self.ws.close()
