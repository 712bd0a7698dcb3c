"""Running a network configuration list: ADD, DEL, CHECK, STATUS, GC, and the cache.

Behaves like libcni's ``CNIConfig`` (``libcni/api.go``, which containerd uses), so
each plugin gets: its own object from the file + the list's ``name`` and
``cniVersion`` + ``prevResult`` + ``runtimeConfig`` with only the capabilities it
declares (replacing a ``runtimeConfig`` in the file, as libcni does), encoded as Go
marshals a map (``gojson``). ADD runs in order threading ``prevResult`` and caches
the last result; DEL runs in reverse with the cached result (spec >= 0.4.0); CHECK
(>= 0.4.0) runs in order with it; STATUS and GC (>= 1.1.0) get only the config, GC
plus ``cni.dev/valid-attachments``.

Deliberate differences, kinder than libcni and invisible to spec-following plugins:
DEL is best effort (every plugin runs, the first error is raised with the others as
notes, the cache entry goes only when all succeeded, at every version); DEL prefers
the cached configuration, ``CNI_ARGS`` and capability args (as CRI-O's ocicni), so
a conf dir edited while the pod ran still tears down what ADD set up; ``prevResult``
on ADD is converted to the list's version (libcni forwards the previous plugin's
version, the same for plugins that follow the spec). Capability args are passed as
given: dropping port mappings without a host port is the runtime's job (containerd's
``toCNIPortMappings``; ours is ``cri_shim.podnet.capability_args``).

Locking: no mutable state besides the cache files. The spec forbids concurrent
operations on one (network, container, ifname); callers serialize them (a lock per
sandbox) and keep GC from running concurrently with ADD/DEL on the same network.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cni import gojson
from cni.errors import (ERR_DECODING_FAILURE, ERR_INCOMPATIBLE_VERSION, ERR_INVALID_ENV,
                        ERR_INVALID_NETWORK_CONFIG, ERR_IO_FAILURE, ERR_UNKNOWN_CONTAINER,
                        CNIError, CommandNotSupported, ConfigError, DeadlineExceeded,
                        ExecTimeout)
from cni.invoke import Exec, RawExec, build_env
from cni.result import Result, parse_result
from cni.version import command_supported, prev_result_on_del

from .cache import CacheEntry, ResultCache
from .conf import NetworkConfigList, PluginConf, conflist_from_bytes
from .plugins import PluginInfo, exec_plugin, get_version_info

__all__ = ["RuntimeConf", "GCAttachment", "CNIConfig", "validate_attachment"]

log = logging.getLogger(__name__)

_VALID_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.\-]*\Z")


@dataclass(frozen=True)
class RuntimeConf:
    """One attachment's arguments: ``CNI_CONTAINERID``, ``CNI_NETNS``, ``CNI_IFNAME``,
    ``CNI_ARGS`` pairs, and capability args offered to plugins via ``runtimeConfig``."""

    container_id: str
    netns: str
    ifname: str
    args: tuple[tuple[str, str], ...] = ()
    capability_args: Mapping[str, Any] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class GCAttachment:
    """An attachment that is still in use, for GC."""

    container_id: str
    ifname: str


def validate_attachment(network: str, container_id: str, ifname: str) -> None:
    """libcni's checks before ADD (``pkg/utils``). Raises ``CNIError`` with code 3, 4
    or 7."""
    if not container_id:
        raise CNIError(ERR_UNKNOWN_CONTAINER, "missing containerID")
    if not _VALID_NAME.match(container_id):
        raise CNIError(ERR_INVALID_ENV, "invalid characters in containerID", container_id)
    if not network:
        raise CNIError(ERR_INVALID_NETWORK_CONFIG, "missing network name")
    if not _VALID_NAME.match(network):
        raise CNIError(ERR_INVALID_NETWORK_CONFIG, "invalid characters found in network name",
                       network)
    if not ifname:
        raise CNIError(ERR_INVALID_ENV, "interface name is empty")
    if len(ifname.encode()) > 15:
        raise CNIError(ERR_INVALID_ENV, "interface name is too long",
                       "interface name should be less than 16 characters")
    if ifname in (".", ".."):
        raise CNIError(ERR_INVALID_ENV, "interface name is . or ..")
    if any(c in "/:" or c.isspace() for c in ifname):
        raise CNIError(ERR_INVALID_ENV, "interface name contains / or : or whitespace characters")


def _normalize(rt: RuntimeConf) -> RuntimeConf:
    return dataclasses.replace(rt, args=tuple((str(k), str(v)) for k, v in rt.args))


def _stdin(net: NetworkConfigList, plugin: PluginConf, *,
           prev_result: Result | None = None,
           rt: RuntimeConf | None = None, extra: Mapping[str, Any] | None = None) -> bytes:
    conf: dict[str, Any] = dict(plugin.raw)
    conf["name"] = net.name
    conf["cniVersion"] = net.cni_version
    runtime_config: dict[str, Any] = {}
    if rt is not None:
        runtime_config = {cap: rt.capability_args[cap] for cap in sorted(plugin.capabilities)
                          if rt.capability_args.get(cap) is not None}
        if runtime_config:
            conf["runtimeConfig"] = runtime_config
    if prev_result is not None:
        # libcni injects the typed result (buildOneConfig): a 0.x result marshals in its
        # structs' field order, unless runtimeConfig is injected too, which re-parses
        # the whole config into a map (injectRuntimeConfig) and so sorts it.
        conf["prevResult"] = prev_result.to_dict() if runtime_config else prev_result.to_go()
    conf.update(extra or {})
    # libcni marshals a Go map: compact, keys sorted at every level.
    return gojson.marshal(conf)


def _raise_all(errors: Sequence[CNIError]) -> None:
    if not errors:
        return
    first = errors[0]
    for other in errors[1:]:
        first.add_note(f"also: {other}")
    raise first


class CNIConfig:
    """Runs network configuration lists with the plugins found in *bin_dirs*.

    *exec* is the plugin runner (``RawExec`` by default; tests pass a fake),
    *cache_dir* holds ``results/`` (libcni's default ``/var/lib/cni``), *timeout*
    bounds each plugin run in seconds (None: no limit).
    """

    def __init__(self, bin_dirs: Sequence[str], exec: Exec | None = None,  # noqa: A002
                 cache_dir: str = "/var/lib/cni", timeout: float | None = None) -> None:
        self.bin_dirs = tuple(bin_dirs)
        self.exec: Exec = exec if exec is not None else RawExec()
        self.cache = ResultCache(cache_dir)
        self.timeout = timeout

    # --- running one plugin ---------------------------------------------------------

    def _run(self, net: NetworkConfigList, plugin: PluginConf, command: str,
             rt: RuntimeConf | None, stdin: bytes, deadline: float | None = None
             ) -> Result | None:
        try:
            path = self.exec.find_plugin(plugin.type, self.bin_dirs)
        except CNIError as exc:
            raise exc.with_context(plugin=plugin.type, command=command)
        env = build_env(command, rt.container_id if rt else "", rt.netns if rt else "",
                        rt.ifname if rt else "", rt.args if rt else (), self.bin_dirs)
        # libcni runs every exec under the caller's context: the exec gets what is left
        # of the caller's deadline when that is less than the per-exec timeout.
        timeout, by_deadline = self.timeout, False
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise DeadlineExceeded(plugin.type, command, None)
            if timeout is None or left < timeout:
                timeout, by_deadline = left, True
        try:
            return exec_plugin(self.exec, plugin=plugin.type, plugin_path=path, command=command,
                               stdin=stdin, env=env, timeout=timeout,
                               cni_version=net.cni_version)
        except ExecTimeout as exc:
            if by_deadline and not isinstance(exc, DeadlineExceeded):
                raise DeadlineExceeded(plugin.type, command, round(timeout or 0.0, 3)) from None
            raise

    # --- ADD ------------------------------------------------------------------------

    def add_network_list(self, net: NetworkConfigList, rt: RuntimeConf, *,
                         deadline: float | None = None) -> Result:
        """ADD every plugin in order, threading ``prevResult``; cache and return the
        last result. On failure nothing is undone (the caller runs DEL), as libcni.

        *deadline* (a ``time.monotonic()`` value) bounds the whole chain: a plugin
        still running at it is killed and ``DeadlineExceeded`` raised."""
        validate_attachment(net.name, rt.container_id, rt.ifname)
        rt = _normalize(rt)
        result: Result | None = None
        for plugin in net.plugins:
            prev = _in_version(result, net.cni_version) if result is not None else None
            result = self._run(net, plugin, "ADD", rt, _stdin(net, plugin, prev_result=prev, rt=rt),
                               deadline)
        if result is None:
            raise ConfigError("no plugins in list", net.source)
        entry = CacheEntry(container_id=rt.container_id, network=net.name, ifname=rt.ifname,
                           config=net.raw, netns=rt.netns, cni_args=rt.args,
                           capability_args=rt.capability_args, result=result.to_dict())
        try:
            self.cache.write(entry)
        except OSError as exc:
            raise CNIError(ERR_IO_FAILURE, f'failed to set network "{net.name}" cached result',
                           str(exc)) from exc
        return result

    # --- DEL ------------------------------------------------------------------------

    def del_network_list(self, net: NetworkConfigList, rt: RuntimeConf, *,
                         deadline: float | None = None,
                         ignore: Callable[[CNIError], bool] | None = None) -> None:
        """DEL every plugin in reverse order, best effort, then drop the cache entry.

        Uses the cached configuration and arguments when the cache has them (see the
        module docstring); a missing cache or config is not an error. Raises the first
        plugin error after all plugins ran. An error for which *ignore* is true counts
        as success (the caller's policy: go-cni's "already gone"); it is logged.
        *deadline* is as for ``add_network_list``."""
        rt = _normalize(rt)
        entry = self._read_entry(net.name, rt)
        if entry is not None and entry.config:
            net = self._cached_net(net, entry)
            rt = dataclasses.replace(rt, args=entry.cni_args or rt.args,
                                     capability_args=dict(entry.capability_args))
        prev: Result | None = None
        if entry is not None and entry.result and prev_result_on_del(net.cni_version):
            try:
                prev = _in_version(_parse_cached(entry.result, net.cni_version), net.cni_version)
            except CNIError as exc:
                # libcni also deletes the entry here; we keep it (and its config) until
                # a DEL succeeds, so a retry still has the cached configuration.
                log.warning("network %s: DEL without the unusable cached result: %s", net.name, exc)
        errors: list[CNIError] = []
        for plugin in reversed(net.plugins):
            try:
                self._run(net, plugin, "DEL", rt, _stdin(net, plugin, prev_result=prev, rt=rt),
                          deadline)
            except CNIError as exc:
                if ignore is not None and ignore(exc):
                    log.info("network %s: %s; taken as already torn down", net.name, exc)
                    continue
                errors.append(exc)
        if not errors and rt.container_id and rt.ifname:
            try:
                self.cache.delete(net.name, rt.container_id, rt.ifname)
            except OSError as exc:
                log.warning("network %s: cannot remove cache entry: %s", net.name, exc)
        _raise_all(errors)

    def _read_entry(self, network: str, rt: RuntimeConf) -> CacheEntry | None:
        try:
            return self.cache.read(network, rt.container_id, rt.ifname)
        except CNIError:
            return None  # no container ID / ifname: nothing can be cached
        except (OSError, ValueError) as exc:
            log.warning("network %s: unreadable cache entry for %s/%s: %s",
                        network, rt.container_id, rt.ifname, exc)
            return None

    def _cached_net(self, net: NetworkConfigList, entry: CacheEntry) -> NetworkConfigList:
        if entry.config == net.raw:
            return net  # same bytes; keep plugins loaded from <dir>/<name>/ too
        try:
            cached = conflist_from_bytes(entry.config or b"", source=f"cached config of {net.name}")
        except ConfigError as exc:
            log.warning("network %s: cached config unusable, using current: %s", net.name, exc)
            return net
        if cached.name != net.name:
            return net
        log.info("network %s: configuration changed since ADD; tearing down with the cached one",
                 net.name)
        return cached

    # --- cache queries --------------------------------------------------------------

    def get_cached_result(self, net: NetworkConfigList, rt: RuntimeConf) -> Result | None:
        """The result cached by the last ADD of this attachment, converted to the
        list's cniVersion; None if nothing is cached. Raises ``CNIError`` for a
        cache entry that cannot be decoded or converted."""
        try:
            entry = self.cache.read(net.name, rt.container_id, rt.ifname)
        except (OSError, ValueError) as exc:
            raise CNIError(ERR_IO_FAILURE, f'failed to read network "{net.name}" cached result',
                           str(exc)) from exc
        if entry is None or not entry.result:
            return None
        return _parse_cached(entry.result, net.cni_version)

    def get_cached_attachments(self, container_id: str = "") -> list[CacheEntry]:
        """Every cached attachment (optionally of one container), by file name.
        Raises ``CNIError`` if the cache directory cannot be read."""
        try:
            return self.cache.list(container_id)
        except OSError as exc:
            raise CNIError(ERR_IO_FAILURE, "cannot list cached attachments", str(exc)) from exc

    # --- CHECK / STATUS / GC --------------------------------------------------------

    def check_network_list(self, net: NetworkConfigList, rt: RuntimeConf) -> None:
        """CHECK every plugin in order with the cached result; stops at the first
        error. Raises ``CommandNotSupported`` before spec 0.4.0; does nothing if the
        list sets ``disableCheck``."""
        if not command_supported("CHECK", net.cni_version):
            raise CommandNotSupported("CHECK", net.cni_version)
        if net.disable_check:
            return
        rt = _normalize(rt)
        cached = self.get_cached_result(net, rt)
        prev = _in_version(cached, net.cni_version) if cached is not None else None
        for plugin in net.plugins:
            self._run(net, plugin, "CHECK", rt, _stdin(net, plugin, prev_result=prev, rt=rt))

    def get_status_network_list(self, net: NetworkConfigList) -> None:
        """STATUS every plugin in order; raises the first failure (``PluginError``
        with code 50/51 means not ready). Before spec 1.1.0 there is no STATUS and
        this returns at once, as libcni."""
        if not command_supported("STATUS", net.cni_version):
            return
        for plugin in net.plugins:
            self._run(net, plugin, "STATUS", None, _stdin(net, plugin))

    def gc_network_list(self, net: NetworkConfigList,
                        valid_attachments: Sequence[GCAttachment]) -> None:
        """Remove what is not in *valid_attachments*: DEL every cached attachment of
        this network that is not listed, then (spec >= 1.1.0) GC every plugin. All
        steps run; the first error is raised at the end. Nothing happens if the list
        sets ``disableGC``."""
        if net.disable_gc:
            return
        valid = {(a.container_id, a.ifname) for a in valid_attachments}
        errors: list[CNIError] = []
        try:
            entries = self.get_cached_attachments()
        except CNIError as exc:
            errors.append(exc)
            entries = []
        for entry in entries:
            if entry.network != net.name or (entry.container_id, entry.ifname) in valid:
                continue
            rt = RuntimeConf(entry.container_id, entry.netns, entry.ifname, entry.cni_args,
                             dict(entry.capability_args))
            try:
                self.del_network_list(net, rt)
            except CNIError as exc:
                exc.add_note(f"while deleting stale attachment {entry.container_id} {entry.ifname}")
                errors.append(exc)
        if command_supported("GC", net.cni_version):
            listed = [{"containerID": a.container_id, "ifname": a.ifname}
                      for a in valid_attachments]
            # libcni sends both keys: the spec first said cni.dev/attachments (cni#1101).
            extra = {"cni.dev/valid-attachments": listed, "cni.dev/attachments": listed}
            for plugin in net.plugins:
                try:
                    self._run(net, plugin, "GC", None, _stdin(net, plugin, extra=extra))
                except CNIError as exc:
                    errors.append(exc)
        _raise_all(errors)

    # --- validation -----------------------------------------------------------------

    def get_version_info(self, plugin_type: str) -> PluginInfo:
        """Run VERSION on the plugin of that type."""
        path = self.exec.find_plugin(plugin_type, self.bin_dirs)
        return get_version_info(self.exec, path, timeout=self.timeout)

    def validate_network_list(self, net: NetworkConfigList) -> None:
        """Check that every plugin binary exists and supports the list's cniVersion
        (libcni ``ValidateNetworkList``). Raises the first problem, others as notes."""
        version = net.cni_version or "0.1.0"
        errors: list[CNIError] = []
        for plugin in net.plugins:
            try:
                info = self.get_version_info(plugin.type)
            except CNIError as exc:
                errors.append(exc.with_context(plugin=plugin.type, command="VERSION"))
                continue
            if version not in info.supported_versions:
                errors.append(CNIError(
                    ERR_INCOMPATIBLE_VERSION,
                    f'plugin {plugin.type} does not support config version "{version}"',
                    f"supported: {', '.join(info.supported_versions)}", plugin=plugin.type))
        _raise_all(errors)


def _in_version(result: Result, version: str) -> Result:
    """*result* converted to *version*; as it is if it cannot convert."""
    if not version:
        return result
    try:
        return result.convert(version)
    except ValueError:
        return result


def _parse_cached(raw: Mapping[str, Any], version: str) -> Result:
    try:
        result = parse_result(raw)
    except ValueError as exc:
        raise CNIError(ERR_DECODING_FAILURE, "cannot decode the cached result", str(exc)) from exc
    try:
        return result.convert(version) if version else result
    except ValueError as exc:
        raise CNIError(ERR_INCOMPATIBLE_VERSION,
                       f'failed to convert cached result to config version "{version}"',
                       str(exc)) from exc
