"""The result cache: ``<cache_dir>/results/<network>-<containerID>-<ifname>``.

Same files as libcni (``libcni/api.go`` ``cachedInfo``), so a node can move between
this runtime and containerd/CRI-O without losing teardown data. One JSON object with
fields in this order (a Go struct), nested objects with sorted keys (Go maps)::

    {"kind":"cniCacheV1","containerId":..,"config":<base64 of the conflist bytes>,
     "ifName":..,"networkName":..,"netns":..,"cniArgs":[[k,v],..],
     "capabilityArgs":{..},"result":{..}}

``netns``, ``cniArgs``, ``capabilityArgs`` and ``result`` are omitted when empty
(Go ``omitempty``). Files are written atomically (temp file + ``os.replace``), mode
0600, in a 0700 directory.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from atomicfile import write_atomic
from cni import gojson
from cni.errors import ERR_INVALID_ENV, CNIError

__all__ = ["CACHE_KIND", "CacheEntry", "ResultCache"]

CACHE_KIND = "cniCacheV1"


@dataclass(frozen=True)
class CacheEntry:
    """One cached attachment. ``config`` is None for a legacy file (a bare result,
    written by libcni before ``cniCacheV1``)."""

    container_id: str
    network: str
    ifname: str
    config: bytes | None
    netns: str = ""
    cni_args: tuple[tuple[str, str], ...] = ()
    capability_args: Mapping[str, Any] = field(default_factory=dict, hash=False)
    result: Mapping[str, Any] | None = field(default=None, hash=False)


class ResultCache:
    """Reads and writes cache files under ``<cache_dir>/results``. Holds no state of
    its own; callers serialize operations on the same attachment (the CNI spec forbids
    concurrent operations on one container)."""

    def __init__(self, cache_dir: str) -> None:
        self.cache_dir = cache_dir
        self.results_dir = os.path.join(cache_dir, "results")

    def path(self, network: str, container_id: str, ifname: str) -> str:
        """The file for one attachment. Raises ``CNIError`` if a part is empty."""
        if not network or not container_id or not ifname:
            raise CNIError(ERR_INVALID_ENV,
                           f'cache file path requires network name ("{network}"), container '
                           f'ID ("{container_id}"), and interface name ("{ifname}")')
        return os.path.join(self.results_dir, f"{network}-{container_id}-{ifname}")

    def write(self, entry: CacheEntry) -> str:
        """Write *entry* atomically; returns the path. Raises ``OSError``."""
        path = self.path(entry.network, entry.container_id, entry.ifname)
        fields: list[tuple[str, Any]] = [
            ("kind", CACHE_KIND),
            ("containerId", entry.container_id),
            ("config", base64.b64encode(entry.config or b"").decode("ascii")),
            ("ifName", entry.ifname),
            ("networkName", entry.network),
        ]
        if entry.netns:
            fields.append(("netns", entry.netns))
        if entry.cni_args:
            fields.append(("cniArgs", [[k, v] for k, v in entry.cni_args]))
        if entry.capability_args:
            fields.append(("capabilityArgs", dict(entry.capability_args)))
        if entry.result:
            fields.append(("result", dict(entry.result)))
        data = gojson.marshal_fields(fields)
        os.makedirs(self.results_dir, mode=0o700, exist_ok=True)
        # No fsync, as libcni (os.WriteFile): the entry must survive the runtime
        # crashing, not the machine (a reboot ends every netns anyway), and an
        # fsync here waits for the journal: up to 4 ms per network on a busy disk.
        write_atomic(path, data, mode=0o600)
        return path

    def read(self, network: str, container_id: str, ifname: str) -> CacheEntry | None:
        """The entry for one attachment; None if there is no file. Raises
        ``ValueError`` for a file that cannot be decoded."""
        path = self.path(network, container_id, ifname)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return None
        return _decode(data, network, container_id, ifname)

    def delete(self, network: str, container_id: str, ifname: str) -> None:
        """Remove one attachment's file; a missing file is fine."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path(network, container_id, ifname))

    def list(self, container_id: str = "") -> list[CacheEntry]:
        """Every readable ``cniCacheV1`` entry, by file name, optionally only those of
        *container_id* (libcni ``GetCachedAttachments``). Unreadable files are skipped."""
        try:
            names = sorted(os.listdir(self.results_dir))
        except FileNotFoundError:
            return []
        entries: list[CacheEntry] = []
        for name in names:
            if container_id and f"-{container_id}-" not in name:
                continue
            try:
                with open(os.path.join(self.results_dir, name), "rb") as f:
                    entry = _decode(f.read(), "", "", "")
            except (OSError, ValueError):
                continue
            if entry.config is None or not entry.ifname or not entry.network:
                continue
            if container_id and entry.container_id != container_id:
                continue
            entries.append(entry)
        return entries


def _decode(data: bytes, network: str, container_id: str, ifname: str) -> CacheEntry:
    obj = gojson.loads(data)
    if not isinstance(obj, dict):
        raise ValueError("cache file is not a JSON object")
    if obj.get("kind") != CACHE_KIND:
        # libcni's getLegacyCachedResult: the file is the bare result.
        return CacheEntry(container_id, network, ifname, None, result=obj)
    try:
        config = base64.b64decode(obj.get("config") or "", validate=True)
    except (binascii.Error, TypeError) as exc:
        raise ValueError(f"cache config is not base64: {exc}") from None
    args = obj.get("cniArgs") or []
    if not isinstance(args, list) or not all(
            isinstance(a, list) and len(a) == 2 and all(isinstance(x, str) for x in a)
            for a in args):
        raise ValueError("cache cniArgs is not a list of [key, value] pairs")
    caps = obj.get("capabilityArgs") or {}
    result = obj.get("result")
    if not isinstance(caps, dict) or (result is not None and not isinstance(result, dict)):
        raise ValueError("cache capabilityArgs/result is not an object")
    strings = [obj.get(k, "") for k in ("containerId", "networkName", "ifName", "netns")]
    if not all(isinstance(s, str) for s in strings):
        raise ValueError("cache containerId/networkName/ifName/netns is not a string")
    return CacheEntry(container_id=strings[0], network=strings[1], ifname=strings[2],
                      config=config, netns=strings[3],
                      cni_args=tuple((k, v) for k, v in args),
                      capability_args=caps, result=result or None)
