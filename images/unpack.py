"""Unpacking one layer (a tar, gzip'ed or zstd'ed) into a snapshot directory.

Each layer is unpacked into a directory of its own, as an overlayfs lower layer, so the
layers of an image can be unpacked at the same time and shared by every image that has
them: the image's whiteouts become overlayfs whiteouts (``.wh.NAME`` a 0:0 character
device ``NAME``, ``.wh..wh..opq`` the ``trusted.overlay.opaque=y`` xattr on its
directory). Owners, modes (setuid and setgid too), xattrs, times, hard links, symlinks,
FIFOs and device nodes are kept.

Nothing lands outside the directory, and nothing outside is read or changed: an
absolute name, a ``..`` component, an entry whose parent is a symlink, a hard link whose
target is outside or reached through a symlink, a whiteout naming ``.``/``..``, or any
other entry type is refused with ``UnsafeLayer`` naming the layer and the entry; the
caller removes the half-made directory. A directory's owner, mode and times are set
once its contents are in, through descriptors opened without following symlinks, and
only if the same entry still names it. A hard link to a lower layer's file is a copy
(owner, mode, xattrs and times kept; a device node is made anew, never read).
Overlayfs's own ``trusted.overlay.*`` xattrs in a layer are ignored. The uncompressed stream is hashed on the way: its digest must be
the config's ``diff_id`` for the layer.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import shutil
import stat
import tarfile
import zlib
from collections.abc import Callable, Iterable, Iterator

import zstandard

from .errors import DigestMismatch, ImageError, InvalidContent, StorageError, UnsafeLayer

__all__ = ["unpack_layer", "resolve", "WHITEOUT_PREFIX", "OPAQUE"]

log = logging.getLogger(__name__)

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
            self._zstd = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
        elif compression:
            raise InvalidContent(f"unknown layer compression {compression!r}")

    def _more(self) -> bytes:
        """The next decompressed bytes; b"" only at the end of the stream."""
        if self._compression == "zstd":
            return self._zstd.read(_CHUNK)
        while True:
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
            if out:   # a chunk may end at a member's header and yield nothing yet
                return out

    def read(self, n: int = -1) -> bytes:
        while not self._eof and (n < 0 or len(self._buffer) < n):
            try:
                chunk = self._more()
            except zlib.error as exc:
                raise InvalidContent(f"corrupt gzip stream: {exc}") from None
            except zstandard.ZstdError as exc:
                raise InvalidContent(f"corrupt zstd stream: {exc}") from None
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


def _is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def resolve(layers: Iterable[str], rel: str) -> str | None:
    """The path of *rel* as overlayfs would show the *layers* (directories, top first)
    stacked, or None when it is absent or hidden: by a whiteout, an opaque directory or
    a non-directory above it. Each component is looked at with ``lstat`` in its own
    layer, so a symlink on the way is never followed (None: a hard link's target is
    the path it was archived at, never one through a symlink)."""
    parts = rel.split("/")
    for top in layers:
        path, opaque = top, False
        for depth, part in enumerate(parts):
            path = os.path.join(path, part)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                break
            if _is_whiteout(st):
                return None
            if depth == len(parts) - 1:
                return path
            if not stat.S_ISDIR(st.st_mode):
                return None   # a file or a symlink where a directory would be
            try:
                opaque = opaque or os.getxattr(path, "trusted.overlay.opaque",
                                               follow_symlinks=False) == b"y"
            except OSError:
                pass
        if opaque:
            return None
    return None


def _wanted_xattr(key: str, is_symlink: bool) -> bool:
    """Whether a layer's xattr is written: never overlayfs's own (an image must not
    plant redirects or metacopy on a lower dir; opaque dirs come from ``.wh..wh..opq``),
    and no ``user.*`` on a symlink (the kernel refuses them)."""
    if key.startswith("trusted.overlay."):
        log.warning("ignored xattr %s in a layer", key)
        return False
    return not (is_symlink and key.startswith("user."))


def _set_xattr(target: str | int, key: str, value: bytes) -> None:
    try:
        if isinstance(target, int):
            os.setxattr(target, key, value)
        else:
            os.setxattr(target, key, value, follow_symlinks=False)
    except OSError as exc:
        if exc.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
        log.warning("ignored xattr %s: the snapshot filesystem does not support it", key)


class _Unpacker:
    def __init__(self, target: str, layer: str, lowers: Callable[[], Iterable[str]]) -> None:
        self.target = target
        self.layer = layer
        self.lowers = lowers
        self.dirs: dict[str, tarfile.TarInfo] = {}   # rel -> the entry, set at the end

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

    def _replace(self, rel: str, path: str, keep_dir: bool = False) -> None:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            if keep_dir:
                return
            shutil.rmtree(path)
            # What was recorded for the removed tree must not be applied to whatever
            # takes its place (a symlink to the host, say).
            for key in [k for k in self.dirs if k == rel or k.startswith(rel + "/")]:
                del self.dirs[key]
        else:
            os.unlink(path)

    def entry(self, tf: tarfile.TarFile, ti: tarfile.TarInfo) -> None:
        rel = _clean(ti.name, self.layer)
        if not rel:
            if ti.isdir():
                self.dirs[""] = ti
            return
        base = rel.rsplit("/", 1)[-1]
        path = self._parents(rel, ti.name)
        if base == OPAQUE:
            _set_xattr(os.path.dirname(path), "trusted.overlay.opaque", b"y")
            return
        if base.startswith(WHITEOUT_PREFIX):
            name = base[len(WHITEOUT_PREFIX):]
            if name in ("", ".", "..") or name.startswith(WHITEOUT_PREFIX):
                raise UnsafeLayer(f"layer {self.layer}: whiteout {ti.name!r} names no file "
                                  "(only .wh.<name> and .wh..wh..opq are whiteouts)")
            parent_rel = rel.rpartition("/")[0]
            hidden_rel = f"{parent_rel}/{name}" if parent_rel else name
            hidden = os.path.join(os.path.dirname(path), name)
            self._replace(hidden_rel, hidden)
            os.mknod(hidden, 0o600 | stat.S_IFCHR, os.makedev(0, 0))
            return
        if ti.isdir():
            self._replace(rel, path, keep_dir=True)
            if not os.path.isdir(path):
                os.mkdir(path, 0o700)
            self.dirs[rel] = ti   # modes and times once its contents are in
            return
        self._replace(rel, path)
        if ti.isreg():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o600)
            with os.fdopen(fd, "wb") as f:
                src = tf.extractfile(ti)
                assert src is not None
                shutil.copyfileobj(src, f, _CHUNK)
                f.flush()
                self._metadata(f.fileno(), ti)
            return
        if ti.issym():
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

        def layers() -> Iterator[str]:
            yield self.target
            yield from self.lowers()   # waits for the layers below only when needed
        found = resolve(layers(), rel)
        if found is None:
            raise UnsafeLayer(f"layer {self.layer}: hard link {ti.name!r} -> "
                              f"{ti.linkname!r}: the target is not in this layer or below")
        if found.startswith(self.target + os.sep):
            os.link(found, path, follow_symlinks=False)
        else:
            self._copy_up(found, ti, path)

    def _copy_up(self, source: str, ti: tarfile.TarInfo, path: str) -> None:
        """A hard link to a lower layer's file: a copy, with the file's owner, mode,
        xattrs and times (as overlayfs's copy-up). Special files are made anew, never
        read; a directory cannot be hard linked."""
        st = os.lstat(source)
        if stat.S_ISREG(st.st_mode):
            src = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                dst = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW |
                              os.O_CLOEXEC, 0o600)
                try:
                    while os.copy_file_range(src, dst, _CHUNK):
                        pass
                    os.fchown(dst, st.st_uid, st.st_gid)
                    os.fchmod(dst, stat.S_IMODE(st.st_mode))   # after chown (setuid)
                    for key in os.listxattr(src):
                        if _wanted_xattr(key, False):
                            _set_xattr(dst, key, os.getxattr(src, key))
                    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
                finally:
                    os.close(dst)
            finally:
                os.close(src)
        elif stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(source), path)
            os.chown(path, st.st_uid, st.st_gid, follow_symlinks=False)
        elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) or stat.S_ISFIFO(st.st_mode):
            os.mknod(path, 0o600 | stat.S_IFMT(st.st_mode), st.st_rdev)
            os.chown(path, st.st_uid, st.st_gid)
            os.chmod(path, stat.S_IMODE(st.st_mode))
        else:
            raise UnsafeLayer(f"layer {self.layer}: hard link {ti.name!r} -> {ti.linkname!r}: "
                              "the target is a directory or a socket")

    def _metadata(self, target: str | int, ti: tarfile.TarInfo) -> None:
        """Owner, mode, xattrs and times of *target* (a path whose parents are checked,
        or an open fd)."""
        nofollow = {} if isinstance(target, int) else {"follow_symlinks": False}
        os.chown(target, ti.uid, ti.gid, **nofollow)
        if not ti.issym():
            os.chmod(target, ti.mode & 0o7777)   # after chown, which clears setuid
        for key, value in ti.pax_headers.items():
            if key.startswith("SCHILY.xattr.") and _wanted_xattr(key[13:], ti.issym()):
                _set_xattr(target, key[13:], value.encode("utf-8", "surrogateescape"))
        os.utime(target, ns=(int(ti.mtime * 1e9),) * 2, **nofollow)

    def finish(self) -> None:
        """The directories' metadata, through descriptors opened one component at a
        time with ``O_NOFOLLOW``: a directory that is no longer one is skipped."""
        for rel, ti in reversed(self.dirs.items()):
            fd = self._open_dir(rel)
            if fd is None:
                continue
            try:
                self._metadata(fd, ti)
            finally:
                os.close(fd)

    def _open_dir(self, rel: str) -> int | None:
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(self.target, flags)
        for part in rel.split("/") if rel else ():
            try:
                child = os.open(part, flags, dir_fd=fd)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                    return None
                raise
            os.close(fd)
            fd = child
        return fd


def unpack_layer(blob: str, compression: str, target: str, *, layer: str, diff_id: str,
                 lowers: Callable[[], Iterable[str]] = tuple) -> None:
    """Unpack the layer in file *blob* into the empty directory *target*, checking its
    uncompressed digest against *diff_id*. *lowers* gives the layers below, top first
    (asked only for a hard link to one of their files). Raises ``UnsafeLayer``,
    ``InvalidContent``, ``DigestMismatch`` or ``StorageError`` naming the entry;
    *target* is left half-made then."""
    with open(blob, "rb") as raw:
        reader = _Reader(raw, compression)
        unpacker = _Unpacker(target, layer, lowers)
        try:
            with tarfile.open(fileobj=reader, mode="r|", bufsize=_CHUNK,   # type: ignore[call-overload]
                              errorlevel=2) as tf:
                for ti in tf:
                    try:
                        unpacker.entry(tf, ti)
                    except OSError as exc:
                        raise _entry_error(layer, ti.name, exc) from exc
            unpacker.finish()
        except tarfile.TarError as exc:
            raise InvalidContent(f"layer {layer}: not a valid tar stream: {exc}") from None
        except EOFError:
            raise InvalidContent(f"layer {layer}: truncated") from None
        except OSError as exc:
            raise _entry_error(layer, "(a directory's metadata)", exc) from exc
        reader.drain()
    got = "sha256:" + reader.hash.hexdigest()
    if got != diff_id:
        raise DigestMismatch(f"layer {layer}: uncompressed digest {got}, the image config "
                             f"says {diff_id}")


def _entry_error(layer: str, name: str, exc: OSError) -> ImageError:
    if exc.errno in (errno.ENAMETOOLONG, errno.EINVAL):
        return UnsafeLayer(f"layer {layer}: entry {name!r} cannot be made here: "
                           f"{os.strerror(exc.errno)}")
    return StorageError(f"layer {layer}: entry {name!r}", exc.errno)
