"""Layers onto snapshot dirs: everything a layer may hold, and everything it may not.

Root is needed for owners, device nodes and the trusted.overlay xattr; nothing here
touches a network. Each test crafts its layer with tarfile.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest
import zstandard

from images.errors import DigestMismatch, InvalidContent, UnsafeLayer
from images.snapshots import Snapshots, chain_ids
from images.unpack import unpack_layer

pytestmark = pytest.mark.privileged


def tar(*entries: tuple) -> bytes:
    """(name, kind, extra...) entries: ("f", "file", data, mode, uid, gid, xattrs),
    ("d", "dir", mode), ("l", "sym", target), ("h", "hard", target), ("c", "chr", maj, min),
    ("p", "fifo")."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, kind, *rest in entries:
            ti = tarfile.TarInfo(name)
            ti.mtime = 1_600_000_000
            data = None
            if kind == "file":
                data = rest[0] if rest else b""
                ti.size = len(data)
                ti.mode = rest[1] if len(rest) > 1 else 0o644
                ti.uid, ti.gid = (rest[2], rest[3]) if len(rest) > 3 else (0, 0)
                if len(rest) > 4:
                    ti.pax_headers = {f"SCHILY.xattr.{k}": v for k, v in rest[4].items()}
            elif kind == "dir":
                ti.type, ti.mode = tarfile.DIRTYPE, rest[0] if rest else 0o755
            elif kind == "sym":
                ti.type, ti.linkname = tarfile.SYMTYPE, rest[0]
            elif kind == "hard":
                ti.type, ti.linkname = tarfile.LNKTYPE, rest[0]
            elif kind == "chr":
                ti.type, ti.devmajor, ti.devminor, ti.mode = tarfile.CHRTYPE, rest[0], rest[1], 0o666
            elif kind == "fifo":
                ti.type, ti.mode = tarfile.FIFOTYPE, 0o644
            tf.addfile(ti, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def unpack(tmp: Path, data: bytes, compression: str = "", diff_id: str | None = None,
           lower=lambda rel: None) -> Path:
    blob = tmp / f"blob-{hashlib.sha256(data).hexdigest()[:8]}"
    body = data
    if compression == "gzip":
        body = gzip.compress(data)
    elif compression == "zstd":
        body = zstandard.ZstdCompressor().compress(data)
    blob.write_bytes(body)
    target = tmp / f"fs-{blob.name}"
    target.mkdir()
    unpack_layer(str(blob), compression, str(target), layer="L",
                 diff_id=diff_id or "sha256:" + hashlib.sha256(data).hexdigest(), lower=lower)
    return target


@pytest.mark.parametrize("compression", ["", "gzip", "zstd"])
def test_everything_a_layer_holds_is_kept(tmp_path: Path, compression: str) -> None:
    fs = unpack(tmp_path, tar(
        ("etc", "dir", 0o755), ("etc/passwd", "file", b"root:x:0:0\n", 0o644),
        ("bin", "dir", 0o755), ("bin/su", "file", b"#!su", 0o4755, 0, 0),
        ("bin/ping", "file", b"ping", 0o755, 0, 0, {"security.capability":
                                                     "\x01\x00\x00\x02\x00\x20\x00\x00" + "\x00" * 12}),
        ("home/app", "dir", 0o750), ("home/app/data", "file", b"x", 0o600, 1000, 50),
        ("bin/sh", "sym", "busybox"), ("bin/sh2", "hard", "bin/su"),
        ("dev/null", "chr", 1, 3), ("run/fifo", "fifo")), compression)
    assert (fs / "etc/passwd").read_bytes() == b"root:x:0:0\n"
    su = os.lstat(fs / "bin/su")
    assert stat.S_IMODE(su.st_mode) == 0o4755 and su.st_mtime == 1_600_000_000
    assert os.getxattr(fs / "bin/ping", "security.capability")[:4] == b"\x01\x00\x00\x02"
    data = os.lstat(fs / "home/app/data")
    assert (data.st_uid, data.st_gid, stat.S_IMODE(data.st_mode)) == (1000, 50, 0o600)
    assert stat.S_IMODE(os.lstat(fs / "home/app").st_mode) == 0o750
    assert os.readlink(fs / "bin/sh") == "busybox"
    assert os.lstat(fs / "bin/sh2").st_ino == su.st_ino
    null = os.lstat(fs / "dev/null")
    assert stat.S_ISCHR(null.st_mode) and os.major(null.st_rdev) == 1 and os.minor(null.st_rdev) == 3
    assert stat.S_ISFIFO(os.lstat(fs / "run/fifo").st_mode)


def test_whiteouts_become_overlay_whiteouts(tmp_path: Path) -> None:
    fs = unpack(tmp_path, tar(("etc", "dir"), ("etc/.wh.motd", "file", b""),
                              ("var/cache", "dir"), ("var/cache/.wh..wh..opq", "file", b""),
                              ("var/cache/new", "file", b"n")))
    motd = os.lstat(fs / "etc/motd")
    assert stat.S_ISCHR(motd.st_mode) and motd.st_rdev == 0
    assert not (fs / "etc/.wh.motd").exists()
    assert os.getxattr(fs / "var/cache", "trusted.overlay.opaque") == b"y"
    assert not (fs / "var/cache/.wh..wh..opq").exists() and (fs / "var/cache/new").exists()


def test_layers_overlay_as_docker_would(tmp_path: Path) -> None:
    """Two layers through the real overlayfs: the upper one's whiteouts hide files."""
    snaps = Snapshots(str(tmp_path / "snaps"))
    l1 = tar(("a", "file", b"1"), ("b", "file", b"2"), ("d", "dir"), ("d/x", "file", b"x"))
    l2 = tar((".wh.b", "file", b""), ("d", "dir"), ("d/.wh..wh..opq", "file", b""),
             ("d/y", "file", b"y"), ("c", "file", b"3"))
    diffs = ["sha256:" + hashlib.sha256(x).hexdigest() for x in (l1, l2)]
    chains = chain_ids(diffs)
    for i, layer in enumerate((l1, l2)):
        p = snaps.prepare(chains[i], chains[i - 1] if i else "")
        blob = tmp_path / f"l{i}"
        blob.write_bytes(layer)
        unpack_layer(str(blob), "", p.fs, layer=str(i), diff_id=diffs[i])
        p.commit()
    merged, upper, work = tmp_path / "m", tmp_path / "u", tmp_path / "w"
    for d in (merged, upper, work):
        d.mkdir()
    lower = ":".join(snaps.lowerdirs(chains[1]))
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                    f"lowerdir={lower},upperdir={upper},workdir={work}", str(merged)], check=True)
    try:
        assert sorted(os.listdir(merged)) == ["a", "c", "d"]
        assert os.listdir(merged / "d") == ["y"]
    finally:
        subprocess.run(["umount", str(merged)], check=True)


@pytest.mark.parametrize("entries,words", [
    ((("/etc/passwd", "file", b"x"),), "'/etc/passwd' is an absolute path"),
    ((("../escape", "file", b"x"),), "'../escape' has a '..' component"),
    ((("a/../../b", "file", b"x"),), "has a '..' component"),
    ((("link", "sym", "/etc"), ("link/passwd", "file", b"x")), "goes through the symlink 'link'"),
    ((("up", "sym", ".."), ("up/x", "file", b"x")), "goes through the symlink 'up'"),
    ((("h", "hard", "../../etc/shadow"),), "hard link target '../../etc/shadow' has a '..'"),
    ((("h", "hard", "/etc/shadow"),), "'/etc/shadow' is an absolute path"),
    ((("s", "sym", "/"), ("h", "hard", "s/etc/shadow")), "not in this layer or below"),
    ((("h", "hard", "missing"),), "not in this layer or below"),
])
def test_entries_that_would_escape_are_refused(tmp_path: Path, entries: tuple, words: str) -> None:
    with pytest.raises(UnsafeLayer) as exc:
        unpack(tmp_path, tar(*entries))
    assert "layer L" in str(exc.value) and words in str(exc.value)
    assert not (tmp_path.parent / "escape").exists() and not (tmp_path / "escape").exists()


def test_hard_link_to_a_lower_layer_is_copied(tmp_path: Path) -> None:
    base = tmp_path / "lower-file"
    base.write_bytes(b"from below")
    fs = unpack(tmp_path, tar(("bin", "dir"), ("bin/x", "hard", "usr/bin/x")),
                lower=lambda rel: str(base) if rel == "usr/bin/x" else None)
    assert (fs / "bin/x").read_bytes() == b"from below"


def test_corrupt_truncated_and_mismatched_layers(tmp_path: Path) -> None:
    data = tar(("f", "file", b"x" * 100_000))
    blob = tmp_path / "cut"
    blob.write_bytes(gzip.compress(data)[:-100])
    (tmp_path / "t1").mkdir()
    with pytest.raises(InvalidContent, match="truncated"):
        unpack_layer(str(blob), "gzip", str(tmp_path / "t1"), layer="L",
                     diff_id="sha256:" + hashlib.sha256(data).hexdigest())
    blob.write_bytes(b"not gzip at all")
    (tmp_path / "t2").mkdir()
    with pytest.raises(InvalidContent, match="corrupt gzip"):
        unpack_layer(str(blob), "gzip", str(tmp_path / "t2"), layer="L", diff_id="sha256:" + "0" * 64)
    with pytest.raises(DigestMismatch, match="uncompressed digest"):
        unpack(tmp_path, data, "gzip", diff_id="sha256:" + "0" * 64)
