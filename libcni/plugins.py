"""Running one plugin command for the runtime: exec, decode, one log line.

The runtime side of ``cni.invoke``: what libcni's ``ExecPluginWithResult`` /
``ExecPluginWithoutResult`` and ``GetVersionInfo`` do, plus the one log line per exec
that STYLE.md asks of the runtime (``plugin=bridge command=ADD container=<id>
ifname=eth0 duration_ms=28.5 result=ok``) and the plugin's stderr at DEBUG.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from cni import gojson
from cni.errors import (ERR_DECODING_FAILURE, ERR_IO_FAILURE, CNIError, ExecTimeout,
                        InvalidPluginOutput, PluginError)
from cni.invoke import Exec, ExecOutput, build_env, raise_for_failure
from cni.result import Result, result_from_output
from cni.version import CURRENT_VERSION

__all__ = ["exec_plugin", "decode_output", "PluginInfo", "get_version_info", "PluginExec",
           "add_observer", "remove_observer"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PluginExec:
    """One plugin exec as it happened, for whoever observes them (metrics, traces)."""

    plugin: str
    command: str
    container_id: str
    ifname: str
    duration: float      # seconds
    outcome: str         # "ok", "timeout" or "error code=N"
    path: str = ""
    env: Mapping[str, str] = field(default_factory=dict)
    stdin: bytes = b""
    stdout: bytes = b""  # the result (or error) the plugin printed; empty if it never ran
    started: float = 0.0  # time.monotonic()
    stderr: bytes = b""   # what it wrote on stderr (flannel: the config it gave its delegate)


_observers: list[Callable[[PluginExec], None]] = []


def add_observer(fn: Callable[[PluginExec], None]) -> None:
    """Call *fn* after every plugin exec (from the exec's thread; it must be quick)."""
    _observers.append(fn)


def remove_observer(fn: Callable[[PluginExec], None]) -> None:
    if fn in _observers:
        _observers.remove(fn)

T = TypeVar("T")


def exec_plugin(exec_: Exec, *, plugin: str, plugin_path: str, command: str, stdin: bytes,
                env: Mapping[str, str], timeout: float | None,
                cni_version: str = "") -> Result | None:
    """Run one plugin command through *exec_*: the ``Result`` of a successful ADD,
    None for another successful command; a failure raises (``raise_for_failure``,
    ``result_from_output``). Errors from the exec layer that are not ``CNIError``
    become ``CNIError(ERR_IO_FAILURE)``."""
    return _logged_run(exec_, plugin, plugin_path, command, stdin, env, timeout,
                       lambda out: decode_output(out, plugin=plugin, command=command,
                                                 cni_version=cni_version))


def decode_output(output: ExecOutput, *, plugin: str, command: str,
                  cni_version: str = "") -> Result | None:
    """A plugin run's outcome: the ``Result`` of a successful ADD (in *cni_version*
    when it does not say its own), None for another successful command; a failure
    raises ``PluginError`` / ``InvalidPluginOutput``."""
    if command == "ADD":
        return result_from_output(output, plugin=plugin, cni_version=cni_version)
    raise_for_failure(output, plugin=plugin, command=command)
    return None


def _logged_run(exec_: Exec, plugin: str, plugin_path: str, command: str, stdin: bytes,
                env: Mapping[str, str], timeout: float | None,
                decode: Callable[[ExecOutput], T]) -> T:
    start = time.monotonic()
    outcome = "ok"
    output = None
    try:
        try:
            output = exec_.run(plugin_path, stdin, env, timeout)
        except CNIError as exc:
            raise exc.with_context(plugin=plugin, command=command)
        except OSError as exc:
            raise CNIError(ERR_IO_FAILURE, f"cannot run {plugin_path}: {exc}",
                           plugin=plugin, command=command) from exc
        if log.isEnabledFor(logging.DEBUG):
            for line in output.stderr.decode("utf-8", "replace").splitlines():
                log.debug("plugin %s stderr: %s", plugin, line)
        return decode(output)
    except ExecTimeout:
        outcome = "timeout"
        raise
    except CNIError as exc:
        outcome = f"error code={exc.code}"
        raise
    finally:
        duration = time.monotonic() - start
        log.info("plugin=%s command=%s container=%s ifname=%s duration_ms=%.1f result=%s",
                 plugin, command, env.get("CNI_CONTAINERID") or "-",
                 env.get("CNI_IFNAME") or "-", duration * 1000, outcome)
        if _observers:
            record = PluginExec(plugin, command, env.get("CNI_CONTAINERID", ""),
                                env.get("CNI_IFNAME", ""), duration, outcome, plugin_path, env,
                                stdin, output.stdout if output is not None else b"", start,
                                output.stderr if output is not None else b"")
            for fn in list(_observers):
                try:
                    fn(record)
                except Exception:   # an observer's bug never fails the exec
                    log.exception("plugin exec observer %r", fn)


@dataclass(frozen=True)
class PluginInfo:
    """A plugin's answer to VERSION."""

    cni_version: str
    supported_versions: tuple[str, ...]


def _decode_version(output: ExecOutput, plugin: str) -> PluginInfo:
    raise_for_failure(output, plugin=plugin, command="VERSION")
    try:
        obj = gojson.loads(output.stdout)
    except ValueError:
        obj = None
    if not isinstance(obj, dict):
        text = output.stdout.decode("utf-8", "replace").strip()[:200]
        raise InvalidPluginOutput(ERR_DECODING_FAILURE, "decoding version info: not a JSON object",
                                  f"stdout: {text}", plugin=plugin, command="VERSION")
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
