"""The namespace pinner: a small single-threaded helper process that creates pod
namespaces (network, IPC, UTS) and pins them on files, as containerd pins a netns and
CRI-O's ``pinns`` pins IPC and UTS, with no process kept in them.

For each request it ``unshare``s one namespace, prepares it (``lo`` up in a netns, the
pod's hostname in a UTS namespace), bind-mounts ``/proc/self/ns/<kind>`` on the
requested path and ``setns``-es back to where it started, in a process of its own, so
no thread of the server ever changes namespace. One pin costs a pipe round trip and a
few syscalls instead of a fork and exec of ``unshare``.

Protocol on stdin/stdout, one line each way: ``PIN <kind> <arg> <path>`` (kind ``net``
with arg ``lo`` or ``-``; ``uts`` with the hostname or ``-``; ``ipc`` with ``-``), or
``SYSCTL <kind> <path> <key> <hex value>`` (write ``/proc/sys/<key>`` inside the pinned
namespace at *path*), or ``SOCKET net <path> <4|6>`` (a TCP socket made inside the netns
at *path*, sent back over the unix socket at fd ``CRI_SHIM_PINNER_FD``; a socket keeps
its namespace, so the server connects it from any thread) -> ``OK`` or ``ERR <errno>
<message>``. EOF on stdin ends it. If it cannot get back into
its own namespace it exits at once (status 3), and the server starts a new one.

This module is also the client side: ``Pinner`` starts, talks to and restarts it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import os
import re
import select
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

CLONE_NEWNET = 0x40000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUTS = 0x04000000
KINDS = {"net": CLONE_NEWNET, "ipc": CLONE_NEWIPC, "uts": CLONE_NEWUTS}
MS_BIND = 4096
MNT_DETACH = 2
REQUEST_TIMEOUT = 10.0   # seconds; a request takes ~0.1 ms, a wedged helper is killed
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _lo_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifreq = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, ifreq))[1]
        fcntl.ioctl(s.fileno(), SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | IFF_UP))


def serve() -> int:
    """The helper's loop (``python -m cri_shim.pinner``)."""
    libc = _libc()
    homes = {}
    for kind in KINDS:
        fd = os.open(f"/proc/self/ns/{kind}", os.O_RDONLY | os.O_CLOEXEC)
        homes[kind] = (fd, os.fstat(fd).st_ino)
    out = sys.stdout
    channel = os.environ.get("CRI_SHIM_PINNER_FD", "")
    fd_channel = socket.socket(fileno=int(channel)) if channel.isdigit() else None
    for line in sys.stdin:
        try:
            cmd, kind, rest = line.rstrip("\n").split(" ", 2)
            if kind not in KINDS:
                raise OSError(errno.EINVAL, f"unknown namespace kind {kind}")
            if cmd == "PIN":
                arg, path = rest.split(" ", 1)
                _pin(libc, kind, arg, path, homes[kind])
            elif cmd == "SYSCTL":
                path, key, value = rest.split(" ", 2)
                _sysctl(libc, kind, path, key, bytes.fromhex(value), homes[kind])
            elif cmd == "SOCKET" and kind == "net" and fd_channel is not None:
                path, family = rest.split(" ", 1)
                _socket(libc, path, family, homes[kind], fd_channel)
            else:
                raise OSError(errno.EINVAL, f"unknown request {cmd}")
            out.write("OK\n")
        except OSError as exc:
            out.write(f"ERR {exc.errno or errno.EIO} {exc.strerror or exc}\n".replace("\n", " ").rstrip() + "\n")
        except ValueError:
            out.write(f"ERR {errno.EINVAL} malformed request\n")
        out.flush()
    return 0


def _pin(libc: ctypes.CDLL, kind: str, arg: str, path: str, home: tuple[int, int]) -> None:
    flag = KINDS[kind]
    fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444)
    os.close(fd)
    try:
        _check(libc.unshare(flag), "unshare")
        try:
            if kind == "net" and arg == "lo":
                _lo_up()
            elif kind == "uts" and arg != "-":
                name = arg.encode()
                _check(libc.sethostname(name, len(name)), f"sethostname {arg!r}")
            _check(libc.mount(f"/proc/self/ns/{kind}".encode(), os.fsencode(path), None,
                              MS_BIND, None), f"bind mount on {path}")
        finally:
            if libc.setns(home[0], flag) != 0 or os.stat(f"/proc/self/ns/{kind}").st_ino != home[1]:
                os._exit(3)   # stranded in the pod's namespace: die, the server restarts us
    except OSError:
        libc.umount2(os.fsencode(path), MNT_DETACH)
        os.unlink(path)
        raise


def _sysctl(libc: ctypes.CDLL, kind: str, path: str, key: str, value: bytes,
            home: tuple[int, int]) -> None:
    if not _SYSCTL_KEY.fullmatch(key) or ".." in key:
        raise OSError(errno.EINVAL, f"sysctl {key!r} is not a sysctl name")
    ns = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        _check(libc.setns(ns, KINDS[kind]), f"setns {path}")
    finally:
        os.close(ns)
    try:
        fd = os.open(f"/proc/sys/{key}", os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, value)
        finally:
            os.close(fd)
    finally:
        if libc.setns(home[0], KINDS[kind]) != 0 or os.stat(f"/proc/self/ns/{kind}").st_ino != home[1]:
            os._exit(3)


_SYSCTL_KEY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_./-]*")
_FAMILIES = {"4": socket.AF_INET, "6": socket.AF_INET6}


def _socket(libc: ctypes.CDLL, path: str, family: str, home: tuple[int, int],
            channel: socket.socket) -> None:
    if family not in _FAMILIES:
        raise OSError(errno.EINVAL, f"unknown address family {family!r}")
    ns = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        _check(libc.setns(ns, CLONE_NEWNET), f"setns {path}")
    finally:
        os.close(ns)
    try:
        made = socket.socket(_FAMILIES[family], socket.SOCK_STREAM)
    finally:
        if libc.setns(home[0], CLONE_NEWNET) != 0 or os.stat("/proc/self/ns/net").st_ino != home[1]:
            os._exit(3)
    with made:
        channel.sendmsg([b"s"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", made.fileno()))])


class Pinner:
    """Client of the helper; thread-safe (requests are serialised: each takes ~0.1 ms).
    A helper that does not answer within ``REQUEST_TIMEOUT`` is killed, what it may
    have half done is undone and the request fails with ETIMEDOUT, so one wedged
    request cannot hold every pin and every port-forward connect behind the lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[str] | None = None
        self._channel: socket.socket | None = None   # where the helper sends sockets

    def _start(self) -> subprocess.Popen[str]:
        if self._channel is not None:
            self._channel.close()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        env = dict(os.environ, CRI_SHIM_PINNER_FD=str(theirs.fileno()), PYTHONPATH=os.pathsep.join(
            [os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
             os.environ.get("PYTHONPATH", "")]))
        try:
            return subprocess.Popen([sys.executable, "-S", "-m", "cri_shim.pinner"], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, text=True, bufsize=1, env=env, close_fds=True,
                                    pass_fds=(theirs.fileno(),))
        finally:
            theirs.close()
            ours.settimeout(REQUEST_TIMEOUT)
            self._channel = ours

    def start(self) -> None:
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                self._proc = self._start()

    def pin(self, path: str, loopback_up: bool) -> None:
        """Pin a new netns at *path* (which must not exist). Raises OSError."""
        self.pin_namespace("net", path, "lo" if loopback_up else "-")

    def pin_namespace(self, kind: str, path: str, arg: str = "-") -> None:
        """Pin a new namespace of *kind* (net, ipc, uts) at *path*, which must not
        exist; *arg* is ``lo`` (net: bring lo up) or the hostname (uts). Raises
        OSError."""
        if "\n" in path or " " in arg or "\n" in arg or not arg:
            raise OSError(errno.EINVAL, f"cannot pin {kind} namespace at {path!r} ({arg!r})")

        def undo() -> None:
            _libc().umount2(os.fsencode(path), MNT_DETACH)
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        self._request(f"PIN {kind} {arg} {path}", undo)

    def _request(self, line: str, undo: Callable[[], None],
                 then: Callable[[socket.socket], Any] | None = None) -> Any:
        """Send one request and raise its error; a helper that dies mid-request is
        replaced and the request sent again once, after *undo*. After an ``OK``,
        *then* (still under the lock) takes what the helper sent on the channel."""
        with self._lock:
            for attempt in (1, 2):
                if self._proc is None or self._proc.poll() is not None:
                    self._proc = self._start()
                assert self._proc.stdin is not None and self._proc.stdout is not None
                answered = True
                try:
                    self._proc.stdin.write(line + "\n")
                    self._proc.stdin.flush()
                    # One reply line per request, so nothing is ever left in the
                    # reader's buffer: the pipe itself tells whether it came.
                    answered = bool(select.select([self._proc.stdout], [], [], REQUEST_TIMEOUT)[0])
                    reply = self._proc.stdout.readline() if answered else ""
                except (BrokenPipeError, OSError, ValueError):
                    reply = ""
                if not answered:   # wedged: not asked again, it may wedge again
                    self._replace(undo)
                    raise OSError(errno.ETIMEDOUT, "the namespace pinner helper did not answer "
                                  f"{line.split(' ', 1)[0]} in {REQUEST_TIMEOUT:g} s")
                if reply:
                    break
                self._replace(undo)   # died mid-request: once more with a fresh helper
            else:
                raise OSError(errno.EIO, "the namespace pinner helper keeps dying")
            if reply.startswith("OK"):
                assert self._channel is not None
                return then(self._channel) if then is not None else None
        _, code, message = (reply.rstrip("\n").split(" ", 2) + ["", ""])[:3]
        raise OSError(int(code) if code.isdigit() else errno.EIO, message)

    def _replace(self, undo: Callable[[], None]) -> None:
        """Kill the helper (the next request starts a fresh one) and undo whatever
        half of its last request was done. Called under the lock."""
        assert self._proc is not None
        proc, self._proc = self._proc, None
        proc.kill()
        try:
            proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            # Stuck in the kernel (what wedged it, likely): reaped whenever it goes,
            # not under the lock every pin waits for.
            threading.Thread(target=proc.wait, daemon=True, name="pinner-reaper").start()
        undo()

    def sysctl(self, kind: str, path: str, key: str, value: str) -> None:
        """Write sysctl *key* (``/``-separated, as under /proc/sys) in the namespace
        pinned at *path*. Raises OSError."""
        if " " in path or "\n" in path or " " in key:
            raise OSError(errno.EINVAL, f"cannot set sysctl {key!r} in {path!r}")
        self._request(f"SYSCTL {kind} {path} {key} {value.encode().hex()}", lambda: None)

    def tcp_socket(self, path: str, family: int = socket.AF_INET) -> socket.socket:
        """A TCP socket made inside the netns pinned at *path* (not connected).
        Raises OSError."""
        if " " in path or "\n" in path:
            raise OSError(errno.EINVAL, f"cannot make a socket in {path!r}")
        kind = "6" if family == socket.AF_INET6 else "4"

        def take(channel: socket.socket) -> socket.socket:
            _, ancdata, _, _ = channel.recvmsg(1, socket.CMSG_SPACE(4), socket.MSG_CMSG_CLOEXEC)
            for level, typ, data in ancdata:
                if level == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS and len(data) >= 4:
                    return socket.socket(fileno=struct.unpack("i", data[:4])[0])
            raise OSError(errno.EIO, "the namespace pinner helper sent no socket")
        return self._request(f"SOCKET net {path} {kind}", lambda: None, take)

    def close(self) -> None:
        with self._lock:
            if self._proc is not None:
                if self._proc.stdin:
                    self._proc.stdin.close()
                try:
                    self._proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait()
                self._proc = None


if __name__ == "__main__":
    raise SystemExit(serve())
