"""Running a plugin: find it, build its environment, exec it, read its failure.

libcni's ``pkg/invoke``, which runtimes and plugins share: a runtime runs each plugin
of a list with it, a meta plugin such as flannel runs its delegate with it. The
environment is this process's plus the six ``CNI_*`` variables (which win over
inherited ones), a binary is looked up by type in the bin dirs in order, exec is
retried on "text file busy", and a failing plugin's stdout is read as the spec's error
object (``raise_for_failure``; a successful ADD's result is ``cni.result``'s job).

``Exec`` is the seam: ``RawExec`` runs real binaries; tests pass a fake that records
what it was given and returns scripted output (``libcni.testing.FakeExec``).

``RawExec`` starts plugins with ``os.posix_spawn`` and collects their output with
``poll``, not with ``subprocess``: ``subprocess`` imports threading, selectors, signal,
locale and more, about 9 ms at every start of a plugin that delegates.
"""

from __future__ import annotations

import _signal  # signal's numbers without signal.py's enum set-up
import abc
import errno
import os
import select
import time
from collections.abc import Mapping, Sequence

from . import gojson
from .errors import (ERR_IO_FAILURE, ERR_UNKNOWN, CNIError, ExecTimeout, InvalidPluginOutput,
                     PluginError, PluginNotFound)
from .frozen import Frozen

__all__ = ["ExecOutput", "Exec", "RawExec", "find_plugin", "build_env", "raise_for_failure",
           "exit_status", "stderr_details"]


class ExecOutput(Frozen):
    """What one plugin run produced."""

    _fields = ("stdout", "stderr", "returncode")
    stdout: bytes
    stderr: bytes
    returncode: int

    def __init__(self, stdout: bytes, stderr: bytes = b"", returncode: int = 0) -> None:
        self._set(stdout=stdout, stderr=stderr, returncode=returncode)


class Exec(abc.ABC):
    """Finds and runs plugin binaries. ``run`` returns whatever the plugin produced,
    whatever its exit status; it raises only when the plugin could not be run
    (``PluginNotFound``, ``ExecTimeout``, ``CNIError``)."""

    @abc.abstractmethod
    def run(self, plugin_path: str, stdin: bytes, env: Mapping[str, str],
            timeout: float | None) -> ExecOutput:
        """Run the plugin to completion, or kill it at *timeout* seconds."""

    def find_plugin(self, name: str, bin_dirs: Sequence[str]) -> str:
        """The plugin binary for type *name* (see the module function)."""
        return find_plugin(name, bin_dirs)


def find_plugin(name: str, bin_dirs: Sequence[str]) -> str:
    """The path of the first regular file named *name* in *bin_dirs* (libcni
    ``FindInPath``). Raises ``PluginNotFound``."""
    if not name or os.sep in name or name in (".", ".."):
        raise PluginNotFound(name, list(bin_dirs))
    for directory in bin_dirs:
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return path
    raise PluginNotFound(name, list(bin_dirs))


# What Python ignores and a child should get back at their defaults (as Popen's
# restore_signals).
_DEFAULT_SIGNALS = (_signal.SIGPIPE, _signal.SIGXFSZ)


class RawExec(Exec):
    """``Exec`` with real processes: no shell, only stdin, stdout and stderr inherited,
    SIGPIPE and SIGXFSZ at their defaults, "text file busy" retried like libcni (the
    binary is being replaced), both outputs captured.

    *process_group* (the runtime's choice) starts each plugin in a process group of
    its own, so a timeout kills the plugin and whatever it started (its IPAM plugin);
    not a new session, which on kernels with scheduler autogroups cost up to 7 ms an
    exec. A meta plugin runs its delegate with ``process_group=False``, so that the
    runtime's kill of the meta plugin's group reaches the delegate too.

    One difference from ``subprocess`` no plugin can act on: glibc's ``posix_spawn``
    starts the child with glibc's two internal signals (32 and 33, below ``SIGRTMIN``)
    ignored; a glibc program installs its own handlers for them when it needs them, Go
    programs do not use them.
    """

    def __init__(self, *, process_group: bool = True, busy_retries: int = 5,
                 busy_retry_delay: float = 1.0) -> None:
        self._process_group = process_group
        self._busy_retries = busy_retries
        self._busy_retry_delay = busy_retry_delay

    def run(self, plugin_path: str, stdin: bytes, env: Mapping[str, str],
            timeout: float | None) -> ExecOutput:
        plugin = os.path.basename(plugin_path)
        deadline = None if timeout is None else time.monotonic() + timeout
        in_r, in_w = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        ours = {in_r, in_w, out_r, out_w, err_r, err_w}
        actions: list[tuple[int, ...]] = [(os.POSIX_SPAWN_DUP2, in_r, 0),
                                          (os.POSIX_SPAWN_DUP2, out_w, 1),
                                          (os.POSIX_SPAWN_DUP2, err_w, 2)]
        actions += [(os.POSIX_SPAWN_CLOSE, fd) for fd in _inherited_fds() if fd not in ours]
        spawn = os.posix_spawn if os.sep in plugin_path else os.posix_spawnp
        extra = {"setpgroup": 0} if self._process_group else {}
        attempt = 0
        try:
            while True:
                try:
                    pid = spawn(plugin_path, [plugin_path], dict(env), file_actions=actions,
                                setsigdef=_DEFAULT_SIGNALS, **extra)
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
        try:
            stdout, stderr = _communicate(in_w, out_r, err_r, stdin, deadline)
        except TimeoutError:
            try:
                if self._process_group:
                    os.killpg(pid, _signal.SIGKILL)
                else:
                    os.kill(pid, _signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.waitpid(pid, 0)
            raise ExecTimeout(plugin, env.get("CNI_COMMAND"), timeout or 0.0) from None
        _, status = os.waitpid(pid, 0)
        return ExecOutput(stdout=stdout, stderr=stderr,
                          returncode=os.waitstatus_to_exitcode(status))


def _inherited_fds() -> list[int]:
    """This process's inheritable descriptors above 2, which the child must not get
    (``subprocess``'s ``close_fds``); the others are close-on-exec already."""
    fds = []
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            if fd > 2 and os.get_inheritable(fd):
                fds.append(fd)
        except OSError:
            pass  # listdir's own descriptor, gone by now
    return fds


def _communicate(in_w: int, out_r: int, err_r: int, data: bytes,
                 deadline: float | None) -> tuple[bytes, bytes]:
    """Feed *data*, collect stdout and stderr until both close; closes all three. A
    child that stops reading its stdin is not an error. Raises ``TimeoutError`` at
    *deadline* (``time.monotonic()``), the descriptors closed."""
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
    try:
        while open_fds:
            wait = None if deadline is None else max(0, int((deadline - time.monotonic()) * 1000))
            ready = poller.poll(wait)
            if not ready and deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError
            for fd, _ in ready:
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
    finally:
        for fd in open_fds:
            os.close(fd)
    return b"".join(chunks[out_r]), b"".join(chunks[err_r])


def build_env(command: str, container_id: str = "", netns: str = "", ifname: str = "",
              cni_args: Sequence[tuple[str, str]] = (), bin_dirs: Sequence[str] = (), *,
              base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for one plugin run: *base* (default ``os.environ``) plus the
    six ``CNI_*`` variables, which override inherited values.

    As libcni, all six are always set: STATUS and GC (which have no attachment) get
    empty ``CNI_CONTAINERID``/``CNI_NETNS``/``CNI_IFNAME``/``CNI_ARGS``; VERSION
    gets the placeholders ``dummy`` for ``CNI_NETNS``/``CNI_IFNAME``/``CNI_PATH``
    that plugins built on old ``skel`` versions insist on (``GetVersionInfo``).
    """
    if command in ("STATUS", "GC"):
        container_id = netns = ifname = ""
        cni_args = ()
    path = os.pathsep.join(bin_dirs)
    if command == "VERSION":
        container_id, netns, ifname, cni_args, path = "", "dummy", "dummy", (), "dummy"
    env = dict(os.environ if base is None else base)
    env.update({
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": container_id,
        "CNI_NETNS": netns,
        "CNI_ARGS": ";".join(f"{k}={v}" for k, v in cni_args),
        "CNI_IFNAME": ifname,
        "CNI_PATH": path,
    })
    return env


# Go's syscall signal texts (zerrors_linux), where glibc's strsignal differs by more
# than the capital letter.
_GO_SIGNALS = {"CPU time limit exceeded": "CPU time limit exceeded",
               "I/O possible": "I/O possible"}


def exit_status(returncode: int) -> str:
    """``exec.ExitError.Error()``: ``exit status N`` or ``signal: killed``."""
    if returncode < 0:
        import signal   # only a plugin that died of a signal needs its name
        text = signal.strsignal(-returncode) or f"signal {-returncode}"
        text = _GO_SIGNALS.get(text, text[:1].lower() + text[1:])
        return f"signal: {text}"
    return f"exit status {returncode}"


def _go_quote(data: bytes) -> str:
    """Go's ``%q`` of a byte string (``strconv.Quote``): printable runes as they are,
    the usual backslash escapes, ``\\xNN`` for bytes that are not UTF-8."""
    out = ['"']
    for ch in data.decode("utf-8", "surrogateescape"):
        code = ord(ch)
        if ch in _QUOTE_ESCAPES:
            out.append(_QUOTE_ESCAPES[ch])
        elif 0xDC80 <= code <= 0xDCFF:   # an undecodable byte
            out.append(f"\\x{code - 0xDC00:02x}")
        elif ch.isprintable() or ch == " ":
            out.append(ch)
        elif code < 0x80:
            out.append(f"\\x{code:02x}")
        elif code <= 0xFFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


_QUOTE_ESCAPES = {'"': '\\"', "\\": "\\\\", "\a": "\\a", "\b": "\\b", "\f": "\\f",
                  "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v"}


def stderr_details(details: str, stderr: bytes) -> str:
    """*details* plus the last lines of *stderr* (ten lines, 2000 characters at most)."""
    tail = "\n".join(stderr.decode("utf-8", "replace").strip().splitlines()[-10:])[-2000:]
    if not tail:
        return details
    return f"{details}; stderr: {tail}" if details else f"stderr: {tail}"


def _go_syntax_error(data: bytes, exc: ValueError) -> str:
    """Go's text for the commonest syntax error (a first character no JSON value
    starts with); Python's own message otherwise."""
    text = data.decode("utf-8", "replace").lstrip(" \t\r\n")
    if text and text[0] not in '{["-0123456789tfn':
        char = text[0] if text[0] != "'" else "\\'"
        return f"invalid character '{char}' looking for beginning of value"
    return str(exc)


def raise_for_failure(output: ExecOutput, *, plugin: str, command: str) -> None:
    """Raise what a failed run means, as libcni's ``pluginErr``
    (``pkg/invoke/raw_exec.go``) reads it: the plugin's error object
    (``PluginError``), or code 0 with libcni's own message (``InvalidPluginOutput``).
    A successful run returns."""
    if output.returncode == 0:
        return
    status = exit_status(output.returncode)
    if not output.stdout:
        msg = (f"netplugin failed: {_go_quote(output.stderr)}" if output.stderr else
               f"netplugin failed with no error message: {status}")
        raise InvalidPluginOutput(ERR_UNKNOWN, msg, plugin=plugin, command=command)
    code: object = 0
    msg: object = ""
    details: object = ""
    try:
        obj = gojson.loads(output.stdout)
        if obj is None:
            obj = {}   # Go: unmarshalling null into a struct leaves it as it is
        problem = "" if isinstance(obj, dict) else (
            f"json: cannot unmarshal {gojson.type_name(obj)} into Go value of type types.Error")
    except ValueError as exc:
        obj, problem = None, _go_syntax_error(output.stdout, exc)
    if isinstance(obj, dict):
        code, msg, details = obj.get("code", 0), obj.get("msg", ""), obj.get("details", "")
        if not isinstance(code, int) or isinstance(code, bool) or code < 0:
            problem = (f"json: cannot unmarshal {gojson.type_name(code)} into Go struct field "
                       "Error.code of type uint")
        elif not isinstance(msg, str) or not isinstance(details, str):
            field, value = ("msg", msg) if not isinstance(msg, str) else ("details", details)
            problem = (f"json: cannot unmarshal {gojson.type_name(value)} into Go struct field "
                       f"Error.{field} of type string")
    if problem:
        raise InvalidPluginOutput(
            ERR_UNKNOWN, "netplugin failed but error parsing its diagnostic message "
            f"{_go_quote(output.stdout)}: {problem}", plugin=plugin, command=command)
    assert isinstance(code, int) and isinstance(msg, str) and isinstance(details, str)
    raise PluginError(code, msg or f"{status} with an empty error message", details,
                      plugin=plugin, command=command)
