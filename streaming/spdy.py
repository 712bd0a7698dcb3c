"""SPDY/3.1 framing, sans-I/O: bytes in, frames out; frames in, bytes out.

What kubelet's streaming protocols ride on (``Upgrade: SPDY/3.1``): moby/spdystream
over Go's SPDY/3 framer. Frames are as the SPDY/3 draft has them (section 2.2-2.6):

- control: ``1 | version(15)=3 | type(16) | flags(8) | length(24) | body``
- data:    ``0 | stream id(31) | flags(8) | length(24) | data``

Header blocks are a 32-bit pair count, then per pair a 32-bit name length, the name,
a 32-bit value length and the value (several values joined by NUL), compressed with
zlib over the SPDY/3 dictionary, one compression context per direction for the whole
connection, each block ended by a sync flush (as Go's framer writes it). Names are
lower case on the wire (Go lowercases them and refuses others); this reader lowercases
what it gets.

No socket here: :class:`Framer` keeps the two zlib contexts and the bytes of a frame
not yet complete; :mod:`streaming.spdyconn` does the I/O.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from .spdydict import DICTIONARY

__all__ = [
    "VERSION", "FLAG_FIN", "FLAG_UNIDIRECTIONAL", "Frame", "SynStream", "SynReply",
    "RstStream", "Settings", "Ping", "GoAway", "Headers", "WindowUpdate", "Data",
    "FrameError", "Framer", "MAX_DATA", "header",
    "PROTOCOL_ERROR", "INVALID_STREAM", "REFUSED_STREAM", "UNSUPPORTED_VERSION", "CANCEL",
    "INTERNAL_ERROR", "FLOW_CONTROL_ERROR", "STREAM_IN_USE", "STREAM_ALREADY_CLOSED",
    "FRAME_TOO_LARGE", "GOAWAY_OK", "GOAWAY_PROTOCOL_ERROR", "GOAWAY_INTERNAL_ERROR",
]

VERSION = 3
SYN_STREAM, SYN_REPLY, RST_STREAM, SETTINGS, PING, GOAWAY, HEADERS, WINDOW_UPDATE = 1, 2, 3, 4, 6, 7, 8, 9
FLAG_FIN = 0x01
FLAG_UNIDIRECTIONAL = 0x02     # SYN_STREAM only
FLAG_SETTINGS_CLEAR = 0x01     # SETTINGS only

# RST_STREAM status codes (draft 2.6.3)
(PROTOCOL_ERROR, INVALID_STREAM, REFUSED_STREAM, UNSUPPORTED_VERSION, CANCEL, INTERNAL_ERROR,
 FLOW_CONTROL_ERROR, STREAM_IN_USE, STREAM_ALREADY_CLOSED, INVALID_CREDENTIALS,
 FRAME_TOO_LARGE) = range(1, 12)
# GOAWAY status codes (draft 2.6.6)
GOAWAY_OK, GOAWAY_PROTOCOL_ERROR, GOAWAY_INTERNAL_ERROR = 0, 1, 2

MAX_LENGTH = 0xFFFFFF          # the 24-bit length field
MAX_DATA = 128 << 10           # what one DATA frame of ours carries at most
MAX_HEADER_BLOCK = 256 << 10   # decompressed: more is a protocol error, not memory
_HEAD = struct.Struct(">IB3s")

HeaderList = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class SynStream:
    stream_id: int
    headers: HeaderList = ()
    associated_id: int = 0
    priority: int = 0
    fin: bool = False
    unidirectional: bool = False


@dataclass(frozen=True)
class SynReply:
    stream_id: int
    headers: HeaderList = ()
    fin: bool = False


@dataclass(frozen=True)
class RstStream:
    stream_id: int
    status: int


@dataclass(frozen=True)
class Settings:
    entries: tuple[tuple[int, int, int], ...] = ()   # (flags, id, value)
    clear: bool = False


@dataclass(frozen=True)
class Ping:
    id: int


@dataclass(frozen=True)
class GoAway:
    last_good_stream_id: int
    status: int = GOAWAY_OK


@dataclass(frozen=True)
class Headers:
    stream_id: int
    headers: HeaderList = ()
    fin: bool = False


@dataclass(frozen=True)
class WindowUpdate:
    stream_id: int
    delta: int


@dataclass(frozen=True)
class Data:
    stream_id: int
    data: bytes = b""
    fin: bool = False


Frame = SynStream | SynReply | RstStream | Settings | Ping | GoAway | Headers | WindowUpdate | Data


class FrameError(Exception):
    """A frame the peer should not have sent. *stream_id* 0: the session is broken
    (answer GOAWAY); else only that stream (answer RST_STREAM with *status*)."""

    def __init__(self, message: str, status: int = PROTOCOL_ERROR, stream_id: int = 0) -> None:
        super().__init__(message)
        self.status = status
        self.stream_id = stream_id


def header(headers: HeaderList, name: str, default: str = "") -> str:
    """The first value of header *name* (lower case), or *default*."""
    for key, value in headers:
        if key == name:
            return value
    return default


class Framer:
    """One connection's framing state: feed it what the peer sent, get frames; give it
    frames, get bytes to send. Not thread-safe: one reader calls :meth:`feed`, writers
    serialise :meth:`encode` (the compression context is shared by all of them)."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._compress = zlib.compressobj(zlib.Z_BEST_COMPRESSION, zlib.DEFLATED, 15, 9,
                                          zlib.Z_DEFAULT_STRATEGY, DICTIONARY)
        self._decompress = zlib.decompressobj(15, DICTIONARY)

    # -- reading ----------------------------------------------------------------------

    def feed(self, data: bytes) -> list[Frame]:
        """Frames completed by *data* (possibly none). Raises FrameError; after a
        session error (stream_id 0) the framer is unusable."""
        self._buf += data
        frames: list[Frame] = []
        while len(self._buf) >= 8:
            word, flags, raw_len = _HEAD.unpack_from(self._buf)
            length = int.from_bytes(raw_len, "big")
            if len(self._buf) < 8 + length:
                break
            with memoryview(self._buf) as view:   # one copy of the body, not two
                body = bytes(view[8:8 + length])
            del self._buf[:8 + length]
            frame = self._control(word, flags, body) if word & 0x80000000 else \
                Data(word & 0x7FFFFFFF, body, bool(flags & FLAG_FIN))
            if frame is not None:
                frames.append(frame)
        return frames

    def _control(self, word: int, flags: int, body: bytes) -> Frame | None:
        version, kind = (word >> 16) & 0x7FFF, word & 0xFFFF
        if version != VERSION:
            raise FrameError(f"SPDY version {version} is not 3", UNSUPPORTED_VERSION)
        fin = bool(flags & FLAG_FIN)
        if kind == SYN_STREAM:
            _need(body, 10, "SYN_STREAM")
            sid, assoc = _sid(body, 0), _sid(body, 4)
            return SynStream(sid, self._headers(body[10:], sid), assoc, body[8] >> 5, fin,
                             bool(flags & FLAG_UNIDIRECTIONAL))
        if kind == SYN_REPLY:
            _need(body, 4, "SYN_REPLY")
            sid = _sid(body, 0)
            return SynReply(sid, self._headers(body[4:], sid), fin)
        if kind == HEADERS:
            _need(body, 4, "HEADERS")
            sid = _sid(body, 0)
            return Headers(sid, self._headers(body[4:], sid), fin)
        if kind == RST_STREAM:
            _need(body, 8, "RST_STREAM", exact=True)
            return RstStream(_sid(body, 0), struct.unpack_from(">I", body, 4)[0])
        if kind == SETTINGS:
            _need(body, 4, "SETTINGS")
            (count,) = struct.unpack_from(">I", body)
            if len(body) != 4 + 8 * count:
                raise FrameError(f"SETTINGS of {len(body)} bytes for {count} entries")
            entries = tuple((body[4 + 8 * i], int.from_bytes(body[5 + 8 * i:8 + 8 * i], "big"),
                             struct.unpack_from(">I", body, 8 + 8 * i)[0]) for i in range(count))
            return Settings(entries, bool(flags & FLAG_SETTINGS_CLEAR))
        if kind == PING:
            _need(body, 4, "PING", exact=True)
            return Ping(struct.unpack(">I", body)[0])
        if kind == GOAWAY:
            _need(body, 8, "GOAWAY", exact=True)
            return GoAway(_sid(body, 0), struct.unpack_from(">I", body, 4)[0])
        if kind == WINDOW_UPDATE:
            _need(body, 8, "WINDOW_UPDATE", exact=True)
            return WindowUpdate(_sid(body, 0), struct.unpack_from(">I", body, 4)[0] & 0x7FFFFFFF)
        return None   # unknown control frames are ignored (draft 2.2.1): CREDENTIAL, NOOP

    def _headers(self, block: bytes, stream_id: int) -> HeaderList:
        try:
            raw = self._decompress.decompress(block, MAX_HEADER_BLOCK + 1)
        except zlib.error as exc:
            raise FrameError(f"header block of stream {stream_id} does not decompress: {exc}") from exc
        if len(raw) > MAX_HEADER_BLOCK or self._decompress.unconsumed_tail:
            raise FrameError(f"header block of stream {stream_id} is over {MAX_HEADER_BLOCK} bytes")
        out: list[tuple[str, str]] = []
        try:
            (count,) = struct.unpack_from(">I", raw)
            pos = 4
            for _ in range(count):
                name, pos = _string(raw, pos)
                value, pos = _string(raw, pos)
                key = name.decode("latin-1").lower()
                if not key:
                    raise FrameError(f"empty header name in stream {stream_id}", PROTOCOL_ERROR, stream_id)
                out += [(key, v) for v in value.decode("latin-1").split("\0")]
        except struct.error as exc:
            raise FrameError(f"header block of stream {stream_id} is truncated") from exc
        if pos != len(raw):
            raise FrameError(f"header block of stream {stream_id} has {len(raw) - pos} bytes too many")
        return tuple(out)

    # -- writing ----------------------------------------------------------------------

    def encode(self, frame: Frame) -> bytes:
        """The bytes of *frame* (compressing its headers in this connection's context)."""
        if isinstance(frame, Data):
            if len(frame.data) > MAX_LENGTH:
                raise ValueError(f"DATA of {len(frame.data)} bytes does not fit a frame")
            return _HEAD.pack(frame.stream_id & 0x7FFFFFFF, FLAG_FIN if frame.fin else 0,
                              len(frame.data).to_bytes(3, "big")) + frame.data
        fin = FLAG_FIN if getattr(frame, "fin", False) else 0
        if isinstance(frame, SynStream):
            flags = fin | (FLAG_UNIDIRECTIONAL if frame.unidirectional else 0)
            body = struct.pack(">IIBB", frame.stream_id, frame.associated_id,
                               (frame.priority & 7) << 5, 0) + self._block(frame.headers)
            return _control(SYN_STREAM, flags, body)
        if isinstance(frame, SynReply):
            return _control(SYN_REPLY, fin, struct.pack(">I", frame.stream_id) + self._block(frame.headers))
        if isinstance(frame, Headers):
            return _control(HEADERS, fin, struct.pack(">I", frame.stream_id) + self._block(frame.headers))
        if isinstance(frame, RstStream):
            return _control(RST_STREAM, 0, struct.pack(">II", frame.stream_id, frame.status))
        if isinstance(frame, Settings):
            body = struct.pack(">I", len(frame.entries)) + b"".join(
                bytes([f]) + i.to_bytes(3, "big") + struct.pack(">I", v) for f, i, v in frame.entries)
            return _control(SETTINGS, FLAG_SETTINGS_CLEAR if frame.clear else 0, body)
        if isinstance(frame, Ping):
            return _control(PING, 0, struct.pack(">I", frame.id))
        if isinstance(frame, GoAway):
            return _control(GOAWAY, 0, struct.pack(">II", frame.last_good_stream_id, frame.status))
        if isinstance(frame, WindowUpdate):
            return _control(WINDOW_UPDATE, 0, struct.pack(">II", frame.stream_id, frame.delta))
        raise TypeError(f"not a SPDY frame: {frame!r}")

    def _block(self, headers: HeaderList) -> bytes:
        grouped: dict[str, list[str]] = {}
        for name, value in headers:
            grouped.setdefault(name.lower(), []).append(value)
        raw = bytearray(struct.pack(">I", len(grouped)))
        for name, values in grouped.items():
            for part in (name.encode("latin-1"), "\0".join(values).encode("latin-1")):
                raw += struct.pack(">I", len(part)) + part
        return self._compress.compress(bytes(raw)) + self._compress.flush(zlib.Z_SYNC_FLUSH)


def _control(kind: int, flags: int, body: bytes) -> bytes:
    if len(body) > MAX_LENGTH:
        raise ValueError(f"control frame of {len(body)} bytes does not fit a frame")
    return _HEAD.pack(0x80000000 | VERSION << 16 | kind, flags, len(body).to_bytes(3, "big")) + body


def _need(body: bytes, size: int, what: str, *, exact: bool = False) -> None:
    if len(body) < size or (exact and len(body) != size):
        raise FrameError(f"{what} frame of {len(body)} bytes (needs {size})")


def _sid(body: bytes, at: int) -> int:
    return struct.unpack_from(">I", body, at)[0] & 0x7FFFFFFF


def _string(raw: bytes, pos: int) -> tuple[bytes, int]:
    (size,) = struct.unpack_from(">I", raw, pos)
    pos += 4
    if pos + size > len(raw):
        raise struct.error("truncated")
    return raw[pos:pos + size], pos + size
