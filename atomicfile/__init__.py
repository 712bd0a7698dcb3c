"""Atomic file writes: readers see the old file or the new one, never a torn one.

One implementation for every writer in the project (libcni's result cache, the sandbox
store, the rendered conf template, subnet.env and the flannel conflist, the flannel
plugin's saved delegate, the file lease store). Standard library only, and no
``tempfile``: the flannel plugin imports this at every exec.
"""

from __future__ import annotations

import errno
import os

__all__ = ["write_atomic"]


def write_atomic(path: str, data: bytes, *, mode: int = 0o644, durable: bool = False,
                 keep_mode: bool = False) -> None:
    """Write *data* to a temp file beside *path*, then ``os.replace`` it into place.

    *mode* is set with ``fchmod`` (not subject to the umask); with *keep_mode* an
    existing file keeps its mode. *durable* fsyncs the file and the directory, for
    files that must survive the machine (flannel's); the runtime's own state only has
    to survive the process, and an fsync costs up to several ms on a busy disk.
    """
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, mode=0o755, exist_ok=True)
    if keep_mode:
        try:
            mode = os.stat(path).st_mode & 0o7777
        except FileNotFoundError:
            pass
    fd, tmp = _create_temp(directory, "." + os.path.basename(path) + ".")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            os.fchmod(f.fileno(), mode)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    if durable:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _create_temp(directory: str, prefix: str) -> tuple[int, str]:
    """``tempfile.mkstemp`` without importing tempfile: an ``O_EXCL`` file, 0600,
    under a random name; retried on a name clash."""
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for _ in range(100):
        path = os.path.join(directory, prefix + os.urandom(6).hex() + ".tmp")
        try:
            return os.open(path, flags, 0o600), path
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "No usable temporary file name found")
