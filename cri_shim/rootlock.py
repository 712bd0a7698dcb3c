"""One server per root: an flock on ``<root>/cri-shim.lock``, held for the server's life.

A second ``cri-shim serve`` on the same root must not recover, repair or garbage-collect
the state of a server that is still running (it would tear down sandboxes that server
is creating and delete its in-flight files), so the claim is the first thing ``serve``
does, before it reads the store. The lock is released by the kernel when the process
exits, however it exits; the file keeps the holder's pid for the refusal message. The
descriptor is close-on-exec, so no plugin or helper the server starts inherits the lock.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os

from .errors import HostError

LOCK_NAME = "cri-shim.lock"

log = logging.getLogger(__name__)


class RootInUse(HostError):
    """Another live cri-shim holds the root."""


class RootClaim:
    """The held lock; ``release()`` (or process exit) gives it up."""

    def __init__(self, path: str, fd: int) -> None:
        self.path, self._fd = path, fd

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def private_dir(path: str) -> None:
    """Make *path* (and its parents) if missing, and leave it 0700: a directory that
    was there before with group or other bits (made by hand, say) is tightened, as the
    records, keys and sockets below it are the runtime's alone. Raises OSError."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    mode = os.stat(path).st_mode & 0o777
    if mode & 0o077:
        log.warning("%s was mode %o: made 0700 (only root may read the runtime's state)", path, mode)
        os.chmod(path, 0o700)


def claim(root: str) -> RootClaim:
    """Take ``<root>/cri-shim.lock`` or raise ``RootInUse`` naming the holder's pid."""
    path = os.path.join(root, LOCK_NAME)
    try:
        private_dir(root)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise HostError(f"cannot open {path}", exc.errno) from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = _read_pid(fd)
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            who = f"pid {holder}" if holder else "another process"
            raise RootInUse(f"root {root} is in use by another cri-shim ({who}); refusing to "
                            "start (one server per root)") from None
        raise HostError(f"cannot lock {path}", exc.errno) from exc
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return RootClaim(path, fd)


def _read_pid(fd: int) -> int:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return 0
    return int(text) if text.isdigit() else 0
