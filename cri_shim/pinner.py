"""The netns pinner: a small single-threaded helper process that creates pod netns.

For each request it ``unshare(CLONE_NEWNET)``s itself, bind-mounts its new namespace on
the requested path, optionally brings ``lo`` up, and ``setns``-es back to the node's
namespace: the way containerd pins a netns on a locked OS thread, but in a process of
its own, so no thread of the server ever changes namespace. One pin costs a pipe round
trip and four syscalls instead of a fork and exec of ``unshare``.

Protocol on stdin/stdout, one line each way: ``PIN <0|1 lo up> <path>`` ->
``OK`` or ``ERR <errno> <message>``. EOF on stdin ends it. If it cannot get back into
the node's namespace it exits at once (status 3), and the server starts a new one.

This module is also the client side: ``Pinner`` starts, talks to and restarts it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import os
import socket
import struct
import subprocess
import sys
import threading

CLONE_NEWNET = 0x40000000
MS_BIND = 4096
MNT_DETACH = 2
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
    home = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    home_ino = os.fstat(home).st_ino
    out = sys.stdout
    for line in sys.stdin:
        try:
            cmd, lo, path = line.rstrip("\n").split(" ", 2)
            if cmd != "PIN":
                raise OSError(errno.EINVAL, f"unknown request {cmd!r}")
            fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444)
            os.close(fd)
            try:
                _check(libc.unshare(CLONE_NEWNET), "unshare")
                try:
                    _check(libc.mount(b"/proc/self/ns/net", os.fsencode(path), None, MS_BIND, None),
                           f"bind mount on {path}")
                    if lo == "1":
                        _lo_up()
                finally:
                    if libc.setns(home, CLONE_NEWNET) != 0 or os.stat("/proc/self/ns/net").st_ino != home_ino:
                        os._exit(3)   # stranded in the pod's namespace: die, the server restarts us
            except OSError:
                libc.umount2(os.fsencode(path), MNT_DETACH)
                os.unlink(path)
                raise
            out.write("OK\n")
        except OSError as exc:
            out.write(f"ERR {exc.errno or errno.EIO} {exc.strerror or exc}\n".replace("\n", " ").rstrip() + "\n")
        except ValueError:
            out.write(f"ERR {errno.EINVAL} malformed request\n")
        out.flush()
    return 0


class Pinner:
    """Client of the helper; thread-safe (requests are serialised: each takes ~0.1 ms)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[str] | None = None

    def _start(self) -> subprocess.Popen[str]:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
             os.environ.get("PYTHONPATH", "")]))
        return subprocess.Popen([sys.executable, "-S", "-m", "cri_shim.pinner"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True, bufsize=1, env=env, close_fds=True)

    def start(self) -> None:
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                self._proc = self._start()

    def pin(self, path: str, loopback_up: bool) -> None:
        """Pin a new netns at *path* (which must not exist). Raises OSError."""
        if "\n" in path:
            raise OSError(errno.EINVAL, "netns path contains a newline")
        with self._lock:
            for attempt in (1, 2):
                if self._proc is None or self._proc.poll() is not None:
                    self._proc = self._start()
                assert self._proc.stdin is not None and self._proc.stdout is not None
                try:
                    self._proc.stdin.write(f"PIN {int(loopback_up)} {path}\n")
                    self._proc.stdin.flush()
                    reply = self._proc.stdout.readline()
                except (BrokenPipeError, OSError):
                    reply = ""
                if reply:
                    break
                self._proc.kill()   # died mid-request: once more with a fresh helper,
                self._proc.wait()   # after undoing whatever half of the pin it did
                self._proc = None
                _libc().umount2(os.fsencode(path), MNT_DETACH)
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
            else:
                raise OSError(errno.EIO, "the netns pinner helper keeps dying")
        if reply.startswith("OK"):
            return
        _, code, message = (reply.rstrip("\n").split(" ", 2) + ["", ""])[:3]
        raise OSError(int(code) if code.isdigit() else errno.EIO, message)

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
