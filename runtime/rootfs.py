"""A container's rootfs: an overlayfs mount of the image's snapshot dirs (read-only
lower layers, top first) with an upper and a work dir of the container's own.

The mount options carry absolute paths when they fit the kernel's one-page limit;
an image with so many layers that they do not is mounted by ``mount(8)`` run in the
snapshots' directory with relative paths (containerd's trick for the same limit).
An image without layers gets an empty lower dir. Unmounting a rootfs that is not
mounted is fine.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import subprocess

from .errors import RootfsError

__all__ = ["mount_overlay", "unmount", "is_mounted"]

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_MNT_DETACH = 2
_PAGE = 4096


def _index_off() -> str:
    # With index=on an overlay refuses a lower dir another overlay uses with another
    # upper; containerd turns it off where the kernel knows the option.
    return ",index=off" if os.path.exists("/sys/module/overlay/parameters/index") else ""


def mount_overlay(lowers: list[str], upper: str, work: str, target: str) -> None:
    """Mount an overlay of *lowers* (top first) with *upper* and *work* on *target*
    (each made if missing). Raises ``RootfsError``."""
    for d in (upper, work, target):
        try:
            os.makedirs(d, mode=0o755, exist_ok=True)
        except OSError as exc:
            raise RootfsError(f"cannot make {d}", exc.errno) from exc
    if not lowers:
        empty = os.path.join(os.path.dirname(upper), "empty")
        os.makedirs(empty, mode=0o755, exist_ok=True)
        lowers = [empty]
    options = f"lowerdir={':'.join(lowers)},upperdir={upper},workdir={work}{_index_off()}"
    if len(options) < _PAGE - 1:
        if _libc.mount(b"overlay", os.fsencode(target), b"overlay", 0, options.encode()) != 0:
            err = ctypes.get_errno()
            raise RootfsError(f"cannot mount the overlay rootfs on {target} ({len(lowers)} "
                              "layers)", err)
        return
    base = os.path.commonpath(lowers)
    relative = ":".join(os.path.relpath(p, base) for p in lowers)
    options = f"lowerdir={relative},upperdir={upper},workdir={work}{_index_off()}"
    proc = subprocess.run(["mount", "-t", "overlay", "overlay", "-o", options, target], cwd=base,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RootfsError(f"cannot mount the overlay rootfs on {target} ({len(lowers)} layers): "
                          f"{proc.stderr.strip()}")


def unmount(target: str) -> None:
    """Unmount *target* (lazily if it is busy); not mounted is fine."""
    if _libc.umount2(os.fsencode(target), 0) == 0:
        return
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOENT):
        return
    if err == errno.EBUSY and _libc.umount2(os.fsencode(target), _MNT_DETACH) == 0:
        return
    raise RootfsError(f"cannot unmount {target}", ctypes.get_errno() or err)


def is_mounted(target: str) -> bool:
    try:
        return os.path.ismount(target)
    except OSError:
        return False
