"""conmon, the per-container monitor CRI-O uses: it runs ``runc create``, holds the
container's stdio, writes the CRI log file and the exit code, and outlives us.

Launching it (``Conmon.create``) follows CRI-O: a socketpair for conmon's sync pipe and
one for its start pipe, their fd numbers in ``_OCI_SYNCPIPE`` / ``_OCI_STARTPIPE``;
one byte on the start pipe lets it go; the sync pipe then carries one JSON line,
``{"pid": N}`` (created) or ``{"pid": -1, "message": "<runc's stderr>"}``; an EOF
without a line is a failure too (conmon died after detaching). The first conmon
process forks the long-lived one and exits, after writing its pid to
``<bundle>/conmon-pidfile``.

Files, per container: the bundle (``config.json``, ``rootfs``, conmon's ``pidfile``,
``conmon-pidfile``, the ``ctl`` and ``winsz`` FIFOs, the ``attach`` socket with
``--full-attach``, and, conmon's persist dir being the bundle, ``exit`` and ``oom``),
and ``<exit_dir>/<id>``: the exit status in decimal, no newline, 128+N for a signal.

ExecSync does not go through conmon (``OCIRuntime.exec_sync`` runs ``runc exec``
itself): conmon's exec exits right after killing a command that timed out, and the
killed command, orphaned, is left a zombie wherever no init reaps it.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import select
import socket
import subprocess
import time
from dataclasses import dataclass

from .errors import RuntimeFailed, RuntimeTimeout
from .ocicli import OCIRuntime, error_message

__all__ = ["Conmon", "Created", "CTL_REOPEN"]

log = logging.getLogger(__name__)

CREATE_TIMEOUT = 60.0          # seconds runc create may take (image hooks, cgroups)
CTL_REOPEN = "2 0 0\n"         # the ctl FIFO message that makes conmon reopen the log
_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class Created:
    pid: int            # the container's init
    conmon_pid: int     # the long-lived conmon


class Conmon:
    """*binary* with *exit_dir* (``<id>`` files of exit codes) and *socket_dir*."""

    def __init__(self, binary: str, exit_dir: str, socket_dir: str, *,
                 log_level: str = "info") -> None:
        self.binary, self.exit_dir, self.socket_dir = binary, exit_dir, socket_dir
        self.log_level = log_level
        for d in (exit_dir, socket_dir):
            os.makedirs(d, mode=0o700, exist_ok=True)

    # -- create -----------------------------------------------------------------------

    def create(self, runtime: OCIRuntime, container_id: str, name: str, bundle: str, *,
               log_path: str, tty: bool = False, stdin: bool = False, stdin_once: bool = False,
               log_size_max: int = -1, timeout: float = CREATE_TIMEOUT) -> Created:
        """Start conmon for the bundle, which runs ``runc create``. Raises
        ``RuntimeFailed`` with runc's own message (nothing of the container is left in
        the runtime then: the caller still removes the bundle)."""
        for stale in ("pidfile", "conmon-pidfile", "exit", "oom"):
            _unlink(os.path.join(bundle, stale))
        _unlink(self.exit_file(container_id))
        if log_path:
            os.makedirs(os.path.dirname(log_path), mode=0o755, exist_ok=True)
        args = [self.binary, "--api-version", "1", "-b", bundle, "-c", container_id,
                "-u", container_id, "-n", name, "-r", runtime.binary,
                "--exit-dir", self.exit_dir, "--persist-dir", bundle,
                "-p", os.path.join(bundle, "pidfile"), "-P", os.path.join(bundle, "conmon-pidfile"),
                "-l", log_path or "none", "--log-level", self.log_level, "--syslog",
                "--socket-dir-path", self.socket_dir, "--full-attach"]
        args += [f"--runtime-arg={a}" for a in runtime.global_args()]
        if runtime.systemd_cgroup:
            args.append("--systemd-cgroup")
        if log_size_max >= 0:
            args += ["--log-size-max", str(log_size_max)]
        if tty:
            args.append("-t")
        elif stdin:
            args.append("-i")
        if stdin and not stdin_once:
            args.append("--leave-stdin-open")
        what = f"creating container {container_id} with {runtime.name}"
        reply, _, _ = self._launch(args, bundle, timeout, what)
        pid = int(reply.get("data", reply.get("pid", -1)))
        if pid <= 0:
            raise RuntimeFailed(what, error_message(str(reply.get("message", ""))) or
                                "conmon reported no container process", tuple(args))
        try:
            with open(os.path.join(bundle, "conmon-pidfile")) as f:
                conmon_pid = int(f.read().strip())
        except (OSError, ValueError) as exc:
            raise RuntimeFailed(what, f"conmon wrote no pid file: {exc}") from exc
        return Created(pid, conmon_pid)

    def _launch(self, args: list[str], cwd: str, timeout: float, what: str, *,
                then: float = 0) -> tuple[dict, dict | None, subprocess.Popen]:
        """Run conmon with its two pipes; returns its first sync-pipe message and,
        with *then* > 0 (an exec's), the second (the exit), waited for that long."""
        sync_ours, sync_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        start_ours, start_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = {"PATH": os.environ.get("PATH", _PATH), "TZ": "UTC",
               "_OCI_SYNCPIPE": str(sync_theirs.fileno()),
               "_OCI_STARTPIPE": str(start_theirs.fileno())}
        second = None
        try:
            try:
                proc = subprocess.Popen(args, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                        pass_fds=(sync_theirs.fileno(), start_theirs.fileno()),
                                        start_new_session=True)
            except OSError as exc:
                raise RuntimeFailed(what, f"cannot run {self.binary}: {exc.strerror}") from exc
            sync_theirs.close()
            start_theirs.close()
            try:
                start_ours.sendall(b"\0")
            except OSError:
                pass   # it died already: the sync pipe says so
            reader = _LineReader(sync_ours)
            line = reader.line(timeout)
            if line and then > 0:
                second = reader.line(then)
        finally:
            for s in (sync_ours, sync_theirs, start_ours, start_theirs):
                s.close()
        if line is None:
            proc.kill()
            proc.wait()
            raise RuntimeTimeout(f"{what}: conmon did not report in {timeout:.0f}s")
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if not line:
            stderr = proc.stderr.read() if proc.stderr is not None else b""
            raise RuntimeFailed(what, stderr.decode("utf-8", "replace").strip() or
                                "conmon exited without reporting (see the syslog)", tuple(args))
        if proc.stderr is not None:
            proc.stderr.close()
        try:
            reply = json.loads(line)
            exit_reply = json.loads(second) if second else None
        except ValueError as exc:
            raise RuntimeFailed(what, f"conmon said {line[:200]!r} {second!r}") from exc
        return reply, exit_reply, proc

    # -- after create -------------------------------------------------------------------

    def exit_file(self, container_id: str) -> str:
        return os.path.join(self.exit_dir, container_id)

    def exit_code(self, container_id: str, bundle: str) -> tuple[int, float] | None:
        """(exit status, when) from conmon's files, or None while it runs."""
        for path in (os.path.join(bundle, "exit"), self.exit_file(container_id)):
            try:
                with open(path) as f:
                    text = f.read().strip()
                return int(text), os.stat(path).st_ctime
            except (OSError, ValueError):
                continue
        return None

    @staticmethod
    def oom_killed(bundle: str) -> bool:
        return os.path.exists(os.path.join(bundle, "oom"))

    @staticmethod
    def control(bundle: str, message: str) -> None:
        """Write one message to conmon's ``ctl`` FIFO (one per write: conmon 2.1.6
        handles a read holding several as the first one repeated). Raises OSError;
        ENXIO when conmon is gone."""
        fd = os.open(os.path.join(bundle, "ctl"), os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            os.write(fd, message.encode())
        finally:
            os.close(fd)

    def forget(self, container_id: str) -> None:
        """Remove what conmon leaves outside the bundle."""
        _unlink(self.exit_file(container_id))
        _unlink(os.path.join(self.socket_dir, container_id))


class _LineReader:
    """Lines from a socket, one at a time, each with its own timeout."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.buffer = sock, b""

    def line(self, timeout: float) -> str | None:
        """The next line: "" on EOF before one, None on timeout."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([self.sock], [], [], left)
            if not ready:
                continue
            chunk = self.sock.recv(65536)
            if not chunk:
                rest, self.buffer = self.buffer, b""
                return rest.decode("utf-8", "replace") if rest.strip() else ""
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line.decode("utf-8", "replace")


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            raise
