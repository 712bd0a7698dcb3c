"""``LeaseManager``: the lease policy, written once over a ``Registry``.

flannel's ``LocalManager`` (pkg/subnet/etcd/local_manager.go) with
kube-controller-manager's allocator in place of flannel's random pick:

* A lease is identified by its PublicIP (flannel's ``findLeaseByIP``).
* ``acquire`` reuses the node's record if it still fits the network (an expired one
  too, while no live lease overlaps it: the node's pods keep their IPs), deleting any
  it cannot reuse; otherwise it allocates next-fit, after the newest record (highest
  create revision) or this manager's own last creation if that is newer, so the first
  node gets 10.244.0.0/24. A record left expired at the chosen key is deleted first.
* Every write is conditional (create if absent, update or delete if unchanged); a
  write that finds the registry changed re-reads and tries again, after a short random
  pause, up to ``RACE_RETRIES`` times (flannel's ``raceRetries``).
* A lease whose ``expires_at`` has passed is free and no longer listed, whether the
  backend still holds it (file, memory) or has dropped it (etcd's TTL).
* ``watch`` diffs the live leases by PublicIP; a renewal alone is no event.

Not thread-safe: use one manager per thread (registries may be shared).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import replace
from ipaddress import IPv4Network, IPv6Network
from typing import Any

from . import flanneljson
from .allocator import RangeAllocator, allocate_podcidrs
from .errors import LeaseConflict
from .lease import Lease, LeaseEvent, NetworkConfig
from .registry import Record, Registry, record_key

__all__ = ["RACE_RETRIES", "LeaseManager", "diff_leases"]

log = logging.getLogger(__name__)

RACE_RETRIES = 10       # flannel pkg/subnet/etcd/local_manager.go raceRetries


class LeaseManager:
    """The ``LeaseStore`` over *registry*.

    *default_ttl* (seconds) applies when ``acquire``/``renew`` get no ``ttl``; None
    means leases never expire. *clock* gives seconds since the epoch (what
    ``expires_at`` is compared with); *sleep* is the pause after a lost race.
    ``watch`` keeps its state per manager: use one manager per watcher.
    """

    def __init__(self, registry: Registry, *, default_ttl: float | None = None,
                 clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], object] = time.sleep) -> None:
        self.registry = registry
        self.default_ttl = default_ttl
        self._clock = clock
        self._sleep = sleep
        self._last: tuple[int, tuple[IPv4Network | IPv6Network, ...]] = (0, ())
        self._seen: dict[str, Lease] = {}               # watch state, by PublicIP
        self._watched: tuple[int, list[Record]] | None = None

    # -- network config ------------------------------------------------------------------

    def get_network_config(self) -> NetworkConfig:
        """The stored network config; ``NetworkConfigNotFound`` before one is set."""
        return self.registry.read_config()

    def set_network_config(self, config: NetworkConfig) -> None:
        """Store *config*, checked by the allocator first (``InvalidCIDR``)."""
        RangeAllocator.for_network(config)
        self.registry.write_config(config)
        log.info("network config set: %s", flanneljson.config_to_dict(config))

    # -- leases --------------------------------------------------------------------------

    def acquire(self, public_ip: str, *, backend_data: Mapping[str, Any], node: str = "",
                ttl: float | None = None, backend_type: str = "vxlan", public_ipv6: str = "",
                backend_v6_data: Mapping[str, Any] | None = None) -> Lease:
        """The lease of the node with *public_ip*, its attributes stored as given:
        its current subnet kept, or new ones allocated next-fit. *node* labels it
        (default: the PublicIP). Raises ``CIDRExhausted`` when the network is full,
        ``NetworkConfigNotFound`` before a config is set, ``LeaseConflict`` after
        ``RACE_RETRIES`` lost races."""
        ip = flanneljson.check_public_ip(public_ip, 4)
        want = Lease(node=node or ip, subnet=None, public_ip=ip,
                     public_ipv6=flanneljson.check_public_ip(public_ipv6, 6) if public_ipv6 else "",
                     backend_type=backend_type, backend_data=dict(backend_data),
                     backend_v6_data=dict(backend_v6_data or {}), expires_at=self._expiry(ttl))
        config = self.registry.read_config()
        allocator = RangeAllocator.for_network(config)
        for attempt in range(RACE_RETRIES):
            self._pause(attempt)
            _, records = self.registry.list_subnets()
            live = self._live(records)
            alive = {r.key for r in live}
            mine = sorted((r for r in records if r.lease.public_ip == ip),
                          key=lambda r: (r.key not in alive, r.create_revision))
            keep = next((r for r in mine if _fits(allocator, r.lease) and (
                r.key in alive or not any(_overlaps(r.lease, o.lease) for o in live))), None)
            if not self._delete_all([r for r in mine if r is not keep], "cannot be reused "
                                    "(outside the network, overlapped since it expired, or "
                                    "a second lease of that PublicIP)"):
                continue
            if keep is not None:
                got = self.registry.update_subnet(
                    replace(want, subnet=keep.lease.subnet, ipv6_subnet=keep.lease.ipv6_subnet),
                    mod_revision=keep.mod_revision)
            else:
                got = self._create(config, want, records, live)
            if got is not None:
                log.info("%s holds %s", _who(got.lease), _subnets(got.lease))
                return got.lease
        raise LeaseConflict("Max retries reached trying to acquire a subnet")

    def renew(self, lease: Lease, ttl: float | None = None) -> Lease:
        """Store *lease* again with a fresh expiry. An expired lease is taken back if
        its subnet is still free; ``LeaseConflict`` if another node holds it now, if
        its PublicIP holds another subnet, or if it no longer fits the network."""
        ip = flanneljson.check_public_ip(lease.public_ip, 4)
        key = record_key(lease.subnet, lease.ipv6_subnet)
        renewed = replace(lease, public_ip=ip, expires_at=self._expiry(ttl))
        for attempt in range(RACE_RETRIES):
            self._pause(attempt)
            _, records = self.registry.list_subnets()
            live = self._live(records)
            at_key = next((r for r in records if r.key == key), None)
            ours = at_key is not None and at_key.lease.public_ip == ip
            held = ours and any(r.key == key for r in live)
            if not held:
                self._check_free(renewed, live)
            if ours:
                got = self.registry.update_subnet(renewed, mod_revision=at_key.mod_revision)
            elif at_key is None or self.registry.delete_subnet(at_key):
                got = self.registry.create_subnet(renewed)
            else:
                continue
            if got is not None:
                if not held:
                    log.warning("lease %s of %s had expired: taken back", key, _who(lease))
                return got.lease
        raise LeaseConflict(f"Max retries reached trying to renew {key}")

    def release(self, public_ip: str) -> None:
        """Delete the lease(s) of the node with *public_ip*; none is fine (logged)."""
        ip = flanneljson.check_public_ip(public_ip, 4)
        released = False
        for attempt in range(RACE_RETRIES):
            self._pause(attempt)
            mine = [r for r in self.registry.list_subnets()[1] if r.lease.public_ip == ip]
            if not mine:
                if not released:
                    log.warning("release: no lease with PublicIP %s", ip)
                return
            for record in mine:
                if self.registry.delete_subnet(record):
                    log.info("released %s of %s", record.key, _who(record.lease))
                    released = True
        raise LeaseConflict(f"Max retries reached trying to release the lease of {ip}")

    def leases(self) -> list[Lease]:
        """Every unexpired lease, by subnet."""
        return [r.lease for r in _by_subnet(self._live(self.registry.list_subnets()[1]))]

    def watch(self, timeout: float) -> Iterator[LeaseEvent]:
        """Changes since the last call (first: every lease "added"), waiting up to
        *timeout* seconds for one. Re-lists only when the registry's revision moved;
        a lease expiring is noticed too, without any write."""
        deadline, wait = time.monotonic() + timeout, 0.0
        while True:
            if self._watched is not None and \
                    self.registry.watch_subnets(self._watched[0], wait) != self._watched[0]:
                self._watched = None
            if self._watched is None:
                self._watched = self.registry.list_subnets()
            live = self._live(self._watched[1])
            current: dict[str, Lease] = {}
            for record in _by_subnet(live):
                current.setdefault(record.lease.public_ip, record.lease)
            events, self._seen = diff_leases(self._seen, current), current
            if events:
                return iter(events)
            wait = deadline - time.monotonic()
            if wait <= 0:
                return iter(())
            expiries = [r.lease.expires_at for r in live if r.lease.expires_at is not None]
            if expiries:
                wait = min(wait, max(0.0, min(expiries) - self._clock()))

    # -- private -------------------------------------------------------------------------

    def _create(self, config: NetworkConfig, want: Lease, records: list[Record],
                live: list[Record]) -> Record | None:
        """Allocate next-fit and create the record; None if the race was lost."""
        newest = max(records, key=lambda r: r.create_revision, default=None)
        last = self._last[1]
        if newest is not None and newest.create_revision > self._last[0]:
            last = tuple(c for c in (newest.lease.subnet, newest.lease.ipv6_subnet) if c)
        got = allocate_podcidrs(config, last_allocated=last, in_use=[
            c for r in live if r.lease.public_ip != want.public_ip
            for c in (r.lease.subnet, r.lease.ipv6_subnet) if c])
        lease = replace(want, subnet=next((c for c in got if isinstance(c, IPv4Network)), None),
                        ipv6_subnet=next((c for c in got if isinstance(c, IPv6Network)), None))
        key = record_key(lease.subnet, lease.ipv6_subnet)
        expired = [r for r in records if r.key == key and r.lease.public_ip != want.public_ip]
        if not self._delete_all(expired, "expired, and its subnet is wanted"):
            return None
        record = self.registry.create_subnet(lease)
        if record is None:
            log.info("lost the race for %s: trying again", key)
            return None
        self._last = (record.create_revision, got)
        return record

    def _check_free(self, lease: Lease, live: list[Record]) -> None:
        """Raise ``LeaseConflict`` unless the expired *lease* can be taken back."""
        elsewhere = next((r for r in live if r.lease.public_ip == lease.public_ip), None)
        if elsewhere is not None:
            raise LeaseConflict(f"{_who(lease)} holds {_subnets(elsewhere.lease)}, "
                                f"not {_subnets(lease)}")
        if not _fits(RangeAllocator.for_network(self.registry.read_config()), lease):
            raise LeaseConflict(f"lease {_subnets(lease)} of {_who(lease)} expired and no "
                                "longer fits the network")
        holder = next((r for r in live if _overlaps(r.lease, lease)), None)
        if holder is not None:
            raise LeaseConflict(f"lease {_subnets(lease)} of {_who(lease)} expired and "
                                f"{_who(holder.lease)} holds it now")

    def _delete_all(self, records: Iterable[Record], why: str) -> bool:
        """Delete *records*; False as soon as one changed under us (re-read)."""
        for record in records:
            log.info("lease %s of %s: %s; deleting it", record.key, _who(record.lease), why)
            if not self.registry.delete_subnet(record):
                return False
        return True

    def _live(self, records: Iterable[Record]) -> list[Record]:
        now = self._clock()
        return [r for r in records if r.lease.expires_at is None or r.lease.expires_at > now]

    def _expiry(self, ttl: float | None) -> float | None:
        ttl = self.default_ttl if ttl is None else ttl
        return None if ttl is None else self._clock() + ttl

    def _pause(self, attempt: int) -> None:
        if attempt:     # lost a race: let the racers fall out of step
            self._sleep(random.uniform(0, min(1.0, 0.01 * 2 ** attempt)))


def diff_leases(old: Mapping[str, Lease], new: Mapping[str, Lease]) -> list[LeaseEvent]:
    """Events turning *old* into *new* (both keyed by PublicIP): "removed" for leases
    gone, then "added" for new or changed ones. A renewal alone (only ``expires_at``
    moved) is no event: peers need nothing new."""
    events = [LeaseEvent(kind="removed", lease=lease)
              for key, lease in old.items() if key not in new]
    for key, lease in new.items():
        before = old.get(key)
        if before is None or replace(before, expires_at=None) != replace(lease, expires_at=None):
            events.append(LeaseEvent(kind="added", lease=lease))
    return events


def _by_subnet(records: Iterable[Record]) -> list[Record]:
    return sorted(records, key=lambda r: (r.lease.subnet or IPv4Network(0),
                                          r.lease.ipv6_subnet or IPv6Network(0)))


def _fits(allocator: RangeAllocator, lease: Lease) -> bool:
    return allocator.fits(lease.subnet, 4) and allocator.fits(lease.ipv6_subnet, 6)


def _overlaps(a: Lease, b: Lease) -> bool:
    return bool((a.subnet and b.subnet and a.subnet.overlaps(b.subnet))
                or (a.ipv6_subnet and b.ipv6_subnet and a.ipv6_subnet.overlaps(b.ipv6_subnet)))


def _subnets(lease: Lease) -> str:
    return ", ".join(str(c) for c in (lease.subnet, lease.ipv6_subnet) if c) or "no subnet"


def _who(lease: Lease) -> str:
    """``198.18.0.2``, or ``198.18.0.2 (node node-a)`` when the label says more."""
    if lease.node and lease.node != lease.public_ip:
        return f"{lease.public_ip} (node {lease.node})"
    return lease.public_ip
