"""Network configuration: parse conflists and confs, load a conf dir. Never execs.

Follows libcni ``libcni/conf.go`` (``NetworkConfFromBytes``, ``ConfListFromConf``,
``ConfFiles``) and containerd's ``go-cni`` loader, with one deliberate difference: an
invalid file in the conf dir is skipped with a reason (as CRI-O does) instead of
failing the whole load (as containerd does). Validation is also a little stricter
than libcni's parse step, so that a file every ADD would fail on (no ``name``, bad
characters in it, a ``cniVersion`` we cannot speak) is reported at load time.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cni import gojson
from cni.errors import ConfigError
from cni.version import SUPPORTED_VERSIONS, is_supported, negotiate_version

__all__ = [
    "PluginConf",
    "NetworkConfigList",
    "SkippedFile",
    "ConfDirLoad",
    "conflist_from_bytes",
    "conf_from_bytes",
    "conflist_from_file",
    "load_conf_dir",
    "CONF_EXTENSIONS",
]

log = logging.getLogger(__name__)

# libcni ConfFiles(dir, [".conf", ".conflist", ".json"]) as go-cni calls it.
CONF_EXTENSIONS = (".conf", ".conflist", ".json")

# libcni pkg/utils: network names (and container IDs) must match this.
_VALID_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.\-]*\Z")


@dataclass(frozen=True)
class PluginConf:
    """One plugin of a list: its ``type``, its own JSON object exactly as in the file
    (``raw``, not to be mutated), and the capabilities it declares true."""

    type: str
    raw: Mapping[str, Any] = field(hash=False)
    capabilities: frozenset[str] = frozenset()


@dataclass(frozen=True)
class NetworkConfigList:
    """A network: a named, versioned chain of plugins.

    ``cni_version`` is the negotiated version (``cniVersions`` considered);
    ``raw`` is the file's bytes exactly (for a single ``.conf``, the conflist libcni
    synthesizes from it, which is also what goes into the result cache);
    ``source`` says where it came from, for messages.
    """

    name: str
    cni_version: str
    cni_versions: tuple[str, ...]
    disable_check: bool
    disable_gc: bool
    plugins: tuple[PluginConf, ...]
    raw: bytes
    source: str | None = None


@dataclass(frozen=True)
class SkippedFile:
    """A conf dir file that was not loaded, and why."""

    path: str
    reason: str


@dataclass(frozen=True)
class ConfDirLoad:
    """What ``load_conf_dir`` found: the networks in file-name order, and the skips."""

    networks: tuple[NetworkConfigList, ...]
    skipped: tuple[SkippedFile, ...]


def _decode(data: bytes, source: str | None) -> Any:
    try:
        return gojson.loads(data)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}",
                          source) from None
    except ValueError as exc:
        raise ConfigError(f"invalid JSON: {exc}", source) from None


def _read_bool(obj: Mapping[str, Any], key: str, source: str | None) -> bool:
    # libcni accepts a bool or the strings "true"/"false" in any case.
    value = obj.get(key, False)
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ConfigError(f'"{key}" must be a boolean, not {json.dumps(value)}', source)


def _check_name(obj: Mapping[str, Any], source: str | None) -> str:
    if "name" not in obj:
        raise ConfigError('missing "name"', source)
    name = obj["name"]
    if not isinstance(name, str):
        raise ConfigError('"name" must be a string', source)
    if not name:
        raise ConfigError('"name" is empty', source)
    if not _VALID_NAME.match(name):
        raise ConfigError(f'invalid characters in network name "{name}" '
                          "(allowed: letters, digits, and _ . - after the first)", source)
    return name


def _plugin(obj: Any, where: str, source: str | None) -> PluginConf:
    # The fields libcni decodes into types.NetConf must have the right JSON types.
    if not isinstance(obj, dict):
        raise ConfigError(f"{where} is not a JSON object", source)
    ptype = obj.get("type")
    if ptype is None or ptype == "":
        raise ConfigError(f'{where}: missing "type"', source)
    if not isinstance(ptype, str):
        raise ConfigError(f'{where}: "type" must be a string', source)
    if "/" in ptype or ptype in (".", ".."):
        raise ConfigError(f'{where}: invalid plugin type "{ptype}"', source)
    caps = obj.get("capabilities", {})
    if caps is None:
        caps = {}
    if not isinstance(caps, dict) or not all(isinstance(v, bool) for v in caps.values()):
        raise ConfigError(f'{where}: "capabilities" must map names to true/false', source)
    for key in ("ipam", "dns"):
        if obj.get(key) is not None and not isinstance(obj[key], dict):
            raise ConfigError(f'{where}: "{key}" must be an object', source)
    for key in ("name", "cniVersion"):
        if obj.get(key) is not None and not isinstance(obj[key], str):
            raise ConfigError(f'{where}: "{key}" must be a string', source)
    return PluginConf(type=ptype, raw=obj,
                      capabilities=frozenset(k for k, v in caps.items() if v))


def _version(obj: Mapping[str, Any], source: str | None) -> tuple[str, tuple[str, ...]]:
    cni_version = obj.get("cniVersion", "")
    if cni_version is None:
        cni_version = ""
    if not isinstance(cni_version, str):
        raise ConfigError('"cniVersion" must be a string', source)
    raw_versions = obj.get("cniVersions")
    versions: tuple[str, ...] = ()
    if raw_versions is not None:
        if not isinstance(raw_versions, list) or not all(isinstance(v, str) for v in raw_versions):
            raise ConfigError('"cniVersions" must be a list of strings', source)
        versions = tuple(raw_versions)
        try:
            cni_version = negotiate_version(cni_version, versions)
        except ValueError as exc:
            raise ConfigError(str(exc), source) from None
    if not is_supported(cni_version):
        raise ConfigError(f'unsupported cniVersion "{cni_version}" '
                          f"(supported: {', '.join(SUPPORTED_VERSIONS)})", source)
    return cni_version, versions


def _parse_list(data: bytes, source: str | None, *, allow_no_plugins: bool
                ) -> tuple[NetworkConfigList, bool]:
    obj = _decode(data, source)
    if not isinstance(obj, dict):
        raise ConfigError("not a JSON object", source)
    name = _check_name(obj, source)
    cni_version, versions = _version(obj, source)
    disable_check = _read_bool(obj, "disableCheck", source)
    disable_gc = _read_bool(obj, "disableGC", source)
    inlined_only = _read_bool(obj, "loadOnlyInlinedPlugins", source)
    plugins: tuple[PluginConf, ...] = ()
    if "plugins" not in obj:
        if inlined_only or not allow_no_plugins:
            raise ConfigError('no "plugins" list', source)
    else:
        raw_plugins = obj["plugins"]
        if not isinstance(raw_plugins, list):
            raise ConfigError('"plugins" must be a list', source)
        if not raw_plugins:
            raise ConfigError("no plugins in list", source)
        plugins = tuple(_plugin(p, f"plugin {i}", source) for i, p in enumerate(raw_plugins))
    net = NetworkConfigList(name=name, cni_version=cni_version, plugins=plugins,
                            raw=bytes(data), cni_versions=versions,
                            disable_check=disable_check, disable_gc=disable_gc,
                            source=source)
    return net, inlined_only


def conflist_from_bytes(data: bytes, source: str | None = None) -> NetworkConfigList:
    """Parse a network configuration list (a ``.conflist``). ``source`` names the
    file in error messages. Raises ``ConfigError``."""
    return _parse_list(data, source, allow_no_plugins=False)[0]


def conf_from_bytes(data: bytes, source: str | None = None) -> NetworkConfigList:
    """Parse a single-plugin network configuration (a ``.conf``) and wrap it in a
    one-plugin list, as libcni's ``ConfListFromConf`` does. Raises ``ConfigError``."""
    obj = _decode(data, source)
    if not isinstance(obj, dict):
        raise ConfigError("not a JSON object", source)
    if not obj.get("type") and "plugins" in obj:
        # containerd: "network type not found" -- a conflist in a .conf file.
        raise ConfigError('has "plugins" but no "type": a network configuration list '
                          "must be in a .conflist file", source)
    plugin = _plugin(obj, "configuration", source)
    name = _check_name(obj, source)
    cni_version = obj.get("cniVersion") or ""
    # libcni re-marshals {"cniVersion", "name", "plugins": [conf]} and parses that.
    synthesized = gojson.marshal({"cniVersion": cni_version, "name": name,
                                  "plugins": [plugin.raw]})
    return conflist_from_bytes(synthesized, source)


def conflist_from_file(path: str) -> NetworkConfigList:
    """Load a ``.conflist`` file. Unless it sets ``loadOnlyInlinedPlugins``, plugin
    configs in ``<dir>/<network name>/*.conf`` are appended after the inline ones (libcni
    ``NetworkConfFromFile``; those are not part of ``raw``). Raises ``ConfigError``."""
    data = _read(path)
    net, inlined_only = _parse_list(data, path, allow_no_plugins=True)
    if inlined_only:
        return net
    extra_dir = os.path.join(os.path.dirname(path), net.name)
    extra: list[PluginConf] = []
    for extra_path in _conf_files(extra_dir, (".conf",)):
        obj = _decode(_read(extra_path), extra_path)
        extra.append(_plugin(obj, "plugin configuration", extra_path))
    if not net.plugins and not extra:
        raise ConfigError("no plugin configs found", path)
    if not extra:
        return net
    return dataclasses.replace(net, plugins=net.plugins + tuple(extra))


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror or exc}", path) from None


def _conf_files(conf_dir: str, extensions: tuple[str, ...]) -> list[str]:
    """Files (not directories) in *conf_dir* with one of *extensions*, sorted by
    name; a missing directory has none (libcni ``ConfFiles``)."""
    try:
        entries = list(os.scandir(conf_dir))
    except FileNotFoundError:
        return []
    except NotADirectoryError:
        return []
    except OSError as exc:
        raise ConfigError(f"cannot read directory: {exc.strerror or exc}", conf_dir) from None
    files = [e.path for e in entries
             if not e.is_dir(follow_symlinks=False) and os.path.splitext(e.name)[1] in extensions]
    return sorted(files)


def load_conf_dir(conf_dir: str, max_conf_num: int = 1) -> ConfDirLoad:
    """Load the networks in *conf_dir*: ``*.conf``, ``*.conflist`` and ``*.json`` in
    file-name order, the first *max_conf_num* valid ones (0 = all). Invalid files are
    skipped and reported in ``skipped``; a missing directory gives no networks.
    Raises ``ConfigError`` only if the directory exists but cannot be listed."""
    networks: list[NetworkConfigList] = []
    skipped: list[SkippedFile] = []
    for path in _conf_files(conf_dir, CONF_EXTENSIONS):
        if max_conf_num > 0 and len(networks) >= max_conf_num:
            break
        try:
            if path.endswith(".conflist"):
                net = conflist_from_file(path)
            else:
                net = conf_from_bytes(_read(path), path)
        except ConfigError as exc:
            reason = exc.msg + (f": {exc.details}" if exc.details else "")
            if exc.path and exc.path != path:
                reason = f"{exc.path}: {reason}"
            log.warning("skipping CNI config %s: %s", path, reason)
            skipped.append(SkippedFile(path, reason))
            continue
        networks.append(net)
    return ConfDirLoad(tuple(networks), tuple(skipped))
