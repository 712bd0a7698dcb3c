"""The content store, the image store and chain ids: no root, no network."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from images.content import ContentStore
from images.errors import DigestMismatch, InvalidContent
from images.manifest import Descriptor
from images.reference import parse
from images.snapshots import chain_ids
from images.store import ImageRecord, ImageStore


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_blobs_are_visible_only_once_verified(tmp_path: Path) -> None:
    store = ContentStore(str(tmp_path))
    data = b"layer bytes" * 1000
    with store.writer(digest(data), len(data), "blob") as w:
        w.write(data[:100])
        assert not store.has(digest(data)) and len(os.listdir(store.ingest_dir)) == 1
        w.write(data[100:])
        w.commit()
    assert store.has(digest(data)) and store.read(digest(data)) == data
    assert os.listdir(store.ingest_dir) == []
    for bad, size, words in ((b"other", 5, "digest sha256:"), (data, len(data) + 1, "bytes, the descriptor says")):
        with pytest.raises(DigestMismatch, match=words):
            with store.writer(digest(data + b"!"), size, "blob") as w:
                w.write(bad)
                w.commit()
    with pytest.raises(DigestMismatch, match="more than the 3 bytes"):
        with store.writer(digest(b"abcd"), 3, "blob") as w:
            w.write(b"abcd")
    assert list(store.list()) == [digest(data)] and os.listdir(store.ingest_dir) == []


def test_paths_only_from_digests(tmp_path: Path) -> None:
    store = ContentStore(str(tmp_path))
    for bad in ("sha256:../../etc", "md5:" + "a" * 32, "sha256:" + "A" * 64):
        with pytest.raises(InvalidContent):
            store.path(bad)


def test_chain_ids_follow_the_image_spec() -> None:
    a, b = "sha256:" + "a" * 64, "sha256:" + "b" * 64
    assert chain_ids([a, b]) == [a, "sha256:" + hashlib.sha256(f"{a} {b}".encode()).hexdigest()]


def record(n: int) -> ImageRecord:
    return ImageRecord(id="sha256:" + f"{n:x}" * 64, manifest=Descriptor("m", f"sha256:{n + 100:064x}", 1),
                       config=Descriptor("c", f"sha256:{n:064x}", 1), size=10)


def test_image_store_names_survive_a_restart_and_tags_move(tmp_path: Path) -> None:
    store = ImageStore(str(tmp_path))
    a = store.add(record(1), parse("busybox:1"))
    assert a.repo_tags == ("docker.io/library/busybox:1",)
    assert a.repo_digests == (f"docker.io/library/busybox@sha256:{101:064x}",)
    store.add(record(1), parse("localhost:5000/b:x"))
    b = store.add(record(2), parse("busybox:1"))      # the tag moves to the new image
    again = ImageStore(str(tmp_path))
    assert again.find("busybox:1").id == b.id
    assert again.find("sha256:" + "1" * 64).repo_tags == ("localhost:5000/b:x",)
    assert again.find("1" * 12).id == a.id              # a unique id prefix
    assert again.find("busybox") is None                # :latest was never pulled
    assert again.find(f"docker.io/library/busybox@sha256:{101:064x}").id == a.id
    again.delete(a.id)
    assert [r.id for r in ImageStore(str(tmp_path)).list()] == [b.id]
