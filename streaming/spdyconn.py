"""A SPDY/3.1 server connection over a byte transport, as moby/spdystream behaves.

The peer (client-go) opens every stream with SYN_STREAM; each is offered to the
*accept* callback, answered with an empty SYN_REPLY, or RST_STREAM CANCEL when refused
(as kubelet's upgrader does), and read and written through :class:`Stream`. DATA for a
stream not (or no longer) open is dropped, as spdystream drops it. PING is echoed, SETTINGS and
WINDOW_UPDATE are taken and ignored (spdystream does no flow control either), GOAWAY
ends the session. A frame error breaks only its stream where it can (RST_STREAM),
else the session (GOAWAY, close).

Threads: :meth:`Connection.serve` is the one reader (the caller's thread); writers are
any threads, serialised by the connection's write lock (one zlib context). A stream
keeps at most ``STREAM_BUFFER`` bytes the consumer has not read; beyond that the
reader waits, so a huge paste is held back by TCP, not by memory; a session has at
most ``MAX_STREAMS`` open streams, beyond that a new one is refused (RST_STREAM
REFUSED_STREAM), so one client cannot make the server hold more.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

from . import spdy

__all__ = ["Transport", "Stream", "Connection", "StreamClosed", "STREAM_BUFFER", "MAX_STREAMS"]

log = logging.getLogger(__name__)

STREAM_BUFFER = 1 << 20
MAX_STREAMS = 128   # open streams per session (64 forwarded connections); more are refused
REPLY_WAIT = 10.0   # seconds a writer waits for the stream's SYN_REPLY to be sent


class Transport(Protocol):
    """What a connection runs over: a socket, or websocket messages (the tunnel)."""

    def recv(self, size: int) -> bytes: ...          # b"": the peer is gone
    def sendall(self, data: bytes) -> None: ...
    def close(self) -> None: ...


class StreamClosed(OSError):
    """Writing to a stream that is closed, reset, or whose connection is gone."""


class Stream:
    """One SPDY stream: ``read`` what the peer sent until its FIN, ``write`` to it,
    ``close`` our half (FIN), ``reset`` both."""

    def __init__(self, conn: "Connection", stream_id: int, headers: spdy.HeaderList) -> None:
        self.conn = conn
        self.id = stream_id
        self.headers = headers
        self._cond = threading.Condition()
        self._chunks: deque[bytes | memoryview] = deque()
        self._buffered = 0
        self._remote_done = False    # FIN or RST received, or the connection ended
        self._local_done = False     # our FIN or RST sent
        self._unread = False         # nobody reads it any more: what comes is dropped
        self._replied = threading.Event()   # SYN_REPLY (or our RST) sent: we may write
        self.reset_by_peer = False

    def header(self, name: str, default: str = "") -> str:
        return spdy.header(self.headers, name, default)

    def read(self, size: int = 65536, timeout: float | None = None) -> bytes:
        """Up to *size* bytes; b"" once the peer finished (or reset) and all was read.
        With *timeout*, raises TimeoutError when nothing came in time."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._chunks or self._remote_done, timeout):
                raise TimeoutError(f"nothing on stream {self.id} in {timeout} s")
            if not self._chunks:
                return b""
            chunk = self._chunks.popleft()
            if len(chunk) > size:   # a view: the rest is not copied on every read
                view = memoryview(chunk)
                self._chunks.appendleft(view[size:])
                chunk = view[:size]
            self._buffered -= len(chunk)
            self._cond.notify_all()
            return bytes(chunk)

    def write(self, data: bytes) -> None:
        # Nothing may go out before the reply: spdystream drops it, and a RST before
        # the reply fails the client's CreateStream.
        self._replied.wait(REPLY_WAIT)
        if self._local_done:
            raise StreamClosed(f"stream {self.id} is closed")
        view = memoryview(data)
        for at in range(0, len(view), spdy.MAX_DATA):
            self.conn.send(spdy.Data(self.id, bytes(view[at:at + spdy.MAX_DATA])))

    def close(self) -> None:
        """Our half is done (DATA with FIN); reading goes on. Idempotent."""
        self._replied.wait(REPLY_WAIT)
        with self._cond:
            if self._local_done:
                return
            self._local_done = True
        try:
            self.conn.send(spdy.Data(self.id, b"", fin=True))
        except StreamClosed:
            pass
        self.conn.forget_if_done(self)

    def reset(self, status: int = spdy.CANCEL) -> None:
        self._replied.wait(REPLY_WAIT)
        with self._cond:
            already = self._local_done and self._remote_done
            self._local_done = self._remote_done = True
            self._cond.notify_all()
        if not already:
            try:
                self.conn.send(spdy.RstStream(self.id, status))
            except StreamClosed:
                pass
        self.conn.forget_if_done(self)

    def stop_reading(self) -> None:
        """Nobody will read this stream again: drop what it holds and what comes, so
        a client that keeps sending cannot stall the connection's reader."""
        with self._cond:
            self._unread = True
            self._chunks.clear()
            self._buffered = 0
            self._cond.notify_all()

    @property
    def done(self) -> bool:
        return self._local_done and self._remote_done

    # -- the connection's reader calls these ----------------------------------------

    def _deliver(self, data: bytes, fin: bool) -> None:
        with self._cond:
            # Back-pressure: wait while the consumer is behind (or until it is gone).
            while not self._cond.wait_for(lambda: self._buffered < STREAM_BUFFER or self._remote_done
                                          or self._unread or self.conn.closed, 1.0):
                if self.conn.peer_hung_up():
                    # The client is gone while we hold its data: drop, so the reader
                    # gets to the end of the connection and the session is cancelled.
                    self._unread = True
            if self._remote_done:
                return
            if data and not self._unread:
                self._chunks.append(data)
                self._buffered += len(data)
            if fin:
                self._remote_done = True
            self._cond.notify_all()

    def _peer_reset(self) -> None:
        with self._cond:
            self.reset_by_peer = True
            self._remote_done = self._local_done = True
            self._cond.notify_all()

    def _end(self) -> None:
        """The connection is gone: readers see EOF, writers an error."""
        with self._cond:
            self._remote_done = self._local_done = True
            self._cond.notify_all()


class Connection:
    """The server side of one SPDY session (see the module's docstring)."""

    def __init__(self, transport: Transport, accept: Callable[[Stream], bool], *,
                 idle_timeout: float = 0) -> None:
        self.transport = transport
        self.accept = accept
        self.idle_timeout = idle_timeout
        self.framer = spdy.Framer()
        self.closed = False
        self._write = threading.Lock()
        self._streams: dict[int, Stream] = {}
        self._lock = threading.Lock()
        self._last_id = 0
        self._goaway_sent = False
        self.last_activity = time.monotonic()

    def send(self, frame: spdy.Frame) -> None:
        failed: OSError | None = None
        with self._write:
            if self.closed:
                raise StreamClosed("the connection is closed")
            try:
                self.transport.sendall(self.framer.encode(frame))
            except OSError as exc:
                failed = exc
        if failed is not None:
            self._shut()   # outside the write lock, which _shut takes
            raise StreamClosed(f"the connection is gone: {failed}") from failed
        self.last_activity = time.monotonic()

    def serve(self) -> None:
        """Read and dispatch frames until the peer goes, sends GOAWAY, breaks the
        protocol or is idle too long; then end every stream."""
        try:
            while not self.closed:
                try:
                    data = self.transport.recv(256 << 10)
                except TimeoutError:
                    if self.idle_timeout and time.monotonic() - self.last_activity > self.idle_timeout:
                        log.info("spdy: idle for %.0f s, closing", self.idle_timeout)
                        self._goaway(spdy.GOAWAY_OK)
                        return
                    continue
                except OSError:
                    return
                if not data:
                    return
                self.last_activity = time.monotonic()
                try:
                    frames = self.framer.feed(data)
                except spdy.FrameError as exc:
                    log.info("spdy: %s", exc)
                    self._goaway(spdy.GOAWAY_PROTOCOL_ERROR)
                    return
                for frame in frames:
                    if not self._dispatch(frame):
                        return
        finally:
            self._shut()

    def _dispatch(self, frame: spdy.Frame) -> bool:
        if isinstance(frame, spdy.Data):
            stream = self._streams.get(frame.stream_id)
            if stream is not None:
                stream._deliver(frame.data, frame.fin)
                self.forget_if_done(stream)
        elif isinstance(frame, spdy.SynStream):
            self._open(frame)
        elif isinstance(frame, spdy.RstStream):
            with self._lock:
                stream = self._streams.pop(frame.stream_id, None)
            if stream is not None:
                stream._peer_reset()
        elif isinstance(frame, spdy.Ping):
            self._try_send(spdy.Ping(frame.id))
        elif isinstance(frame, spdy.GoAway):
            return False
        # SETTINGS, WINDOW_UPDATE, HEADERS, SYN_REPLY: nothing to do for a server
        return True

    def _open(self, frame: spdy.SynStream) -> None:
        sid = frame.stream_id
        if sid % 2 == 0 or sid <= self._last_id:
            # Client streams are odd and increasing (draft 2.3.2).
            self._rst(sid, spdy.PROTOCOL_ERROR)
            return
        self._last_id = sid
        stream = Stream(self, sid, frame.headers)
        with self._lock:
            full = len(self._streams) >= MAX_STREAMS
            if not full:
                self._streams[sid] = stream
        if full:
            # Each open stream may hold STREAM_BUFFER bytes: a client cannot make
            # the server hold more than MAX_STREAMS of them.
            log.info("spdy: %d streams open, refusing stream %d", MAX_STREAMS, sid)
            self._rst(sid, spdy.REFUSED_STREAM)
            return
        if frame.fin:
            stream._deliver(b"", True)
        try:
            accepted = self.accept(stream)
        except Exception:   # a handler bug refuses the stream, never kills the session
            log.exception("spdy: accepting stream %d", sid)
            accepted = False
        if accepted:
            self._try_send(spdy.SynReply(sid, ()))
            stream._replied.set()
        else:
            stream._replied.set()
            stream.reset(spdy.CANCEL)

    def peer_hung_up(self) -> bool:
        check = getattr(self.transport, "hung_up", None)
        return bool(check and check())

    def forget_if_done(self, stream: Stream) -> None:
        if stream.done:
            with self._lock:
                if self._streams.get(stream.id) is stream:
                    self._streams.pop(stream.id, None)

    def _rst(self, stream_id: int, status: int) -> None:
        self._try_send(spdy.RstStream(stream_id, status))

    def _try_send(self, frame: spdy.Frame) -> None:
        try:
            self.send(frame)
        except StreamClosed:
            pass

    def _goaway(self, status: int) -> None:
        if not self._goaway_sent:
            self._goaway_sent = True
            self._try_send(spdy.GoAway(self._last_id, status))

    def goodbye(self) -> None:
        """kubelet's ``Close``: reset every stream we have not finished, GOAWAY, and no
        more writing; the reader goes on until the client closes its side."""
        with self._lock:
            streams = list(self._streams.values())
        for stream in streams:
            if not stream._local_done:
                stream.reset(spdy.CANCEL)
        self._goaway(spdy.GOAWAY_OK)
        with self._write:
            shutdown = getattr(self.transport, "shutdown_write", None)
            if shutdown is not None and not self.closed:
                shutdown()

    def close(self) -> None:
        """End the session: GOAWAY, then the transport."""
        if not self.closed:
            self._goaway(spdy.GOAWAY_OK)
        self._shut()

    def _shut(self) -> None:
        with self._write:
            if self.closed:
                return
            self.closed = True
        try:
            self.transport.close()
        except OSError:
            pass
        with self._lock:
            streams = list(self._streams.values())
            self._streams.clear()
        for stream in streams:
            stream._end()
