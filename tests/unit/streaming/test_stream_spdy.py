"""SPDY/3 framing, against the draft's layouts (bytes written down by hand)."""

from __future__ import annotations

import zlib

import pytest

from streaming import spdy
from streaming.spdydict import DICTIONARY


def test_dictionary_is_the_spdy3_one() -> None:
    assert len(DICTIONARY) == 1423 and zlib.adler32(DICTIONARY) == 0xE3C6A7C2
    assert DICTIONARY.startswith(b"\x00\x00\x00\x07options\x00\x00\x00\x04head")
    assert DICTIONARY.endswith(b"charset=iso-8859-1,utf-,*,enq=0.")


@pytest.mark.parametrize("frame,wire", [
    (spdy.Ping(1), "800300060000000400000001"),
    (spdy.GoAway(0), "80030007000000080000000000000000"),
    (spdy.RstStream(1, spdy.CANCEL), "80030003000000080000000100000005"),
    (spdy.WindowUpdate(1, 1), "80030009000000080000000100000001"),
    (spdy.Settings(((1, 5, 10), (2, 1, 1))), "800300040000001400000002010000050000000a0200000100000001"),
    (spdy.Data(1, b"hello"), "000000010000000568656c6c6f"),
    (spdy.Data(3, b"", fin=True), "0000000301000000"),
])
def test_frames_without_headers_byte_for_byte(frame: spdy.Frame, wire: str) -> None:
    assert spdy.Framer().encode(frame).hex() == wire
    assert spdy.Framer().feed(bytes.fromhex(wire)) == [frame]


def test_header_block_is_zlib_with_the_dictionary_sync_flushed() -> None:
    raw = spdy.Framer().encode(spdy.SynStream(1, (("streamtype", "error"),)))
    assert raw[:4] == bytes.fromhex("80030001")
    length = int.from_bytes(raw[5:8], "big")
    assert length == len(raw) - 8 and raw[8:12] == b"\x00\x00\x00\x01"
    block = raw[18:]
    # zlib header with FDICT and the dictionary's adler32, ended by a sync flush
    assert block[:6] == bytes.fromhex("78f9e3c6a7c2") and block.endswith(b"\x00\x00\xff\xff")
    plain = zlib.decompressobj(zdict=DICTIONARY).decompress(block)
    assert plain == bytes.fromhex("000000010000000a73747265616d74797065000000056572726f72")


def test_one_compression_context_per_direction() -> None:
    a, b = spdy.Framer(), spdy.Framer()
    frames = [spdy.SynStream(1, (("streamtype", "error"),)), spdy.SynReply(1),
              spdy.SynStream(3, (("streamtype", "error"), ("port", "80")))]
    wire = b"".join(a.encode(f) for f in frames)
    assert b.feed(wire) == frames
    # a later block alone does not decompress: it needs the context of the first
    third = a.encode(spdy.SynStream(5, (("streamtype", "error"),)))
    with pytest.raises(spdy.FrameError):
        spdy.Framer().feed(third)


def test_frames_split_anywhere_and_joined() -> None:
    a, b = spdy.Framer(), spdy.Framer()
    wire = a.encode(spdy.SynStream(1, (("streamtype", "stdin"),))) + a.encode(spdy.Data(1, b"x" * 70000))
    got = []
    for i in range(0, len(wire), 777):
        got += b.feed(wire[i:i + 777])
    assert [type(f) for f in got] == [spdy.SynStream, spdy.Data] and got[1].data == b"x" * 70000


def test_multiple_values_joined_by_nul_and_names_lowercased() -> None:
    a, b = spdy.Framer(), spdy.Framer()
    (got,) = b.feed(a.encode(spdy.SynReply(7, (("X-A", "1"), ("x-a", "2"), ("B", "")))))
    assert got.headers == (("x-a", "1"), ("x-a", "2"), ("b", ""))
    assert spdy.header(got.headers, "x-a") == "1" and spdy.header(got.headers, "c", "-") == "-"


def test_flags_priority_and_unknown_frames() -> None:
    a, b = spdy.Framer(), spdy.Framer()
    syn = spdy.SynStream(9, (), associated_id=3, priority=5, fin=True, unidirectional=True)
    raw = a.encode(syn)
    assert raw[4] == 0x03 and raw[16] == 5 << 5
    assert b.feed(raw) == [syn]
    # CREDENTIAL (10) and NOOP (5) are ignored, as the draft says
    assert spdy.Framer().feed(bytes.fromhex("8003000a00000000") + bytes.fromhex("800300060000000400000002")) \
        == [spdy.Ping(2)]


@pytest.mark.parametrize("wire,words", [
    ("800200060000000400000001", "version 2"),
    ("8003000600000003000000", "PING frame of 3 bytes"),
    ("80030003000000040000000100000005", "RST_STREAM frame of 4"),
    ("80030004000000080000000200000000", "SETTINGS of 8 bytes for 2 entries"),
])
def test_bad_frames_are_session_errors(wire: str, words: str) -> None:
    with pytest.raises(spdy.FrameError) as exc:
        spdy.Framer().feed(bytes.fromhex(wire))
    assert words in str(exc.value) and exc.value.stream_id == 0


def test_a_header_bomb_is_refused() -> None:
    c = zlib.compressobj(9, zlib.DEFLATED, 15, 8, zlib.Z_DEFAULT_STRATEGY, DICTIONARY)
    block = c.compress(b"\x00\x00\x00\x01" + b"\x00\x00\x00\x01a" + (10 << 20).to_bytes(4, "big")
                       + b"a" * (10 << 20)) + c.flush(zlib.Z_SYNC_FLUSH)
    body = (1).to_bytes(4, "big") + block
    wire = bytes.fromhex("80030002") + bytes([0]) + len(body).to_bytes(3, "big") + body
    with pytest.raises(spdy.FrameError, match="over"):
        spdy.Framer().feed(wire)


def test_truncated_header_block() -> None:
    c = zlib.compressobj(9, zlib.DEFLATED, 15, 8, zlib.Z_DEFAULT_STRATEGY, DICTIONARY)
    block = c.compress(b"\x00\x00\x00\x02\x00\x00\x00\x01a") + c.flush(zlib.Z_SYNC_FLUSH)
    body = (1).to_bytes(4, "big") + block
    wire = bytes.fromhex("80030002") + bytes([0]) + len(body).to_bytes(3, "big") + body
    with pytest.raises(spdy.FrameError, match="truncated"):
        spdy.Framer().feed(wire)
