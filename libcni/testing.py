"""A fake ``Exec`` for tests: records every run and answers as scripted.

Like httpx's ``MockTransport``: pass ``FakeExec()`` wherever an ``Exec`` goes
(``CNIConfig(exec=...)``, ``PodNetwork(exec=...)``, a meta plugin's delegate runner),
script answers per (plugin, command), then look at ``calls``. Unscripted, an ADD answers
``default_result`` (a pass-through plugin, or one interface and 10.0.0.2/24), VERSION
every spec version, anything else success with no output.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from ipaddress import ip_interface
from typing import Any

from cni.errors import PluginNotFound
from cni.invoke import Exec, ExecOutput
from cni.result import Interface, IPConfig, Result
from cni.version import SUPPORTED_VERSIONS

from .conf import NetworkConfigList, conflist_from_bytes

__all__ = ["Call", "Script", "FakeExec", "default_result", "conflist", "BIN_DIR"]

BIN_DIR = "/fake/bin"


@dataclass
class Call:
    """One plugin run as the fake saw it."""

    plugin: str
    path: str
    command: str
    env: dict[str, str]
    stdin_bytes: bytes
    timeout: float | None

    @property
    def stdin(self) -> dict[str, Any]:
        return json.loads(self.stdin_bytes)

    @property
    def cni_env(self) -> dict[str, str]:
        return {k: v for k, v in self.env.items() if k.startswith("CNI_")}


Script = ExecOutput | BaseException | Callable[[Call], ExecOutput]


def default_result(call: Call) -> dict[str, Any]:
    """What an unscripted ADD answers: the prevResult (a pass-through plugin), or a
    result with one sandbox interface and one address, in the config's version."""
    conf = call.stdin
    if "prevResult" in conf:
        return conf["prevResult"]
    version = conf.get("cniVersion") or "0.1.0"
    result = Result(version,
                        interfaces=(Interface(call.env["CNI_IFNAME"], "0a:58:0a:00:00:02",
                                                  call.env["CNI_NETNS"]),),
                        ips=(IPConfig(ip_interface("10.0.0.2/24"), interface=0),))
    return result.to_dict(version)


class FakeExec(Exec):
    """Records (plugin, path, command, env, stdin) per run; answers from ``scripts``
    keyed by (plugin, command), else ADD -> ``default_result`` and anything else ->
    success with empty stdout. Plugins not in ``available`` (when set) are not found."""

    def __init__(self, available: Sequence[str] | None = None) -> None:
        self.calls: list[Call] = []
        self.scripts: dict[tuple[str, str], Script] = {}
        self.available = set(available) if available is not None else None

    # -- scripting --
    def script(self, plugin: str, command: str, *, result: Mapping[str, Any] | None = None,
               error: tuple[int, str, str] | None = None, stdout: bytes | None = None,
               stderr: bytes = b"", returncode: int | None = None,
               raises: BaseException | None = None) -> None:
        if raises is not None:
            self.scripts[(plugin, command)] = raises
            return
        if result is not None:
            out = json.dumps(result).encode()
        elif error is not None:
            code, msg, details = error
            out = json.dumps({"code": code, "msg": msg, "details": details}).encode()
        else:
            out = stdout if stdout is not None else b""
        rc = returncode if returncode is not None else (1 if error is not None else 0)
        self.scripts[(plugin, command)] = ExecOutput(out, stderr, rc)

    # -- cni.Exec --
    def find_plugin(self, name: str, bin_dirs: Sequence[str]) -> str:
        if self.available is not None and name not in self.available:
            raise PluginNotFound(name, list(bin_dirs))
        return os.path.join(bin_dirs[0] if bin_dirs else BIN_DIR, name)

    def run(self, plugin_path: str, stdin: bytes, env: Mapping[str, str],
            timeout: float | None) -> ExecOutput:
        plugin = os.path.basename(plugin_path)
        call = Call(plugin, plugin_path, env.get("CNI_COMMAND", ""), dict(env), stdin, timeout)
        self.calls.append(call)
        script = self.scripts.get((plugin, call.command))
        if isinstance(script, BaseException):
            raise script
        if callable(script):
            return script(call)
        if script is not None:
            return script
        if call.command == "ADD":
            return ExecOutput(json.dumps(default_result(call)).encode())
        if call.command == "VERSION":
            return ExecOutput(json.dumps({"cniVersion": "1.1.0",
                                              "supportedVersions": list(SUPPORTED_VERSIONS)}
                                             ).encode())
        return ExecOutput(b"")

    # -- queries --
    def commands(self) -> list[tuple[str, str]]:
        return [(c.plugin, c.command) for c in self.calls]

    def of(self, command: str) -> list[Call]:
        return [c for c in self.calls if c.command == command]


def conflist(version: str = "1.0.0", plugins: Sequence[Mapping[str, Any]] | None = None,
             name: str = "testnet", **extra: Any) -> NetworkConfigList:
    """A parsed conflist built from Python values."""
    obj: dict[str, Any] = {"cniVersion": version, "name": name}
    obj.update(extra)
    obj["plugins"] = list(plugins) if plugins is not None else [
        {"type": "bridge", "bridge": "cni0", "ipam": {"type": "host-local", "subnet": "10.0.0.0/24"}},
        {"type": "portmap", "capabilities": {"portMappings": True}},
    ]
    return conflist_from_bytes(json.dumps(obj, indent=2).encode(), source="test")
