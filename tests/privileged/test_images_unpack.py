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
           lowers: tuple[Path, ...] = ()) -> Path:
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
                 diff_id=diff_id or "sha256:" + hashlib.sha256(data).hexdigest(),
                 lowers=lambda: [str(p) for p in lowers])
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
    lower = unpack(tmp_path, tar(("usr/bin", "dir"), ("usr/bin/x", "file", b"from below",
                                                        0o4755, 1000, 50, {"user.k": "v"})))
    fs = unpack(tmp_path, tar(("bin", "dir"), ("bin/x", "hard", "usr/bin/x")), lowers=(lower,))
    assert (fs / "bin/x").read_bytes() == b"from below"
    st = os.lstat(fs / "bin/x")   # the owner kept, so setuid stays the user's, not root's
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1000, 50, 0o4755)
    assert os.getxattr(fs / "bin/x", "user.k") == b"v"
    assert st.st_ino != os.lstat(lower / "usr/bin/x").st_ino


def test_hard_link_to_a_lower_device_makes_a_node_and_never_reads_it(tmp_path: Path) -> None:
    lower = unpack(tmp_path, tar(("dev/zero", "chr", 1, 5)))
    fs = unpack(tmp_path, tar(("z", "hard", "dev/zero")), lowers=(lower,))
    st = os.lstat(fs / "z")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 5)


def test_hard_link_through_a_lower_symlink_is_refused(tmp_path: Path) -> None:
    """The lower layer's ``up -> <outside>``: its target's files are never copied in."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"host secret")
    lower = unpack(tmp_path, tar(("up", "sym", str(outside))))
    with pytest.raises(UnsafeLayer, match="not in this layer or below"):
        unpack(tmp_path, tar(("x", "hard", "up/secret")), lowers=(lower,))
    assert not any(p.name == "x" and p.is_file() for p in tmp_path.rglob("x"))


@pytest.mark.parametrize("middle", [
    (("a/.wh.f", "file", b""),),                      # the file was deleted
    (("a/.wh..wh..opq", "file", b""),),               # its directory made opaque
    ((".wh.a", "file", b""),),                        # its directory deleted
    (("a", "file", b"now a file"),),                  # its directory replaced by a file
])
def test_hard_link_to_a_file_a_middle_layer_hides_is_refused(tmp_path: Path, middle: tuple) -> None:
    bottom = unpack(tmp_path, tar(("a", "dir"), ("a/f", "file", b"old")))
    (tmp_path / "m").mkdir()
    mid = unpack(tmp_path / "m", tar(*middle))
    with pytest.raises(UnsafeLayer, match="not in this layer or below"):
        unpack(tmp_path, tar(("h", "hard", "a/f")), lowers=(mid, bottom))


def test_a_directory_replaced_by_a_symlink_gets_none_of_its_metadata(tmp_path: Path) -> None:
    """``d/`` then ``d/sub/`` (04777, uid 4242), then ``d -> <outside>``: the directories'
    owner and mode are applied at the end, and must not land on the outside dir."""
    outside = tmp_path / "outside"
    (outside / "sub").mkdir(parents=True)
    os.chmod(outside / "sub", 0o700)
    ti_sub = ("d/sub", "dir", 0o4777)
    layer = tar(("d", "dir", 0o755), ti_sub, ("d", "sym", str(outside)))
    # tar() gives dirs uid 0; make the sub dir's owner someone else.
    buf = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(layer)) as src, \
            tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as dst:
        for ti in src.getmembers():
            if ti.name == "d/sub":
                ti.uid = 4242
            dst.addfile(ti)
    fs = unpack(tmp_path, buf.getvalue())
    assert os.readlink(fs / "d") == str(outside)
    st = os.lstat(outside / "sub")
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o700)


@pytest.mark.parametrize("name", [".wh.", ".wh..", ".wh...", "a/.wh...", ".wh..wh.x"])
def test_whiteouts_that_name_no_file_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(UnsafeLayer, match="names no file"):
        unpack(tmp_path, tar(("a", "dir"), ("a/keep", "file", b"k"), (name, "file", b"")))
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("fs-")]   # still there


def test_overlay_xattrs_in_a_layer_are_ignored_and_symlink_user_xattrs_skipped(tmp_path: Path) -> None:
    fs = unpack(tmp_path, tar(
        ("d", "dir"), ("d/f", "file", b"x", 0o644, 0, 0, {"trusted.overlay.redirect": "/etc",
                                                          "trusted.overlay.metacopy": "",
                                                          "user.note": "kept"})))
    assert os.listxattr(fs / "d/f") == ["user.note"]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        ti = tarfile.TarInfo("s")
        ti.type, ti.linkname = tarfile.SYMTYPE, "target"
        ti.pax_headers = {"SCHILY.xattr.user.x": "y"}
        tf.addfile(ti)
    fs = unpack(tmp_path, buf.getvalue())
    assert os.readlink(fs / "s") == "target"


def test_gzip_chunks_that_yield_nothing_are_not_the_end(tmp_path: Path) -> None:
    """Over a MiB of empty gzip members, then the layer: a read that decompresses to
    nothing is not a truncated stream."""
    data = tar(("f", "file", b"payload"))
    blob = tmp_path / "many-members"
    blob.write_bytes(gzip.compress(b"", mtime=0) * 60_000 + gzip.compress(data))
    (tmp_path / "t").mkdir()
    unpack_layer(str(blob), "gzip", str(tmp_path / "t"), layer="L",
                 diff_id="sha256:" + hashlib.sha256(data).hexdigest())
    assert (tmp_path / "t/f").read_bytes() == b"payload"


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
