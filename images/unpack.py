"""Unpacking one layer (a tar, gzip'ed or zstd'ed) into a snapshot directory.

Each layer is unpacked into a directory of its own, as an overlayfs lower layer, so the
layers of an image can be unpacked at the same time and shared by every image that has
them: the image's whiteouts become overlayfs whiteouts (``.wh.NAME`` a 0:0 character
device ``NAME``, ``.wh..wh..opq`` the ``trusted.overlay.opaque=y`` xattr on its
directory). Owners, modes (setuid and setgid too), xattrs, times, hard links, symlinks,
FIFOs and device nodes are kept.

Nothing lands outside the directory: an absolute name, a ``..`` component, an entry
whose parent is a symlink, a hard link whose target is outside, or any other entry type
is refused with ``UnsafeLayer`` naming the layer and the entry; the caller removes the
half-made directory. The uncompressed stream is hashed on the way: its digest must be
the config's ``diff_id`` for the layer.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tarfile
import zlib
from collections.abc import Callable

from .errors import DigestMismatch, InvalidContent, UnsafeLayer

__all__ = ["unpack_layer", "WHITEOUT_PREFIX", "OPAQUE"]

WHITEOUT_PREFIX = ".wh."
OPAQUE = ".wh..wh..opq"
_CHUNK = 1 << 20


class _Reader:
    """A file-like ``read(n)`` over the (decompressed) layer, hashing what it yields."""

    def __init__(self, raw, compression: str) -> None:
        self._raw = raw
        self._compression = compression
        self._buffer = b""
        self._eof = False
        self.hash = hashlib.sha256()
        if compression == "gzip":
            self._gz = zlib.decompressobj(wbits=31)
        elif compression == "zstd":
            import zstandard
            self._zstd = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
        elif compression:
            raise InvalidContent(f"unknown layer compression {compression!r}")

    def _more(self) -> bytes:
        if self._compression == "zstd":
            return self._zstd.read(_CHUNK)
        data = self._raw.read(_CHUNK)
        if self._compression != "gzip":
            return data
        if not data:
            if not self._gz.eof:
                raise InvalidContent("truncated gzip stream")
            return b""
        out = self._gz.decompress(data)
        while self._gz.eof and self._gz.unused_data:   # a multi-member gzip stream
            rest = self._gz.unused_data
            self._gz = zlib.decompressobj(wbits=31)
            out += self._gz.decompress(rest)
        return out

    def read(self, n: int = -1) -> bytes:
        while not self._eof and (n < 0 or len(self._buffer) < n):
            try:
                chunk = self._more()
            except zlib.error as exc:
                raise InvalidContent(f"corrupt gzip stream: {exc}") from None
            except Exception as exc:   # zstandard.ZstdError
                if type(exc).__name__ == "ZstdError":
                    raise InvalidContent(f"corrupt zstd stream: {exc}") from None
                raise
            if not chunk:
                if self._compression == "gzip" and not self._gz.eof:
                    raise InvalidContent("truncated gzip stream")
                self._eof = True
                break
            self.hash.update(chunk)
            self._buffer += chunk
        if n < 0:
            out, self._buffer = self._buffer, b""
        else:
            out, self._buffer = self._buffer[:n], self._buffer[n:]
        return out

    def drain(self) -> None:
        while self.read(_CHUNK):
            pass


def _clean(name: str, layer: str, what: str = "entry") -> str:
    if name.startswith("/"):
        raise UnsafeLayer(f"layer {layer}: {what} {name!r} is an absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeLayer(f"layer {layer}: {what} {name!r} has a '..' component")
    return "/".join(parts)


class _Unpacker:
    def __init__(self, target: str, layer: str, lower: Callable[[str], str | None]) -> None:
        self.target = target
        self.layer = layer
        self.lower = lower
        self.dirs: list[tuple[str, tarfile.TarInfo]] = []

    def _parents(self, rel: str, entry: str) -> str:
        """The absolute path of *rel*, its parents checked (no symlink) and made."""
        path = self.target
        parts = rel.split("/")
        for part in parts[:-1]:
            path = os.path.join(path, part)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                os.mkdir(path, 0o755)
                continue
            if stat.S_ISLNK(st.st_mode):
                raise UnsafeLayer(f"layer {self.layer}: entry {entry!r} goes through the "
                                  f"symlink {part!r}")
            if not stat.S_ISDIR(st.st_mode):
                raise UnsafeLayer(f"layer {self.layer}: entry {entry!r}: {part!r} is not a "
                                  "directory")
        return os.path.join(path, parts[-1])

    def _replace(self, path: str, keep_dir: bool = False) -> None:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            if keep_dir:
                return
            shutil.rmtree(path)
        else:
            os.unlink(path)

    def entry(self, tf: tarfile.TarFile, ti: tarfile.TarInfo) -> None:
        rel = _clean(ti.name, self.layer)
        if not rel:
            if ti.isdir():
                self.dirs.append((self.target, ti))
            return
        base = rel.rsplit("/", 1)[-1]
        path = self._parents(rel, ti.name)
        if base == OPAQUE:
            os.setxattr(os.path.dirname(path), "trusted.overlay.opaque", b"y")
            return
        if base.startswith(WHITEOUT_PREFIX):
            hidden = os.path.join(os.path.dirname(path), base[len(WHITEOUT_PREFIX):])
            self._replace(hidden)
            os.mknod(hidden, 0o600 | stat.S_IFCHR, os.makedev(0, 0))
            return
        if ti.isdir():
            self._replace(path, keep_dir=True)
            if not os.path.isdir(path):
                os.mkdir(path, 0o700)
            self.dirs.append((path, ti))   # modes and times once its contents are in
            return
        self._replace(path)
        if ti.isreg():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o600)
            with os.fdopen(fd, "wb") as f:
                src = tf.extractfile(ti)
                assert src is not None
                shutil.copyfileobj(src, f, _CHUNK)
        elif ti.issym():
            os.symlink(ti.linkname, path)
        elif ti.islnk():
            self._link(ti, path)
            return   # a hard link shares its target's metadata
        elif ti.ischr() or ti.isblk() or ti.isfifo():
            kind = stat.S_IFCHR if ti.ischr() else stat.S_IFBLK if ti.isblk() else stat.S_IFIFO
            os.mknod(path, 0o600 | kind, os.makedev(ti.devmajor, ti.devminor))
        else:
            raise UnsafeLayer(f"layer {self.layer}: entry {ti.name!r} has tar type "
                              f"{ti.type!r}, which cannot be unpacked")
        self._metadata(path, ti)

    def _link(self, ti: tarfile.TarInfo, path: str) -> None:
        rel = _clean(ti.linkname, self.layer, "hard link target")
        if not rel:
            raise UnsafeLayer(f"layer {self.layer}: hard link {ti.name!r} points at the root")
        target = os.path.join(self.target, rel)
        parent = os.path.dirname(target)
        inside = os.path.join(os.path.realpath(self.target), os.path.dirname(rel)).rstrip("/")
        if os.path.realpath(parent) != inside or not os.path.lexists(target):
            lower = self.lower(rel)
            if lower is None:
                raise UnsafeLayer(f"layer {self.layer}: hard link {ti.name!r} -> "
                                  f"{ti.linkname!r}: the target is not in this layer or below")
            shutil.copy2(lower, path, follow_symlinks=False)   # across layers: a copy
            return
        os.link(target, path, follow_symlinks=False)

    def _metadata(self, path: str, ti: tarfile.TarInfo) -> None:
        os.chown(path, ti.uid, ti.gid, follow_symlinks=False)
        if not ti.issym():
            os.chmod(path, ti.mode & 0o7777)   # after chown, which clears setuid
        for key, value in ti.pax_headers.items():
            if key.startswith("SCHILY.xattr."):
                os.setxattr(path, key[len("SCHILY.xattr."):],
                            value.encode("utf-8", "surrogateescape"), follow_symlinks=False)
        os.utime(path, ns=(int(ti.mtime * 1e9),) * 2, follow_symlinks=False)

    def finish(self) -> None:
        for path, ti in reversed(self.dirs):   # deepest last-made first
            self._metadata(path, ti)


def unpack_layer(blob: str, compression: str, target: str, *, layer: str, diff_id: str,
                 lower: Callable[[str], str | None] = lambda rel: None) -> None:
    """Unpack the layer in file *blob* into the empty directory *target*, checking its
    uncompressed digest against *diff_id*. *lower* finds a path in the layers below
    (for a hard link to one of their files). Raises ``UnsafeLayer``,
    ``InvalidContent`` or ``DigestMismatch``; *target* is left half-made then."""
    with open(blob, "rb") as raw:
        reader = _Reader(raw, compression)
        unpacker = _Unpacker(target, layer, lower)
        try:
            with tarfile.open(fileobj=reader, mode="r|", bufsize=_CHUNK,   # type: ignore[call-overload]
                              errorlevel=2) as tf:
                for ti in tf:
                    unpacker.entry(tf, ti)
        except tarfile.TarError as exc:
            raise InvalidContent(f"layer {layer}: not a valid tar stream: {exc}") from None
        except EOFError:
            raise InvalidContent(f"layer {layer}: truncated") from None
        reader.drain()
        unpacker.finish()
    got = "sha256:" + reader.hash.hexdigest()
    if got != diff_id:
        raise DigestMismatch(f"layer {layer}: uncompressed digest {got}, the image config "
                             f"says {diff_id}")
