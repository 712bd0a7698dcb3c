"""An OCI runtime's command line (runc, crun): state, start, kill, delete, update, exec.

Each runtime keeps its state under a root of ours (``--root``), never the machine's
default ``/run/runc``, so containers of cri-shim and of anyone else never mix. Errors
are read as the runtime logs them with ``--log-format json`` (``{"level":"error",
"msg":...}`` lines on stderr), so a client gets runc's own words, not a wrapper's.
``create`` is not here: conmon runs it (``runtime.conmon``).
"""

from __future__ import annotations

import json
import logging
import os
import select
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Sequence

from .errors import ContainerNotFound, RuntimeFailed, RuntimeTimeout

__all__ = ["OCIRuntime", "RuntimeState", "ExecResult", "MAX_EXEC_OUTPUT"]

log = logging.getLogger(__name__)

TIMEOUT = 30.0   # seconds any one runtime command may take
# ExecSync output kept, stdout and stderr together: kubelet takes CRI answers of up to
# 16 MiB (its maxMsgSize), and CRI-O caps the output at that; a little is left for the
# rest of the message.
MAX_EXEC_OUTPUT = (16 << 20) - (4 << 10)


@dataclass(frozen=True)
class RuntimeState:
    """``runc state``: status is ``creating``, ``created``, ``running``, ``paused`` or
    ``stopped``; pid is the container's init (0 once stopped)."""

    id: str
    status: str
    pid: int
    bundle: str


class OCIRuntime:
    """*binary* (``/usr/bin/runc``) with its state under *root*; *systemd_cgroup*
    passes ``--systemd-cgroup`` (cgroupsPath is then ``slice:prefix:name``)."""

    def __init__(self, name: str, binary: str, root: str, *, systemd_cgroup: bool = False) -> None:
        self.name, self.root = name, root
        self.binary = shutil.which(binary) or binary
        self.systemd_cgroup = systemd_cgroup
        self._features: dict[str, Any] | None = None
        os.makedirs(root, mode=0o700, exist_ok=True)

    def global_args(self) -> list[str]:
        """The flags every invocation gets (conmon passes them as ``--runtime-arg``)."""
        args = ["--root", self.root, "--log-format", "json"]
        if self.systemd_cgroup:
            args.append("--systemd-cgroup")
        return args

    # -- commands -------------------------------------------------------------------

    def state(self, container_id: str) -> RuntimeState:
        """Raises ``ContainerNotFound`` when the runtime has no such container."""
        out = self._run(["state", container_id], f"state of container {container_id}")
        try:
            doc = json.loads(out)
            return RuntimeState(doc["id"], doc["status"], int(doc.get("pid") or 0),
                                doc.get("bundle", ""))
        except (ValueError, KeyError, TypeError) as exc:
            raise RuntimeFailed(f"{self.name} state {container_id}", f"unreadable answer {out[:200]!r}"
                                ) from exc

    def start(self, container_id: str, *, timeout: float = 10) -> None:
        """Let the created container's init exec its process. runc and crun keep the
        init blocked opening ``<root>/<id>/exec.fifo`` until a reader opens it;
        ``runc start`` is that read (plus poststart hooks, which cri-shim never sets),
        so it is done here without a second runtime process (a Go runtime's start-up,
        ~6 ms). When the fifo is not there, or the init does not answer, ``start`` is
        run, and says why."""
        fifo = os.path.join(self.root, container_id, "exec.fifo")
        try:
            fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            fd = -1
        if fd >= 0:
            try:
                # A fifo opened before any writer polls quiet until the init writes.
                ready = select.poll()
                ready.register(fd, select.POLLIN)
                if ready.poll(timeout * 1000) and os.read(fd, 16):
                    os.unlink(fifo)   # what runc start does: state is "running" now
                    return
            finally:
                os.close(fd)
        self._run(["start", container_id], f"starting container {container_id}")

    def kill(self, container_id: str, signal: int | str, *, all_processes: bool = False) -> None:
        args = ["kill"] + (["--all"] if all_processes else []) + [container_id, str(signal)]
        self._run(args, f"signalling container {container_id}")

    def delete(self, container_id: str, *, force: bool = False) -> None:
        """Delete the runtime's state of the container; a missing one is fine."""
        try:
            self._run(["delete"] + (["--force"] if force else []) + [container_id],
                      f"deleting container {container_id}")
        except ContainerNotFound:
            pass

    def update(self, container_id: str, resources: dict[str, Any]) -> None:
        """``update --resources -``: *resources* is an OCI ``linux.resources`` object."""
        self._run(["update", "--resources", "-", container_id],
                  f"updating the resources of container {container_id}",
                  stdin=json.dumps(resources).encode())

    def features(self) -> dict[str, Any]:
        """``<runtime> features`` (runc >= 1.1), or {} when the runtime has no such
        command (crun 1.8) or it fails: then nothing optional is advertised."""
        if self._features is None:
            try:
                self._features = json.loads(self._run(["features"], "features", timeout=10)) or {}
            except (RuntimeFailed, RuntimeTimeout, ContainerNotFound, ValueError):
                self._features = {}
        return self._features

    def list(self) -> list[RuntimeState]:
        out = self._run(["list", "--format", "json"], "listing containers")
        doc = json.loads(out or "null") or []
        return [RuntimeState(d["id"], d["status"], int(d.get("pid") or 0), d.get("bundle", ""))
                for d in doc]

    def exec_sync(self, container_id: str, process: dict[str, Any], timeout: float, *,
                  work_dir: str) -> ExecResult:
        """Run *process* (an OCI process object) in the container, as ExecSync: wait at
        most *timeout* seconds (0: no limit), keep at most ``MAX_EXEC_OUTPUT`` bytes
        of output (both streams together, each read to its end). At the timeout the command is killed with its descendants;
        ``runc exec``, its parent, reaps it, so nothing is left even in a container
        whose init does not reap."""
        with tempfile.TemporaryDirectory(prefix="exec-", dir=work_dir) as tmp:
            spec, pid_file = os.path.join(tmp, "process.json"), os.path.join(tmp, "pid")
            with open(spec, "w") as f:
                json.dump(process, f)
            argv = self.exec_command(container_id, spec, pid_file=pid_file)
            try:
                proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, close_fds=True,
                                        process_group=0)
            except OSError as exc:
                raise RuntimeFailed(f"exec in container {container_id}",
                                    f"cannot run {self.binary}: {exc.strerror}") from exc
            deadline = time.monotonic() + timeout if timeout > 0 else None
            out, err, timed_out = _collect(proc, deadline, lambda: kill_tree(pid_file))
            code = proc.wait()
        if timed_out:
            return ExecResult(-1, out, err, timed_out=True)
        if code != 0 and _runtime_error(err):
            # runc itself failed (the command is not in the image, say): its words
            raise RuntimeFailed(f"exec in container {container_id}",
                                error_message(err.decode("utf-8", "replace")), tuple(argv))
        return ExecResult(code, out, err)

    def exec_command(self, container_id: str, process_file: str, *, tty: bool = False,
                     console_socket: str = "", detach: bool = False,
                     pid_file: str = "", log_file: str = "") -> list[str]:
        """The argv of ``exec --process FILE`` (the caller runs it with its own stdio);
        with *log_file*, the runtime's own log goes there instead of its stderr."""
        argv = [self.binary, *self.global_args(), *(["--log", log_file] if log_file else []),
                "exec", "--process", process_file]
        if tty:
            argv += ["--tty", "--console-socket", console_socket]
        if detach:
            argv.append("--detach")
        if pid_file:
            argv += ["--pid-file", pid_file]
        return argv + [container_id]

    # -- running it -------------------------------------------------------------------

    def _run(self, args: Sequence[str], what: str, *, stdin: bytes | None = None,
             timeout: float = TIMEOUT) -> str:
        argv = [self.binary, *self.global_args(), *args]
        start = time.perf_counter()
        try:
            proc = subprocess.run(argv, input=stdin, capture_output=True, timeout=timeout,
                                  close_fds=True)
        except subprocess.TimeoutExpired as exc:
            raise RuntimeTimeout(f"{what}: {self.name} did not answer in {timeout:.0f}s") from exc
        except OSError as exc:
            raise RuntimeFailed(what, f"cannot run {self.binary}: {exc.strerror}", tuple(argv)) from exc
        log.debug("%s %s rc=%d duration_ms=%.1f", self.name, " ".join(args), proc.returncode,
                  (time.perf_counter() - start) * 1e3)
        if proc.returncode != 0:
            message = error_message(proc.stderr.decode("utf-8", "replace"))
            if "does not exist" in message or "not found" in message.lower():
                raise ContainerNotFound(f"{what}: {message}")
            raise RuntimeFailed(what, message, tuple(argv))
        return proc.stdout.decode("utf-8", "replace")


@dataclass(frozen=True)
class ExecResult:
    exit_code: int
    stdout: bytes
    stderr: bytes
    timed_out: bool = False


def _collect(proc: subprocess.Popen, deadline: float | None,
             on_timeout: Any) -> tuple[bytes, bytes, bool]:
    """Read *proc*'s stdout and stderr to their ends (at most ``MAX_EXEC_OUTPUT`` of
    both together is kept); at *deadline* call *on_timeout* once and read on."""
    assert proc.stdout is not None and proc.stderr is not None
    out_fd, err_fd = proc.stdout.fileno(), proc.stderr.fileno()
    bufs = {out_fd: bytearray(), err_fd: bytearray()}
    open_fds = set(bufs)
    timed_out = False
    while open_fds:
        wait = None if deadline is None or timed_out else max(deadline - time.monotonic(), 0)
        ready, _, _ = select.select(list(open_fds), [], [], wait)
        if not ready and not timed_out:
            timed_out = True
            on_timeout()
            continue
        for fd in ready:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                open_fds.discard(fd)
                continue
            room = MAX_EXEC_OUTPUT - len(bufs[out_fd]) - len(bufs[err_fd])
            if room > 0:
                bufs[fd].extend(chunk[:room])
    proc.stdout.close()
    proc.stderr.close()
    return bytes(bufs[out_fd]), bytes(bufs[err_fd]), timed_out


def _runtime_error(stderr: bytes) -> bool:
    """Whether *stderr* is the runtime's own error log (JSON lines with a level), not
    the command's."""
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    if not lines:
        return False
    try:
        return all(isinstance(d := json.loads(ln), dict) and "level" in d and "msg" in d
                   for ln in lines)
    except ValueError:
        return False


def kill_tree(pid_file: str) -> None:
    """SIGKILL the exec'd process and every process below it."""
    try:
        with open(pid_file) as f:
            root = int(f.read().strip())
    except (OSError, ValueError):
        return
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                text = f.read()
        except OSError:
            continue
        ppid = int(text[text.rfind(")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(name))
    todo, victims = [root], []
    while todo:
        pid = todo.pop()
        victims.append(pid)
        todo.extend(children.get(pid, ()))
    for pid in victims:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def error_message(stderr: str) -> str:
    """What an OCI runtime said went wrong: the ``msg`` of its JSON ``error`` log lines
    (runc and crun with ``--log-format json``), else its stderr as it is."""
    messages = []
    for line in stderr.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            messages.append(line)
            continue
        if isinstance(entry, dict) and entry.get("level") in ("error", "fatal", None):
            messages.append(str(entry.get("msg", line)))
    return "; ".join(messages) or stderr.strip()
