"""The storage side of the lease policy: the ``Registry`` protocol and ``MemoryRegistry``.

A registry is flannel's ``Registry`` (pkg/subnet/etcd/registry.go) made small: the
network config, and one *record* per subnet under flannel's subnet key
(``10.244.1.0-24``, dual-stack ``10.244.1.0-24&fd00:10:244:1::-64``). It holds no
policy: it does not allocate, does not know which record is whose, and decides nothing
about expiry. ``expires_at`` is data it keeps for the policy to read; the one exception
is etcd, whose own leases delete a key when its TTL runs out.

Optimistic concurrency, as etcd's: every write bumps a registry-wide *revision*; a
record carries the revision that created it and the one that last changed it.
``create_subnet`` succeeds only if the key is absent, ``update_subnet`` and
``delete_subnet`` only if the record's mod revision is still the one the caller read;
otherwise they report failure and the caller re-reads. So two nodes racing for one
subnet never both win, whichever backend they share.

``MemoryRegistry`` is the in-memory one: the lease policy's tests, the node agent's
unit tests and the registry contract tests run on it.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, replace
from ipaddress import IPv4Network, IPv6Network
from typing import Protocol

from . import flanneljson
from .errors import InvalidCIDR, NetworkConfigNotFound
from .lease import Lease, NetworkConfig

__all__ = ["Record", "Registry", "MemoryRegistry", "record_key"]

log = logging.getLogger(__name__)


def record_key(subnet: IPv4Network | None, ipv6_subnet: IPv6Network | None = None) -> str:
    """flannel's ``MakeSubnetKey`` for the lease's subnets. flannel has no key for an
    IPv6-only lease (etcd refuses one); the memory and file registries name it by its
    IPv6 part alone (``fd00:10:244::-64``), which flannel's key regex does not match."""
    if subnet is not None:
        return flanneljson.subnet_key(subnet, ipv6_subnet)
    if ipv6_subnet is None:
        raise InvalidCIDR("a lease needs a subnet")
    return f"{ipv6_subnet.network_address}-{ipv6_subnet.prefixlen}"


@dataclass(frozen=True, kw_only=True)
class Record:
    """One stored subnet: the lease as stored (its ``expires_at`` included) and the
    registry revisions that created it and last changed it."""

    lease: Lease
    create_revision: int
    mod_revision: int

    @property
    def key(self) -> str:
        """The record's subnet key (``record_key``)."""
        return record_key(self.lease.subnet, self.lease.ipv6_subnet)


class Registry(Protocol):
    """Storage for the network config and the subnet records; no policy.

    Every method may raise ``StoreUnavailable`` (the backend cannot be reached) or
    ``StoreCorrupt`` (it holds something unreadable). The lease given to
    ``create_subnet``/``update_subnet`` is stored with its ``expires_at``; a backend
    that cannot keep ``Lease.node`` returns the PublicIP in its place.
    """

    def read_config(self) -> NetworkConfig:
        """The network config; ``NetworkConfigNotFound`` if none is stored."""
        ...

    def write_config(self, config: NetworkConfig) -> None:
        """Store *config*, replacing any."""
        ...

    def list_subnets(self) -> tuple[int, list[Record]]:
        """The current revision and every record (in no particular order)."""
        ...

    def create_subnet(self, lease: Lease) -> Record | None:
        """Store *lease* under its key if the key is absent; None if it is present."""
        ...

    def update_subnet(self, lease: Lease, *, mod_revision: int) -> Record | None:
        """Replace the record under *lease*'s key if its mod revision is still
        *mod_revision*; None if it changed or is gone."""
        ...

    def delete_subnet(self, record: Record) -> bool:
        """Delete *record* if it is unchanged since it was read; False if it changed
        or is gone."""
        ...

    def watch_subnets(self, revision: int, timeout: float) -> int:
        """The current revision, as soon as it differs from *revision* or after
        *timeout* seconds, whichever comes first."""
        ...


class MemoryRegistry:
    """A ``Registry`` in memory, shared by every thread that holds it (one lock).

    *config* is the network config to start with (None: none stored yet). Records are
    kept as given, expired ones included (expiry is data for the policy).
    """

    def __init__(self, config: NetworkConfig | None = None) -> None:
        self._changed = threading.Condition()
        self._config = config
        self._records: dict[str, Record] = {}
        self._revision = 0

    def read_config(self) -> NetworkConfig:
        """The network config; ``NetworkConfigNotFound`` before one is written."""
        with self._changed:
            if self._config is None:
                raise NetworkConfigNotFound("memory registry: no network config")
            return self._config

    def write_config(self, config: NetworkConfig) -> None:
        """Store *config*."""
        with self._changed:
            self._config = config
            self._bump()

    def list_subnets(self) -> tuple[int, list[Record]]:
        """The revision and every record."""
        with self._changed:
            return self._revision, list(self._records.values())

    def create_subnet(self, lease: Lease) -> Record | None:
        """Store *lease* if its key is free."""
        key = record_key(lease.subnet, lease.ipv6_subnet)
        with self._changed:
            if key in self._records:
                return None
            revision = self._bump()
            record = self._records[key] = Record(lease=_copy(lease), create_revision=revision,
                                                 mod_revision=revision)
            return record

    def update_subnet(self, lease: Lease, *, mod_revision: int) -> Record | None:
        """Replace the record under *lease*'s key if it is still at *mod_revision*."""
        key = record_key(lease.subnet, lease.ipv6_subnet)
        with self._changed:
            old = self._records.get(key)
            if old is None or old.mod_revision != mod_revision:
                return None
            record = self._records[key] = Record(lease=_copy(lease),
                                                 create_revision=old.create_revision,
                                                 mod_revision=self._bump())
            return record

    def delete_subnet(self, record: Record) -> bool:
        """Delete *record* if it is unchanged."""
        with self._changed:
            old = self._records.get(record.key)
            if old is None or old.mod_revision != record.mod_revision:
                return False
            del self._records[record.key]
            self._bump()
            return True

    def watch_subnets(self, revision: int, timeout: float) -> int:
        """Wait (on a condition, no polling) until the revision moves past *revision*."""
        with self._changed:
            self._changed.wait_for(lambda: self._revision != revision, timeout=max(0.0, timeout))
            return self._revision

    def _bump(self) -> int:
        # Under self._changed.
        self._revision += 1
        self._changed.notify_all()
        return self._revision


def _copy(lease: Lease) -> Lease:
    """*lease* with its backend data copied: what is stored must not change with the
    caller's dicts (a real backend stores bytes)."""
    return replace(lease, backend_data=dict(lease.backend_data),
                   backend_v6_data=dict(lease.backend_v6_data))
