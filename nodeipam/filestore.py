"""The file backend: ``FileRegistry`` keeps the network config and every subnet record
in one JSON document; ``FileLeaseStore`` is the lease policy over it.

The embedded default for the nodes of one machine (several node agents, one file),
shaped like the etcd layout so both backends store the same things::

    {"schema_version": 2,
     "revision": 3,
     "network": {"Network": "10.244.0.0/16", "SubnetLen": 24, "Backend": {"Type": "vxlan"}},
     "subnets": {"10.244.0.0-24": {"node": "node-a", "subnet": "10.244.0.0/24",
                                   "ipv6_subnet": null, "expires_at": null,
                                   "create_revision": 2, "mod_revision": 3,
                                   "attrs": {"PublicIP": "198.18.0.2", "PublicIPv6": null,
                                             "BackendType": "vxlan", "BackendData": {...}}}}}

``network`` is flannel's config document, the keys flannel's subnet keys and ``attrs``
flannel's lease value. ``revision`` counts every write; a record's revisions are etcd's
create/mod revisions. ``expires_at`` (seconds since the epoch) is data: expired records
stay until the policy deletes or replaces them.

Schema 1 (``"leases"`` keyed by node name, plus ``"last_allocated"``) is read and
migrated: each lease becomes a record under its subnet key, labelled with its node name,
the one in ``last_allocated`` (if any) the newest, so next-fit carries on after it. The
file is written as schema 2 on the next change; older binaries refuse schema 2.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from typing import Any

from atomicfile import write_atomic

from . import flanneljson
from .errors import NetworkConfigNotFound, StoreCorrupt, StoreUnavailable
from .lease import Lease, NetworkConfig
from .manager import LeaseManager
from .registry import Record, record_key

__all__ = ["SCHEMA_VERSION", "FileRegistry", "FileLeaseStore"]

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2


class FileRegistry:
    """A ``Registry`` in the file *path*, shared safely by several processes.

    Locking: every write holds an exclusive ``flock`` on ``<path>.lock`` for its whole
    read-compare-write (each call opens its own descriptor, so threads of one process
    exclude each other too); readers take no lock, as the file is only ever replaced
    whole (temp file + ``os.replace``, 0600, fsync'ed). ``watch_subnets`` polls the
    file's inode/mtime every *poll_interval* seconds and reads it only when it changed.
    """

    def __init__(self, path: str | os.PathLike[str], *, poll_interval: float = 0.1) -> None:
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self.poll_interval = poll_interval
        self._stat: tuple[int, ...] | None = None
        self._revision = 0

    def read_config(self) -> NetworkConfig:
        """The stored network config; ``NetworkConfigNotFound`` before one is set."""
        doc = self._read()
        if not doc.get("network"):
            raise NetworkConfigNotFound(f"{self.path}: no network config (set it first)")
        if not isinstance(doc["network"], dict):
            raise StoreCorrupt(str(self.path), "network config is not a JSON object")
        return flanneljson.config_from_dict(doc["network"])

    def write_config(self, config: NetworkConfig) -> None:
        """Store *config* as flannel's config object."""
        with self._locked() as doc:
            doc["network"] = flanneljson.config_to_dict(config)
            self._bump(doc)

    def list_subnets(self) -> tuple[int, list[Record]]:
        """The revision and every record, expired ones included."""
        doc = self._read()
        return doc["revision"], [self._record(key, entry) for key, entry in doc["subnets"].items()]

    def create_subnet(self, lease: Lease) -> Record | None:
        """Store *lease* under its key unless the key is taken."""
        key = record_key(lease.subnet, lease.ipv6_subnet)
        with self._locked() as doc:
            if key in doc["subnets"]:
                return None
            revision = self._bump(doc)
            doc["subnets"][key] = _entry(lease, revision, revision)
        return Record(lease=lease, create_revision=revision, mod_revision=revision)

    def update_subnet(self, lease: Lease, *, mod_revision: int) -> Record | None:
        """Replace the record under *lease*'s key if it is still at *mod_revision*."""
        key = record_key(lease.subnet, lease.ipv6_subnet)
        with self._locked() as doc:
            old = doc["subnets"].get(key)
            if old is None or old.get("mod_revision") != mod_revision:
                return None
            created, revision = old["create_revision"], self._bump(doc)
            doc["subnets"][key] = _entry(lease, created, revision)
        return Record(lease=lease, create_revision=created, mod_revision=revision)

    def delete_subnet(self, record: Record) -> bool:
        """Delete *record* if it is unchanged."""
        with self._locked() as doc:
            old = doc["subnets"].get(record.key)
            if old is None or old.get("mod_revision") != record.mod_revision:
                return False
            del doc["subnets"][record.key]
            self._bump(doc)
        return True

    def watch_subnets(self, revision: int, timeout: float) -> int:
        """The file's revision once it differs from *revision*, or after *timeout*."""
        deadline = time.monotonic() + timeout
        while True:
            stat = self._stat_signature()
            if stat != self._stat:
                self._revision = self._read()["revision"] if stat is not None else 0
                self._stat = stat
            remaining = deadline - time.monotonic()
            if self._revision != revision or remaining <= 0:
                return self._revision
            time.sleep(min(self.poll_interval, remaining))

    # -- private -------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        """The document under the lock; written back when the block changed its
        revision (a failed compare writes nothing)."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StoreUnavailable(f"{self.lock_path}: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            doc = self._read()
            before = doc["revision"]
            yield doc
            if doc["revision"] != before:
                self._write(doc)
        finally:
            os.close(fd)        # drops the lock

    def _read(self) -> dict[str, Any]:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return {"schema_version": SCHEMA_VERSION, "revision": 0, "network": None,
                    "subnets": {}}
        except OSError as exc:
            raise StoreUnavailable(f"{self.path}: {exc}") from exc
        try:
            doc = json.loads(data)
        except ValueError as exc:
            raise StoreCorrupt(str(self.path), f"not a lease store: {exc}") from exc
        if not isinstance(doc, dict):
            raise StoreCorrupt(str(self.path), "not a lease store: not a JSON object")
        if doc.get("schema_version") == 1:
            return self._migrate(doc)
        if doc.get("schema_version") != SCHEMA_VERSION:
            raise StoreCorrupt(str(self.path), f"schema_version {doc.get('schema_version')!r}"
                                               f" is not 1 or {SCHEMA_VERSION}")
        if not isinstance(doc.get("subnets"), dict) or not isinstance(doc.get("revision"), int):
            raise StoreCorrupt(str(self.path), "not a lease store: no subnets or revision")
        return doc

    def _migrate(self, doc: dict[str, Any]) -> dict[str, Any]:
        """A schema 1 document as schema 2 (see the module docstring)."""
        if not isinstance(doc.get("leases"), dict):
            raise StoreCorrupt(str(self.path), "not a lease store: no leases object")
        last = set(doc.get("last_allocated") or ()) if isinstance(
            doc.get("last_allocated"), list) else set()
        leases = [self._lease(node, entry, f"{self.path} (lease of node {node!r})")
                  for node, entry in doc["leases"].items()]
        leases.sort(key=lambda lease: (str(lease.subnet) in last or str(lease.ipv6_subnet) in last,
                                       lease.node))
        subnets = {record_key(lease.subnet, lease.ipv6_subnet): _entry(lease, i, i)
                   for i, lease in enumerate(leases, 1)}
        return {"schema_version": SCHEMA_VERSION, "revision": len(leases),
                "network": doc.get("network"), "subnets": subnets}

    def _write(self, doc: dict[str, Any]) -> None:
        doc["subnets"] = dict(sorted(doc["subnets"].items()))
        data = json.dumps(doc, indent=2).encode() + b"\n"
        try:
            write_atomic(str(self.path), data, mode=0o600, durable=True)
        except OSError as exc:
            raise StoreUnavailable(f"{self.path}: {exc}") from exc

    def _bump(self, doc: dict[str, Any]) -> int:
        doc["schema_version"] = SCHEMA_VERSION
        doc["revision"] += 1
        return doc["revision"]

    def _record(self, key: str, entry: Any) -> Record:
        where = f"{self.path} (subnet {key!r})"
        lease = self._lease(entry.get("node", "") if isinstance(entry, dict) else "", entry, where)
        try:
            if record_key(lease.subnet, lease.ipv6_subnet) != key:
                raise ValueError(f"the key does not name {lease.subnet or lease.ipv6_subnet}")
            return Record(lease=lease, create_revision=int(entry["create_revision"]),
                          mod_revision=int(entry["mod_revision"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise StoreCorrupt(where, f"bad subnet entry: {exc!r}") from exc

    def _lease(self, node: str, entry: Any, where: str) -> Lease:
        try:
            subnet = entry["subnet"] and ip_network(entry["subnet"])
            ipv6_subnet = entry["ipv6_subnet"] and ip_network(entry["ipv6_subnet"])
            expires_at = entry["expires_at"]
            attrs = entry["attrs"]
            if not isinstance(subnet or IPv4Network(0), IPv4Network) or \
                    not isinstance(ipv6_subnet or IPv6Network(0), IPv6Network):
                raise ValueError("subnet of the wrong IP family")
            if not (subnet or ipv6_subnet):
                raise ValueError("no subnet")
            if expires_at is not None:
                expires_at = float(expires_at)
        except (KeyError, TypeError, ValueError) as exc:
            raise StoreCorrupt(where, f"bad lease entry: {exc!r}") from exc
        return Lease(node=str(node), subnet=subnet or None, ipv6_subnet=ipv6_subnet or None,
                     expires_at=expires_at, **flanneljson.attrs_from_dict(attrs, where))

    def _stat_signature(self) -> tuple[int, ...] | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StoreUnavailable(f"{self.path}: {exc}") from exc
        return (st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size)


def _entry(lease: Lease, create_revision: int, mod_revision: int) -> dict[str, Any]:
    return {"node": lease.node,
            "subnet": lease.subnet and str(lease.subnet),
            "ipv6_subnet": lease.ipv6_subnet and str(lease.ipv6_subnet),
            "expires_at": lease.expires_at,
            "create_revision": create_revision, "mod_revision": mod_revision,
            "attrs": flanneljson.attrs_to_dict(lease)}


class FileLeaseStore(LeaseManager):
    """The lease policy over a ``FileRegistry`` at *path*: the one-machine default.

    *default_ttl*, *clock*: as ``LeaseManager``; *poll_interval*: as ``FileRegistry``.
    """

    def __init__(self, path: str | os.PathLike[str], *, default_ttl: float | None = None,
                 poll_interval: float = 0.1, clock: Callable[[], float] = time.time) -> None:
        self.file = FileRegistry(path, poll_interval=poll_interval)
        self.path = self.file.path
        super().__init__(self.file, default_ttl=default_ttl, clock=clock)
