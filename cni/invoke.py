"""Running plugins: find, environment, exec, decode. The one seam tests fake.

Follows libcni ``pkg/invoke``: the environment is this process's plus the six
``CNI_*`` variables (which win over inherited ones), a plugin binary is looked up
by type in the bin dirs in order, exec is retried on "text file busy", and a
failing plugin's stdout is decoded as the spec's error object.

``Exec`` is the seam: ``RawExec`` runs real binaries; tests pass a fake that records
what it was given and returns scripted output.
"""

from __future__ import annotations

import errno
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence

from . import gojson
from ._frozen import Frozen
from .errors import (ERR_DECODING_FAILURE, ERR_IO_FAILURE, ERR_UNKNOWN, CNIError,
                     ExecTimeout, InvalidPluginOutput, PluginError, PluginNotFound)
from .version import CURRENT_VERSION

# A CNI plugin built on cni.skel imports this module at every start, so what only some
# runs need is imported where it is used: subprocess and signal (exec), cni.result
# (an ADD's output), logging (a record to emit), typing (type checkers only), and the
# Exec protocol (see __getattr__ below).
TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    import logging
    import subprocess
    from typing import TypeVar

    from ._exec import Exec
    from .result import Result

    T = TypeVar("T")

__all__ = ["ExecOutput", "Exec", "RawExec", "PluginInfo", "find_plugin", "build_env",
           "decode_output", "exec_plugin", "get_version_info"]

if not TYPE_CHECKING:
    def __getattr__(name: str) -> object:
        # PEP 562: ``Exec``, a typing.Protocol, is loaded when first asked for (cni.api).
        if name == "Exec":
            from ._exec import Exec
            globals()["Exec"] = Exec
            return Exec
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _log() -> logging.Logger | None:
    """``logging.getLogger(__name__)``, or None while nothing has imported logging:
    then no handler exists and our DEBUG/INFO records would go nowhere (Python's
    last-resort handler takes WARNING and up), so a plugin need not load logging."""
    module = sys.modules.get("logging")
    return None if module is None else module.getLogger(__name__)


class ExecOutput(Frozen):
    """What one plugin run produced."""

    _fields = ("stdout", "stderr", "returncode")
    stdout: bytes
    stderr: bytes
    returncode: int

    def __init__(self, stdout: bytes, stderr: bytes = b"", returncode: int = 0) -> None:
        self._set(stdout=stdout, stderr=stderr, returncode=returncode)


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


class RawExec:
    """``Exec`` with real processes: no shell, fds closed, a new session per plugin
    (so a timeout kills the plugin and whatever it spawned, such as its IPAM plugin),
    and "text file busy" retried like libcni (the binary is being replaced)."""

    def __init__(self, *, busy_retries: int = 5, busy_retry_delay: float = 1.0) -> None:
        self._busy_retries = busy_retries
        self._busy_retry_delay = busy_retry_delay

    def find_plugin(self, name: str, bin_dirs: Sequence[str]) -> str:
        """See the module function ``find_plugin``."""
        return find_plugin(name, bin_dirs)

    def run(self, plugin_path: str, stdin: bytes, env: Mapping[str, str],
            timeout: float | None) -> ExecOutput:
        """Run the plugin to completion (or kill it at *timeout* seconds)."""
        import subprocess
        plugin = os.path.basename(plugin_path)
        attempt = 0
        while True:
            try:
                proc = subprocess.Popen([plugin_path], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        env=dict(env), close_fds=True,
                                        # A process group of its own, so a timeout kills
                                        # the delegates it started too. Not setsid(): a
                                        # new session is a new scheduler autogroup,
                                        # which cost up to 7 ms per exec here.
                                        process_group=0)
                break
            except OSError as exc:
                if exc.errno == errno.ETXTBSY and attempt < self._busy_retries:
                    attempt += 1
                    if (log := _log()) is not None:
                        log.debug("plugin %s: text file busy, retry %d", plugin, attempt)
                    time.sleep(self._busy_retry_delay)
                    continue
                if exc.errno == errno.ENOENT:
                    raise PluginNotFound(plugin, [os.path.dirname(plugin_path)]) from exc
                raise CNIError(ERR_IO_FAILURE, f"cannot execute {plugin_path}: "
                               f"{exc.strerror or exc}", plugin=plugin) from exc
        try:
            stdout, stderr = proc.communicate(stdin, timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            raise ExecTimeout(plugin, env.get("CNI_COMMAND"), timeout or 0.0) from None
        if (log := _log()) is not None:
            for line in stderr.decode("utf-8", "replace").splitlines():
                log.debug("plugin %s stderr: %s", plugin, line)
        return ExecOutput(stdout=stdout, stderr=stderr, returncode=proc.returncode)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    import signal
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()


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


def _exit_status(returncode: int) -> str:
    """``exec.ExitError.Error()``: ``exit status N`` or ``signal: killed``."""
    if returncode < 0:
        import signal
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


def _with_stderr(details: str, stderr: bytes) -> str:
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


def _snippet(data: bytes, limit: int = 200) -> str:
    text = data.decode("utf-8", "replace").strip()
    return text if len(text) <= limit else text[:limit] + "..."


def _failure(output: ExecOutput, plugin: str, command: str) -> PluginError:
    """A failed run as libcni's ``pluginErr`` (``pkg/invoke/raw_exec.go``) sees it:
    the error object on stdout, or code 0 with libcni's own message."""
    status = _exit_status(output.returncode)
    if not output.stdout:
        msg = (f"netplugin failed: {_go_quote(output.stderr)}" if output.stderr else
               f"netplugin failed with no error message: {status}")
        return InvalidPluginOutput(ERR_UNKNOWN, msg, plugin=plugin, command=command)
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
            problem = f"json: cannot unmarshal {gojson.type_name(code)} into Go struct field Error.code of type uint"
        elif not isinstance(msg, str) or not isinstance(details, str):
            field, value = ("msg", msg) if not isinstance(msg, str) else ("details", details)
            problem = (f"json: cannot unmarshal {gojson.type_name(value)} into Go struct field "
                       f"Error.{field} of type string")
    if problem:
        return InvalidPluginOutput(
            ERR_UNKNOWN, "netplugin failed but error parsing its diagnostic message "
            f"{_go_quote(output.stdout)}: {problem}", plugin=plugin, command=command)
    if not msg:
        msg = f"{status} with an empty error message"
    return PluginError(code, msg, details, plugin=plugin, command=command)


def decode_output(output: ExecOutput, *, plugin: str, command: str,
                  cni_version: str = "") -> Result | None:
    """Turn a plugin run into its outcome: the ``Result`` for a successful ADD, None
    for other successful commands. A non-zero exit raises ``PluginError`` with the
    plugin's code/msg/details, or ``InvalidPluginOutput`` when stdout holds no error
    object; a successful ADD with empty or unparsable stdout raises
    ``InvalidPluginOutput``. *cni_version* is the config's, assumed for a result that
    does not say its version (libcni ``fixupResultVersion``)."""
    if output.returncode != 0:
        raise _failure(output, plugin, command)
    if command != "ADD":
        return None
    if not output.stdout.strip():
        raise InvalidPluginOutput(ERR_DECODING_FAILURE, "succeeded but printed no result",
                                  _with_stderr("", output.stderr),
                                  plugin=plugin, command=command)
    from .result import parse_result
    try:
        return parse_result(output.stdout, expected_version=cni_version or "0.1.0")
    except ValueError as exc:
        raise InvalidPluginOutput(
            ERR_DECODING_FAILURE, f"invalid result: {exc}",
            _with_stderr(f"stdout: {_snippet(output.stdout)}", output.stderr),
            plugin=plugin, command=command) from None


def exec_plugin(exec_: Exec, *, plugin: str, plugin_path: str, command: str, stdin: bytes,
                env: Mapping[str, str], timeout: float | None,
                cni_version: str = "") -> Result | None:
    """Run one plugin command through *exec_* and decode it (``decode_output``),
    logging one line per run. Errors from the exec layer that are not ``CNIError``
    become ``CNIError(ERR_IO_FAILURE)``."""
    return _logged_run(exec_, plugin, plugin_path, command, stdin, env, timeout,
                       lambda out: decode_output(out, plugin=plugin, command=command,
                                                 cni_version=cni_version))


def _logged_run(exec_: Exec, plugin: str, plugin_path: str, command: str, stdin: bytes,
                env: Mapping[str, str], timeout: float | None,
                decode: Callable[[ExecOutput], T]) -> T:
    start = time.monotonic()
    outcome = "ok"
    try:
        try:
            output = exec_.run(plugin_path, stdin, env, timeout)
        except CNIError as exc:
            raise exc.with_context(plugin=plugin, command=command)
        except OSError as exc:
            raise CNIError(ERR_IO_FAILURE, f"cannot run {plugin_path}: {exc}",
                           plugin=plugin, command=command) from exc
        return decode(output)
    except ExecTimeout:
        outcome = "timeout"
        raise
    except CNIError as exc:
        outcome = f"error code={exc.code}"
        raise
    finally:
        if (log := _log()) is not None:
            log.info("plugin=%s command=%s container=%s ifname=%s duration_ms=%.1f result=%s",
                     plugin, command, env.get("CNI_CONTAINERID") or "-",
                     env.get("CNI_IFNAME") or "-", (time.monotonic() - start) * 1000, outcome)


class PluginInfo(Frozen):
    """A plugin's answer to VERSION."""

    _fields = ("cni_version", "supported_versions")
    cni_version: str
    supported_versions: tuple[str, ...]

    def __init__(self, cni_version: str, supported_versions: tuple[str, ...]) -> None:
        self._set(cni_version=cni_version, supported_versions=supported_versions)


def _decode_version(output: ExecOutput, plugin: str) -> PluginInfo:
    if output.returncode != 0:
        raise _failure(output, plugin, "VERSION")
    try:
        obj = gojson.loads(output.stdout)
    except ValueError:
        obj = None
    if not isinstance(obj, dict):
        raise InvalidPluginOutput(ERR_DECODING_FAILURE, "decoding version info: not a JSON object",
                                  f"stdout: {_snippet(output.stdout)}",
                                  plugin=plugin, command="VERSION")
    version = obj.get("cniVersion")
    supported = obj.get("supportedVersions") or []
    if not isinstance(version, str) or not version:
        raise InvalidPluginOutput(ERR_DECODING_FAILURE,
                                  "decoding version info: missing field cniVersion",
                                  plugin=plugin, command="VERSION")
    if not isinstance(supported, list) or not all(isinstance(v, str) for v in supported):
        raise InvalidPluginOutput(ERR_DECODING_FAILURE,
                                  "decoding version info: supportedVersions is not a list",
                                  plugin=plugin, command="VERSION")
    if not supported:
        if version != "0.2.0":
            raise InvalidPluginOutput(ERR_DECODING_FAILURE,
                                      "decoding version info: missing field supportedVersions",
                                      plugin=plugin, command="VERSION")
        supported = ["0.1.0", "0.2.0"]  # 0.2.0 plugins predate the field
    return PluginInfo(version, tuple(supported))


def get_version_info(exec_: Exec, plugin_path: str, *, timeout: float | None = None,
                     base_env: Mapping[str, str] | None = None) -> PluginInfo:
    """Ask a plugin which spec versions it supports (libcni ``GetVersionInfo``).
    A plugin that answers ``unknown CNI_COMMAND: VERSION`` is taken to support 0.1.0."""
    plugin = os.path.basename(plugin_path)
    env = build_env("VERSION", base=base_env)
    stdin = b'{"cniVersion":"' + CURRENT_VERSION.encode() + b'"}'
    try:
        return _logged_run(exec_, plugin, plugin_path, "VERSION", stdin, env, timeout,
                           lambda out: _decode_version(out, plugin))
    except PluginError as exc:
        if exc.msg == "unknown CNI_COMMAND: VERSION" and not exc.details:
            return PluginInfo("0.1.0", ("0.1.0",))
        raise
