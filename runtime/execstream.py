"""An interactive exec (the streaming Exec): ``runc exec`` with the client's stdio.

Without a tty the command gets pipes; with one, runc gets a pty of ours as its stdio
and makes the command's own pty behind it (runc takes a console socket only when it
detaches), and the client's stdin, output and resizes go through ours. runc's own log goes to a file of its own, so an error of
runc (no such command) is told apart from the command's stderr.

When the client goes away (``cancelled``) the command and everything below it are
killed, as containerd kills an exec whose stream context ended; runc, its parent,
reaps them.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import struct
import subprocess
import tempfile
import termios
import threading
import time
from typing import Any

from .errors import RuntimeFailed
from .ocicli import OCIRuntime, error_message, kill_tree

__all__ = ["exec_stream"]

DRAIN_AFTER_EXIT = 1.0   # seconds to read what a tty still holds once the command exited


def exec_stream(runtime: OCIRuntime, container_id: str, process: dict[str, Any], *,
                work_dir: str, io: Any) -> int:
    """Run *process* in the container with *io* (a ``streaming.runtime.StreamIO``);
    returns the exit code. Raises RuntimeFailed when runc cannot run it."""
    with tempfile.TemporaryDirectory(prefix="exec-", dir=work_dir) as tmp:
        spec, pid_file, log_file = (os.path.join(tmp, n) for n in ("process.json", "pid", "runc.log"))
        with open(spec, "w") as f:
            json.dump(dict(process, terminal=bool(io.tty)), f)
        argv = runtime.exec_command(container_id, spec, pid_file=pid_file, log_file=log_file)
        if io.tty:
            code = _with_tty(argv, pid_file, io)
        else:
            code = _with_pipes(argv, pid_file, io)
        if code != 0:
            failure = _runc_failure(log_file)
            if failure:
                raise RuntimeFailed(f"exec in container {container_id}", failure, tuple(argv))
        return code


def _with_pipes(argv: list[str], pid_file: str, io: Any) -> int:
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE if io.stdin else subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, close_fds=True,
                                process_group=0)
    except OSError as exc:
        raise RuntimeFailed("exec", f"cannot run {argv[0]}: {exc.strerror}") from exc
    assert proc.stdout is not None and proc.stderr is not None
    # Each pump owns its pipe and closes it at its end: a background child of the
    # command may hold the other side long after the command exited.
    pumps = [_thread(_copy_out, _own(proc.stdout), io.stdout, True),
             _thread(_copy_out, _own(proc.stderr), io.stderr, True)]
    if io.stdin is not None:
        assert proc.stdin is not None
        _thread(_copy_in, io.stdin, proc.stdin.fileno(), proc.stdin)
    _watch_cancel(proc, pid_file, io)
    code = proc.wait()
    for t in pumps:
        t.join(DRAIN_AFTER_EXIT)
    return code


def _own(f: Any) -> int:
    """The fd of pipe file *f*, detached from it (the caller closes the fd)."""
    fd = os.dup(f.fileno())
    f.close()
    return fd


def _with_tty(argv: list[str], pid_file: str, io: Any) -> int:
    # runc takes a console socket only when it detaches, and then the command is not
    # its child to wait for; without one, runc makes the command's pty itself and
    # joins it to its own stdio, which, being a pty of ours, runc sets raw and reads
    # the terminal size from on SIGWINCH.
    master, slave = os.openpty()
    try:
        proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave,
                                close_fds=True, process_group=0)
    except OSError as exc:
        os.close(master)
        raise RuntimeFailed("exec", f"cannot run {argv[0]}: {exc.strerror}") from exc
    finally:
        os.close(slave)
    # Each thread its own descriptor of the master: one closing it cannot hand its
    # number to another file while the others still write to it.
    if io.resize is not None:
        _thread(_resizes, io.resize, os.dup(master), proc)
    if io.stdin is not None:
        stdin_fd = os.dup(master)
        _thread(_copy_in, io.stdin, stdin_fd, stdin_fd)
    out = _thread(_copy_out, master, io.stdout, True)
    _watch_cancel(proc, pid_file, io)
    code = proc.wait()
    out.join(DRAIN_AFTER_EXIT)   # a background child may keep the tty open: not forever
    return code


def _resizes(sizes: Any, master: int, proc: subprocess.Popen) -> None:
    try:
        while True:
            size = sizes.get()
            if size is None or proc.poll() is not None:
                return
            if size.width < 1 or size.height < 1:
                continue   # containerd ignores those too
            try:
                fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", size.height, size.width, 0, 0))
                os.kill(proc.pid, signal.SIGWINCH)   # runc passes the new size on
            except OSError:
                return
    finally:
        os.close(master)


def _copy_out(fd: int, writer: Any, close: bool = False) -> None:
    """*fd* to *writer* until EOF (EIO: a tty whose other side is all closed); with
    *close*, *fd* is closed then (a tty master: only this thread knows when)."""
    try:
        _pump(fd, writer)
    finally:
        if close:
            os.close(fd)


def _pump(fd: int, writer: Any) -> None:
    while True:
        try:
            chunk = os.read(fd, 32 << 10)
        except OSError:
            return
        if not chunk:
            return
        if writer is not None:
            try:
                writer.write(chunk)
            except OSError:
                writer = None   # the client is gone: keep draining, so the command is not stuck


def _copy_in(reader: Any, fd: int, pipe: Any) -> None:
    """The client's stdin to *fd*; at its end close *pipe* (the command's stdin pipe,
    which then sees EOF, or our own descriptor of a tty's master)."""
    try:
        while True:
            chunk = reader.read(32 << 10)
            if not chunk:
                break
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view):]
    except OSError:
        pass
    if isinstance(pipe, int):
        os.close(pipe)
    elif pipe is not None:
        _close(pipe)


def _watch_cancel(proc: subprocess.Popen, pid_file: str, io: Any) -> None:
    def watch() -> None:
        while proc.poll() is None:
            if io.cancelled.wait(0.2):
                # The client went: kill the command and all below it; runc, its
                # parent, reaps them. Before runc wrote the pid, runc itself goes.
                while proc.poll() is None:
                    if os.path.exists(pid_file):
                        kill_tree(pid_file)
                    else:
                        proc.kill()
                    time.sleep(0.1)
                return
    _thread(watch)


def _runc_failure(log_file: str) -> str:
    try:
        with open(log_file) as f:
            text = f.read()
    except OSError:
        return ""
    errors = [ln for ln in text.splitlines() if '"level":"error"' in ln or '"level":"fatal"' in ln]
    return error_message("\n".join(errors)) if errors else ""


def _thread(fn: Any, *args: Any) -> threading.Thread:
    t = threading.Thread(target=fn, args=args, daemon=True, name=f"exec-{fn.__name__}")
    t.start()
    return t


def _close(f: Any) -> None:
    try:
        f.close()
    except OSError:
        pass
