"""Pinning pod namespaces: the network one the way containerd does, IPC and UTS the
way CRI-O's ``pinns`` does.

A pod's netns is a fresh network namespace bind-mounted on
``<netns_dir>/cni-<uuid>`` (``/var/run/netns`` by default, so ``ip netns`` sees it).
The namespace is created by a helper process (``cri_shim.pinner``: unshare, bind
mount, setns back), so no thread of the server ever changes namespace; if the helper
cannot run, util-linux ``unshare --net=FILE`` does the same in a child. Removal is a
lazy unmount and an unlink, and removing what is already gone is not an error.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import shutil
import socket
import subprocess
import uuid

from .errors import NetnsError
from .pinner import Pinner

log = logging.getLogger(__name__)

_MNT_DETACH = 2
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def new_path(netns_dir: str) -> str:
    """The path a new pod netns will be pinned at (nothing is created yet)."""
    return os.path.join(netns_dir, f"cni-{uuid.uuid4()}")


def pin(path: str, *, loopback_up: bool = False) -> None:
    """Create a new network namespace and bind-mount it on *path*.

    With *loopback_up* the namespace's ``lo`` is brought up at once (containerd's
    ``use_internal_loopback``), saving the loopback plugin exec. Raises
    ``NetnsError`` naming *path*; nothing is left at *path* then.
    """
    what = f"cannot create network namespace at {path}"
    try:
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    except OSError as exc:
        raise NetnsError(f"{what}: cannot make {os.path.dirname(path)}", path, exc.errno) from exc
    try:
        _PINNER.pin(path, loopback_up)
        return
    except OSError as exc:
        if exc.errno == errno.EEXIST or os.path.lexists(path):
            raise NetnsError(what, path, exc.errno, detail=exc.strerror or str(exc)) from exc
        log.warning("netns pinner helper failed (%s); falling back to unshare(1)", exc)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0o444)
    except OSError as exc:
        raise NetnsError(what, path, exc.errno) from exc
    os.close(fd)
    cmd = [_UNSHARE, f"--net={path}"]
    cmd += [_IP, "link", "set", "dev", "lo", "up"] if loopback_up else ["true"]
    proc = subprocess.run(cmd, capture_output=True, text=True, close_fds=True)
    if proc.returncode != 0:
        # The bind mount may or may not have happened; undo both halves.
        unpin(path)
        raise NetnsError(what, path, detail=proc.stderr.strip() or "unshare failed")


def pin_namespace(kind: str, path: str, *, hostname: str = "") -> None:
    """Create a new IPC or UTS namespace (*kind* ``ipc`` or ``uts``; a UTS one gets
    *hostname*) and pin it at *path*, as CRI-O's ``pinns`` does: no process is kept in
    it. Raises ``NetnsError`` naming *path*; nothing is left at *path* then."""
    what = f"cannot create {kind.upper()} namespace at {path}"
    try:
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    except OSError as exc:
        raise NetnsError(f"{what}: cannot make {os.path.dirname(path)}", path, exc.errno) from exc
    try:
        _PINNER.pin_namespace(kind, path, hostname or "-")
        return
    except OSError as exc:
        if exc.errno == errno.EEXIST or os.path.lexists(path) or exc.errno == errno.EINVAL:
            raise NetnsError(what, path, exc.errno, detail=exc.strerror or str(exc)) from exc
        log.warning("namespace pinner helper failed (%s); falling back to unshare(1)", exc)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0o444)
    except OSError as exc:
        raise NetnsError(what, path, exc.errno) from exc
    os.close(fd)
    cmd = [_UNSHARE, f"--{kind}={path}"] + (["hostname", hostname] if hostname else ["true"])
    proc = subprocess.run(cmd, capture_output=True, text=True, close_fds=True)
    if proc.returncode != 0:
        unpin(path)
        raise NetnsError(what, path, detail=proc.stderr.strip() or "unshare failed")


def set_sysctl(kind: str, path: str, proc_path: str, value: str, *, name: str = "") -> None:
    """Write the sysctl at /proc/sys/*proc_path* in the *kind* namespace pinned at
    *path*. Raises ``NetnsError`` naming the sysctl (*name*, as the pod spelt it)."""
    try:
        _PINNER.sysctl(kind, path, proc_path, value)
    except OSError as exc:
        raise NetnsError(f'cannot set sysctl "{name or proc_path}" to "{value}"', path, exc.errno,
                         detail=exc.strerror or str(exc)) from exc


def connect(path: str, port: int, *, timeout: float = 10.0) -> socket.socket:
    """A TCP connection to ``localhost:port`` inside the netns pinned at *path*
    (127.0.0.1, then ::1, as Go's dialer tries "localhost"), made from a socket the
    pinner created there. Raises OSError (the last attempt's)."""
    last: OSError = OSError(errno.ECONNREFUSED, "connection refused")
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        try:
            sock = _PINNER.tcp_socket(path, family)
        except OSError as exc:
            if exc.errno == errno.EAFNOSUPPORT:   # no IPv6 here: the IPv4 error stands
                continue
            raise
        sock.settimeout(timeout)
        try:
            sock.connect((host, port))
        except OSError as exc:
            sock.close()
            last = exc
            continue
        sock.settimeout(None)
        return sock
    raise last


def start_helper() -> None:
    """Start the pinner helper now, so the first RunPodSandbox does not wait for it."""
    try:
        _PINNER.start()
    except OSError as exc:
        log.warning("netns pinner helper did not start (%s); pins will use unshare(1)", exc)


def unpin(path: str) -> None:
    """Unmount and remove a pinned namespace; a missing one is fine (idempotent).
    Raises ``NetnsError`` naming *path*."""
    if _libc.umount2(os.fsencode(path), _MNT_DETACH) != 0:
        err = ctypes.get_errno()
        # EINVAL: not a mount point (never pinned, or already unmounted).
        if err not in (errno.EINVAL, errno.ENOENT):
            raise NetnsError(f"cannot unmount netns {path}", path, err)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise NetnsError(f"cannot remove netns file {path}", path, exc.errno) from exc
    log.debug("unpinned netns %s", path)


def is_pinned(path: str) -> bool:
    """True when *path* is a bind-mounted network namespace (a mount point)."""
    try:
        return os.path.ismount(path)
    except OSError:
        return False


def _which(name: str) -> str:
    found = shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin:/usr/bin:/bin")
    return found or name


_UNSHARE = _which("unshare")
_PINNER = Pinner()
_IP = _which("ip")
