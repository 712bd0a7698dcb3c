"""``FileLeaseStore``: the network config and every lease in one JSON file.

The embedded default for the nodes of one machine (several node agents, one file)::

    {"schema_version": 1,
     "network": {"Network": "10.244.0.0/16", "SubnetLen": 24, "Backend": {"Type": "vxlan"}},
     "last_allocated": ["10.244.1.0/24"],
     "leases": {"node-a": {"subnet": "10.244.0.0/24", "ipv6_subnet": null,
                           "expires_at": null,
                           "attrs": {"PublicIP": "198.18.0.2", "PublicIPv6": null,
                                     "BackendType": "vxlan", "BackendData": {...}}}}}

``network`` is flannel's config document and ``attrs`` flannel's lease value, as the etcd
store keeps them. ``last_allocated`` carries next-fit across the allocator rebuilds.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from typing import Any

from atomicfile import write_atomic

from . import flanneljson
from .allocator import RangeAllocator, allocate_podcidrs
from .errors import LeaseConflict, NetworkConfigNotFound, StoreCorrupt, StoreUnavailable
from .lease import Lease, LeaseEvent, NetworkConfig

__all__ = ["SCHEMA_VERSION", "FileLeaseStore"]

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1


class FileLeaseStore:
    """A ``LeaseStore`` in the file *path*, shared safely by several processes.

    Locking: every method that writes holds an exclusive ``flock`` on ``<path>.lock``
    for its whole read-modify-write (each call opens its own descriptor, so threads of
    one process exclude each other too); readers take no lock, as the file is only ever
    replaced whole (temp file + ``os.replace``, 0600). ``watch`` keeps its state per
    instance: use one instance per watcher.

    *default_ttl* (seconds) applies when ``acquire``/``renew`` get no ``ttl``; None
    means leases never expire. *clock* gives seconds since the epoch.
    """

    def __init__(self, path: str | os.PathLike[str], *, default_ttl: float | None = None,
                 poll_interval: float = 0.1, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self.default_ttl = default_ttl
        self.poll_interval = poll_interval
        self._clock = clock
        self._seen: dict[str, Lease] = {}
        self._stat: tuple[int, ...] | None = None
        self._file_leases: dict[str, Lease] = {}

    # -- LeaseStore --------------------------------------------------------------

    def get_network_config(self) -> NetworkConfig:
        """The stored network config; ``NetworkConfigNotFound`` before one is set."""
        return self._config(self._read())

    def set_network_config(self, config: NetworkConfig) -> None:
        """Store *config* (checked by the allocator first: ``InvalidCIDR``)."""
        RangeAllocator.for_network(config)
        with self._locked():
            doc = self._read()
            doc["network"] = flanneljson.config_to_dict(config)
            self._write(doc)
        log.info("network config set in %s: %s", self.path, doc["network"])

    def acquire(self, node: str, *, public_ip: str, backend_data: Mapping[str, Any],
                ttl: float | None = None, backend_type: str = "vxlan", public_ipv6: str = "",
                backend_v6_data: Mapping[str, Any] | None = None) -> Lease:
        """The node's lease: its current subnet kept, or new ones allocated next-fit.

        Raises ``CIDRExhausted`` when the network is full, ``NetworkConfigNotFound``
        before a config is set."""
        public_ip = flanneljson.check_public_ip(public_ip, 4)
        public_ipv6 = flanneljson.check_public_ip(public_ipv6, 6) if public_ipv6 else ""
        with self._locked():
            doc = self._read()
            config = self._config(doc)
            allocator = RangeAllocator.for_network(config)
            every = self._leases(doc)
            leases = self._live(every)
            current = leases.get(node)
            # An expired lease whose subnet is still free is kept, as flannel keeps its
            # previous subnet: the node's pods keep their IPs.
            if current is None and node in every and \
                    not any(_overlaps(every[node], other) for other in leases.values()):
                current = every[node]
            if current is not None and allocator.fits(current.subnet, 4) \
                    and allocator.fits(current.ipv6_subnet, 6):
                subnet, ipv6_subnet = current.subnet, current.ipv6_subnet
            else:
                if current is not None:
                    log.info("lease %s of node %s does not fit network %s: reallocating",
                             current.subnet or current.ipv6_subnet, node, config.network)
                in_use = [cidr for other in leases.values() if other.node != node
                          for cidr in (other.subnet, other.ipv6_subnet) if cidr is not None]
                got = allocate_podcidrs(config, in_use=in_use,
                                        last_allocated=self._last_allocated(doc))
                doc["last_allocated"] = [str(cidr) for cidr in got]
                subnet = next((c for c in got if isinstance(c, IPv4Network)), None)
                ipv6_subnet = next((c for c in got if isinstance(c, IPv6Network)), None)
            lease = Lease(node=node, subnet=subnet, ipv6_subnet=ipv6_subnet,
                          public_ip=public_ip, public_ipv6=public_ipv6,
                          backend_type=backend_type, backend_data=dict(backend_data),
                          backend_v6_data=dict(backend_v6_data or {}),
                          expires_at=self._expiry(ttl))
            every[node] = lease
            self._write(doc, every)
        log.info("node %s holds %s (public IP %s) in %s", node,
                 ", ".join(str(c) for c in (subnet, ipv6_subnet) if c), public_ip, self.path)
        return lease

    def renew(self, lease: Lease, ttl: float | None = None) -> Lease:
        """Extend *lease* (and store its attributes). An expired lease is taken back if
        its subnet is still free; ``LeaseConflict`` if another node holds it now."""
        with self._locked():
            doc = self._read()
            allocator = RangeAllocator.for_network(self._config(doc))
            every = self._leases(doc)
            leases = self._live(every)
            current = leases.get(lease.node)
            if current is not None and (current.subnet, current.ipv6_subnet) != \
                    (lease.subnet, lease.ipv6_subnet):
                raise LeaseConflict(f"node {lease.node} holds {current.subnet}, "
                                    f"not {lease.subnet}")
            if current is None:
                if not (allocator.fits(lease.subnet, 4)
                        and allocator.fits(lease.ipv6_subnet, 6)):
                    raise LeaseConflict(f"lease {lease.subnet} of node {lease.node} expired "
                                        "and no longer fits the network")
                for other in leases.values():
                    if _overlaps(other, lease):
                        raise LeaseConflict(f"lease {lease.subnet} of node {lease.node} "
                                            f"expired and node {other.node} holds it now")
                log.warning("lease %s of node %s had expired: taken back", lease.subnet,
                            lease.node)
            renewed = replace(lease, expires_at=self._expiry(ttl))
            every[lease.node] = renewed
            self._write(doc, every)
        return renewed

    def release(self, node: str) -> None:
        """Drop the node's lease; a missing one is fine."""
        with self._locked():
            doc = self._read()
            leases = self._leases(doc)
            if leases.pop(node, None) is None:
                return
            self._write(doc, leases)
        log.info("released the lease of node %s in %s", node, self.path)

    def leases(self) -> list[Lease]:
        """Every unexpired lease, by node name."""
        return list(self._live(self._leases(self._read())).values())

    def watch(self, timeout: float) -> Iterator[LeaseEvent]:
        """Changes since the last call (first: every lease "added"), waiting up to
        *timeout* seconds for one. Polls the file's inode/mtime every *poll_interval*
        and re-reads only when it changed; expiry by time is noticed too."""
        deadline = time.monotonic() + timeout
        while True:
            stat = self._stat_signature()
            if stat != self._stat:
                self._file_leases = self._leases(self._read())
                self._stat = stat
            current = self._live(self._file_leases)
            events = flanneljson.diff_leases(self._seen, current)
            self._seen = current
            if events:
                return iter(events)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return iter(())
            time.sleep(min(self.poll_interval, remaining))

    # -- private -------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StoreUnavailable(f"{self.lock_path}: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)        # drops the lock

    def _read(self) -> dict[str, Any]:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return {"schema_version": SCHEMA_VERSION, "network": None, "leases": {}}
        except OSError as exc:
            raise StoreUnavailable(f"{self.path}: {exc}") from exc
        try:
            doc = json.loads(data)
        except ValueError as exc:
            raise StoreCorrupt(str(self.path), f"not a lease store: {exc}") from exc
        if not isinstance(doc, dict) or not isinstance(doc.get("leases"), dict):
            raise StoreCorrupt(str(self.path), "not a lease store: no leases object")
        if doc.get("schema_version") != SCHEMA_VERSION:
            raise StoreCorrupt(str(self.path), f"schema_version {doc.get('schema_version')!r}"
                                               f" is not {SCHEMA_VERSION}")
        return doc

    def _write(self, doc: dict[str, Any], leases: Mapping[str, Lease] | None = None) -> None:
        if leases is not None:
            # Expired leases stay (free, and kept for their node if it comes back)
            # until another lease overlaps them.
            live = self._live(leases)
            doc["leases"] = {node: _entry(lease) for node, lease in sorted(leases.items())
                             if node in live or not any(_overlaps(lease, other)
                                                        for other in live.values())}
        data = json.dumps(doc, indent=2).encode() + b"\n"
        try:
            write_atomic(str(self.path), data, mode=0o600, durable=True)
        except OSError as exc:
            raise StoreUnavailable(f"{self.path}: {exc}") from exc

    def _config(self, doc: Mapping[str, Any]) -> NetworkConfig:
        if not doc.get("network"):
            raise NetworkConfigNotFound(f"{self.path}: no network config (set it first)")
        if not isinstance(doc["network"], dict):
            raise StoreCorrupt(str(self.path), "network config is not a JSON object")
        return flanneljson.config_from_dict(doc["network"])

    def _leases(self, doc: Mapping[str, Any]) -> dict[str, Lease]:
        leases: dict[str, Lease] = {}
        for node, entry in doc["leases"].items():
            where = f"{self.path} (lease of node {node!r})"
            try:
                subnet = entry["subnet"] and ip_network(entry["subnet"])
                ipv6_subnet = entry["ipv6_subnet"] and ip_network(entry["ipv6_subnet"])
                expires_at = entry["expires_at"]
                attrs = entry["attrs"]
                if not isinstance(subnet or IPv4Network(0), IPv4Network) or \
                        not isinstance(ipv6_subnet or IPv6Network(0), IPv6Network):
                    raise ValueError("subnet of the wrong IP family")
                if expires_at is not None:
                    expires_at = float(expires_at)
            except (KeyError, TypeError, ValueError) as exc:
                raise StoreCorrupt(where, f"bad lease entry: {exc!r}") from exc
            leases[node] = Lease(node=node, subnet=subnet or None,
                                 ipv6_subnet=ipv6_subnet or None, expires_at=expires_at,
                                 **flanneljson.attrs_from_dict(attrs, where))
        return leases

    def _live(self, leases: Mapping[str, Lease]) -> dict[str, Lease]:
        now = self._clock()
        return {node: lease for node, lease in leases.items()
                if lease.expires_at is None or lease.expires_at > now}

    def _last_allocated(self, doc: Mapping[str, Any]) -> list[IPv4Network | IPv6Network]:
        try:
            return [ip_network(cidr) for cidr in doc.get("last_allocated") or ()]
        except (TypeError, ValueError) as exc:
            raise StoreCorrupt(str(self.path), f"bad last_allocated: {exc}") from exc

    def _expiry(self, ttl: float | None) -> float | None:
        ttl = self.default_ttl if ttl is None else ttl
        return None if ttl is None else self._clock() + ttl

    def _stat_signature(self) -> tuple[int, ...] | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StoreUnavailable(f"{self.path}: {exc}") from exc
        return (st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size)


def _entry(lease: Lease) -> dict[str, Any]:
    return {"subnet": lease.subnet and str(lease.subnet),
            "ipv6_subnet": lease.ipv6_subnet and str(lease.ipv6_subnet),
            "expires_at": lease.expires_at,
            "attrs": flanneljson.attrs_to_dict(lease)}


def _overlaps(a: Lease, b: Lease) -> bool:
    return bool((a.subnet and b.subnet and a.subnet.overlaps(b.subnet))
                or (a.ipv6_subnet and b.ipv6_subnet and a.ipv6_subnet.overlaps(b.ipv6_subnet)))
