"""Running the flannel plugin's delegate without ``subprocess``.

``SpawnExec`` is ``cni.invoke.RawExec`` for the plugin process: ``subprocess`` imports
threading, selectors, signal, locale and more, about 9 ms at every plugin start, a
third of the plugin's budget over its delegate (issue 5). ``os.posix_spawn`` and a
``poll`` loop do what ``Popen`` and ``communicate`` did.
"""

from __future__ import annotations

import _signal  # signal's numbers without signal.py's enum set-up
import errno
import os
import select
import time
from collections.abc import Mapping

from cni.errors import ERR_IO_FAILURE, CNIError, PluginNotFound
from cni.invoke import ExecOutput, RawExec

__all__ = ["SpawnExec"]

# What Python ignores and Popen's restore_signals gives back to the child.
_DEFAULT_SIGNALS = (_signal.SIGPIPE, _signal.SIGXFSZ)


class SpawnExec(RawExec):
    """``RawExec`` without ``subprocess``.

    The same contract for the untimed run flannel makes: no shell, only stdin, stdout
    and stderr inherited (as ``close_fds``), the plugin's own process group (so a
    runtime's timeout kill reaches the delegate too, as with Go's invoke), SIGPIPE and SIGXFSZ back to
    their defaults (as ``restore_signals``), "text file busy" retried, both outputs
    captured. ``os.posix_spawn`` and a ``poll`` loop do what ``Popen`` and
    ``communicate`` did. A timeout, or a path without a directory (which ``Popen``
    would look up in PATH), is left to ``RawExec``. Logs nothing: the plugin process
    has no logging, so ``RawExec``'s DEBUG lines went nowhere either.

    One difference no plugin can act on: glibc's ``posix_spawn`` starts the child with
    glibc's two internal signals (32 and 33, below ``SIGRTMIN``) ignored, and
    ``setsigdef`` cannot name them; a glibc program installs its own handlers for them
    when it needs them, Go programs do not use them. ``Popen`` children get the same
    whenever ``subprocess`` itself takes its ``posix_spawn`` path.
    """

    def run(self, plugin_path: str, stdin: bytes, env: Mapping[str, str],
            timeout: float | None) -> ExecOutput:
        if timeout is not None or not os.path.dirname(plugin_path):
            return super().run(plugin_path, stdin, env, timeout)
        plugin = os.path.basename(plugin_path)
        in_r, in_w = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        ours = {in_r, in_w, out_r, out_w, err_r, err_w}
        actions: list[tuple[int, ...]] = [(os.POSIX_SPAWN_DUP2, in_r, 0),
                                          (os.POSIX_SPAWN_DUP2, out_w, 1),
                                          (os.POSIX_SPAWN_DUP2, err_w, 2)]
        actions += [(os.POSIX_SPAWN_CLOSE, fd) for fd in _inherited_fds() if fd not in ours]
        attempt = 0
        try:
            while True:
                try:
                    pid = os.posix_spawn(plugin_path, [plugin_path], dict(env),
                                         file_actions=actions,
                                         setsigdef=_DEFAULT_SIGNALS)
                    break
                except OSError as exc:
                    if exc.errno == errno.ETXTBSY and attempt < self._busy_retries:
                        attempt += 1
                        time.sleep(self._busy_retry_delay)
                        continue
                    for fd in (in_w, out_r, err_r):
                        os.close(fd)
                    if exc.errno == errno.ENOENT:
                        raise PluginNotFound(plugin, [os.path.dirname(plugin_path)]) from exc
                    raise CNIError(ERR_IO_FAILURE, f"cannot execute {plugin_path}: "
                                   f"{exc.strerror or exc}", plugin=plugin) from exc
        finally:
            for fd in (in_r, out_w, err_w):
                os.close(fd)
        stdout, stderr = _communicate(in_w, out_r, err_r, stdin)
        _, status = os.waitpid(pid, 0)
        return ExecOutput(stdout=stdout, stderr=stderr,
                          returncode=os.waitstatus_to_exitcode(status))


def _inherited_fds() -> list[int]:
    """This process's inheritable descriptors above 2 (``close_fds`` closes them)."""
    fds = []
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            if fd > 2 and os.get_inheritable(fd):
                fds.append(fd)
        except OSError:
            pass  # listdir's own descriptor, gone by now
    return fds


def _communicate(in_w: int, out_r: int, err_r: int, data: bytes) -> tuple[bytes, bytes]:
    """``Popen.communicate`` on raw pipes: feed *data*, collect stdout and stderr until
    both close; closes all three. A child that stops reading its stdin is not an
    error."""
    poller = select.poll()
    chunks: dict[int, list[bytes]] = {out_r: [], err_r: []}
    for fd in chunks:
        poller.register(fd, select.POLLIN | select.POLLPRI)
    view = memoryview(data)
    offset = 0
    if data:
        poller.register(in_w, select.POLLOUT)
        open_fds = {in_w, out_r, err_r}
    else:
        os.close(in_w)
        open_fds = {out_r, err_r}
    while open_fds:
        for fd, _ in poller.poll():
            if fd == in_w:
                try:
                    offset += os.write(in_w, view[offset:offset + select.PIPE_BUF])
                except BrokenPipeError:
                    offset = len(data)
                done = offset >= len(data)
            else:
                chunk = os.read(fd, 32768)
                chunks[fd].append(chunk)
                done = not chunk
            if done:
                poller.unregister(fd)
                os.close(fd)
                open_fds.discard(fd)
    return b"".join(chunks[out_r]), b"".join(chunks[err_r])
