"""Paths inside a container's rootfs, resolved as if the rootfs were ``/``.

An image is untrusted: its ``/etc/passwd`` may be a symlink to the host's, a mount
destination may go through ``etc -> /``. ``resolve(root, path)`` follows symlinks the
way the kernel would inside a chroot at *root* (an absolute link restarts at *root*,
``..`` never climbs above it), one component at a time with ``lstat``, so the result
always lies under *root* (filepath-securejoin's rule, which runc and containerd use).
"""

from __future__ import annotations

import errno
import os
import stat

__all__ = ["resolve", "read_file", "MAX_SYMLINKS"]

MAX_SYMLINKS = 255


def resolve(root: str, path: str) -> str:
    """The host path of *path* inside *root*; components that do not exist are kept
    as they are (a mount point to create, say). Raises ``OSError(ELOOP)`` after
    ``MAX_SYMLINKS`` links."""
    root = os.path.abspath(root)
    done: list[str] = []          # resolved components below root
    todo = [p for p in path.split("/") if p not in ("", ".")]
    todo.reverse()
    links = 0
    while todo:
        part = todo.pop()
        if part == "..":
            if done:
                done.pop()
            continue
        candidate = os.path.join(root, *done, part)
        try:
            st = os.lstat(candidate)
        except (FileNotFoundError, NotADirectoryError):
            done.append(part)
            continue
        if not stat.S_ISLNK(st.st_mode):
            done.append(part)
            continue
        links += 1
        if links > MAX_SYMLINKS:
            raise OSError(errno.ELOOP, f"too many symlinks resolving {path!r} in {root}")
        target = os.readlink(candidate)
        if target.startswith("/"):
            done = []
        todo.extend(reversed([p for p in target.split("/") if p not in ("", ".")]))
    return os.path.join(root, *done)


def read_file(root: str, path: str, limit: int = 1 << 20) -> bytes | None:
    """The contents of regular file *path* inside *root* (at most *limit* bytes), or
    None when there is no such regular file."""
    host = resolve(root, path)
    try:
        fd = os.open(host, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return os.read(fd, limit)
    finally:
        os.close(fd)
