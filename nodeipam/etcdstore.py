"""``EtcdLeaseStore``: leases in etcd, in flannel's own layout (flannel pkg/subnet/etcd).

* ``<prefix>/config``: the network config document (``nodeipam.flanneljson``).
* ``<prefix>/subnets/10.244.1.0-24``: one key per lease, value flannel's ``LeaseAttrs``
  JSON, attached to an etcd lease of the lease's TTL (flannel: 24h). Renewal grants a
  new etcd lease and puts the value again, as flannel's ``updateSubnet`` does.

New subnets come from kube-controller-manager's allocator, next-fit after the newest
subnet key (highest create_revision) or this store's own last creation, so the first
node gets 10.244.0.0/24 (flannel itself picks at random among the first 100 free
subnets and skips the first). Creation is a transaction on ``create_revision == 0``
(flannel: ``version == 0``, the same condition), so of two agents racing for one subnet
exactly one wins; the loser re-reads the keys and tries the next subnet. flannel's value names no node: like
flannel (``findLeaseByIP``) a node's lease is found by its PublicIP, and leases read
back from etcd carry their PublicIP as ``node``.

We talk to etcd's v3 JSON gateway through etcd3gw; every etcd3gw/requests error is
mapped to ``StoreUnavailable`` in ``_etcd()``.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import math
import random
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from ipaddress import IPv4Network, IPv6Network
from typing import Any
from urllib.parse import urlsplit

import etcd3gw
import requests
from etcd3gw import exceptions as etcd_errors

from . import flanneljson
from .allocator import RangeAllocator, allocate_podcidrs
from .errors import InvalidCIDR, LeaseConflict, NetworkConfigNotFound, StoreCorrupt, \
    StoreUnavailable
from .lease import Lease, LeaseEvent, NetworkConfig

__all__ = ["FLANNEL_SUBNET_TTL", "RACE_RETRIES", "EtcdLeaseStore"]

log = logging.getLogger(__name__)

FLANNEL_SUBNET_TTL = 24 * 3600      # flannel pkg/subnet/etcd/local_manager.go subnetTTL
RACE_RETRIES = 10                   # ... and raceRetries


def _b64(data: str | bytes) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def _prefix_end(prefix: str) -> str:
    """The range end covering every key under *prefix* (last byte + 1)."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


@dataclass(frozen=True)
class _Entry:
    """One subnet key as read from etcd."""

    key: str
    subnet: IPv4Network
    ipv6_subnet: IPv6Network | None
    attrs: dict[str, Any]
    mod_revision: int
    create_revision: int
    lease_id: int


class EtcdLeaseStore:
    """A ``LeaseStore`` on etcd at *endpoints* (``http://127.0.0.1:2379``, a list, or a
    comma-separated string; after a connection error the next call tries the next one).

    *default_ttl* applies when ``acquire``/``renew`` get no ``ttl`` (None: no etcd lease,
    flannel's "reservation"). ``watch`` polls the store's revision every *poll_interval*
    seconds and diffs the subnet keys when it moved.

    Locking: one lock per store, taken by every public method around its exchange with
    etcd (the HTTP session is not thread-safe); ``watch`` drops it while it sleeps.
    """

    def __init__(self, endpoints: str | Sequence[str], prefix: str = "/coreos.com/network",
                 *, default_ttl: float | None = FLANNEL_SUBNET_TTL, timeout: float = 5.0,
                 poll_interval: float = 1.0) -> None:
        if isinstance(endpoints, str):
            endpoints = [e for e in endpoints.split(",") if e.strip()]
        if not endpoints:
            raise ValueError("no etcd endpoint given")
        self.endpoints = [e.strip() for e in endpoints]
        self.prefix = prefix.rstrip("/")
        self.config_key = f"{self.prefix}/config"
        self.subnets_prefix = f"{self.prefix}/subnets/"
        self.default_ttl = default_ttl
        self.poll_interval = poll_interval
        self._clients = [self._make_client(e, timeout) for e in self.endpoints]
        self._current = 0
        self._lock = threading.Lock()
        self._acquired: dict[str, tuple[str, str]] = {}     # node -> (key, PublicIP)
        self._last: tuple[int, list[IPv4Network | IPv6Network]] = (0, [])  # revision, subnets
        self._seen: dict[str, Lease] = {}                   # watch state, by key
        self._seen_mods: dict[str, int] = {}
        self._seen_revision = -1

    @staticmethod
    def _make_client(endpoint: str, timeout: float) -> etcd3gw.Etcd3Client:
        url = urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}")
        if not url.hostname:
            raise ValueError(f"bad etcd endpoint {endpoint!r}")
        client = etcd3gw.Etcd3Client(host=url.hostname, port=url.port or 2379,
                                     protocol=url.scheme, timeout=timeout)
        # etcd is a direct peer: never go through an HTTP(S)_PROXY from the environment.
        client.session.trust_env = False
        return client

    # -- LeaseStore --------------------------------------------------------------

    def get_network_config(self) -> NetworkConfig:
        """The config at ``<prefix>/config``; ``NetworkConfigNotFound`` if absent."""
        with self._lock, self._etcd():
            return self._config()

    def set_network_config(self, config: NetworkConfig) -> None:
        """Write *config* to ``<prefix>/config`` (checked by the allocator first)."""
        self._check_config(config)
        with self._lock, self._etcd():
            self._client.put(self.config_key, flanneljson.format_config(config))
        log.info("network config set at %s", self.config_key)

    def acquire(self, node: str, *, public_ip: str, backend_data: Mapping[str, Any],
                ttl: float | None = None, backend_type: str = "vxlan", public_ipv6: str = "",
                backend_v6_data: Mapping[str, Any] | None = None) -> Lease:
        """The lease of the node with *public_ip*: its existing subnet (found by PublicIP,
        as flannel does) renewed, or the next free one created in a transaction."""
        want = Lease(node=node, subnet=None, public_ip=flanneljson.check_public_ip(public_ip, 4),
                     public_ipv6=flanneljson.check_public_ip(public_ipv6, 6)
                     if public_ipv6 else "", backend_type=backend_type,
                     backend_data=dict(backend_data), backend_v6_data=dict(backend_v6_data or {}))
        value = flanneljson.format_attrs(want)
        with self._lock, self._etcd():
            config = self._config()
            allocator = self._check_config(config)
            for attempt in range(RACE_RETRIES):
                if attempt:     # lost a race: let the racers fall out of step
                    time.sleep(random.uniform(0, min(1.0, 0.01 * 2 ** attempt)))
                entries = self._entries()
                mine = next((e for e in entries if e.attrs["public_ip"] == want.public_ip), None)
                if mine is not None and allocator.fits(mine.subnet, 4) \
                        and allocator.fits(mine.ipv6_subnet, 6):
                    revision, expires = self._put(mine.key, value, ttl,
                                                  ("MOD", mine.mod_revision), mine.lease_id)
                    if revision:
                        return self._acquired_lease(want, mine.key, mine.subnet,
                                                    mine.ipv6_subnet, expires)
                    continue
                if mine is not None:
                    log.info("lease %s of %s does not fit network %s: deleting it",
                             mine.key, want.public_ip, config.network)
                    self._delete(mine)
                    continue
                # Next-fit after the newest subnet key, or after our own last creation
                # if that is newer (its key may be gone).
                newest = max(entries, key=lambda e: e.create_revision, default=None)
                last = self._last[1]
                if newest is not None and newest.create_revision > self._last[0]:
                    last = [c for c in (newest.subnet, newest.ipv6_subnet) if c]
                got = allocate_podcidrs(
                    config, in_use=[c for e in entries for c in (e.subnet, e.ipv6_subnet) if c],
                    last_allocated=last)
                subnet = next(c for c in got if isinstance(c, IPv4Network))
                ipv6_subnet = next((c for c in got if isinstance(c, IPv6Network)), None)
                key = self.subnets_prefix + flanneljson.subnet_key(subnet, ipv6_subnet)
                revision, expires = self._put(key, value, ttl, ("CREATE", 0))
                if revision:
                    self._last = (revision, list(got))
                    return self._acquired_lease(want, key, subnet, ipv6_subnet, expires)
                log.info("lost the race for %s: trying the next subnet", key)
        raise LeaseConflict("Max retries reached trying to acquire a subnet")

    def renew(self, lease: Lease, ttl: float | None = None) -> Lease:
        """Put *lease*'s value again with a fresh etcd lease; an expired key is created
        again if free. ``LeaseConflict`` if another PublicIP holds the subnet now."""
        if lease.subnet is None:
            raise InvalidCIDR("flannel's etcd layout needs an IPv4 subnet in every lease")
        key = self.subnets_prefix + flanneljson.subnet_key(lease.subnet, lease.ipv6_subnet)
        value = flanneljson.format_attrs(lease)
        with self._lock, self._etcd():
            for _ in range(RACE_RETRIES):
                found = self._entries(key, exact=True)
                if found and found[0].attrs["public_ip"] != lease.public_ip:
                    raise LeaseConflict(f"{key} is held by {found[0].attrs['public_ip']}, "
                                        f"not {lease.public_ip}")
                if found:
                    revision, expires = self._put(key, value, ttl,
                                                  ("MOD", found[0].mod_revision),
                                                  found[0].lease_id)
                else:
                    log.warning("lease %s of %s had expired: creating it again", key,
                                lease.public_ip)
                    revision, expires = self._put(key, value, ttl, ("CREATE", 0))
                if revision:
                    return replace(lease, expires_at=expires)
        raise LeaseConflict(f"Max retries reached trying to renew {key}")

    def release(self, node: str) -> None:
        """Delete the lease of *node*: a PublicIP, or a node name this store acquired."""
        with self._lock, self._etcd():
            _, public_ip = self._acquired.pop(node, ("", node))
            released = False
            for entry in self._entries():
                if entry.attrs["public_ip"] == public_ip and self._delete(entry):
                    log.info("released %s of %s", entry.key, node)
                    released = True
            if not released:
                # etcd leases carry no node name: a name this store did not acquire
                # cannot be found (pass the node's PublicIP instead).
                log.warning("release: no lease with PublicIP %r (node %r)", public_ip, node)

    def leases(self) -> list[Lease]:
        """Every current lease (etcd drops expired ones itself), ``node`` = PublicIP."""
        with self._lock, self._etcd():
            return [lease for e in self._entries() if (lease := self._lease(e)) is not None]

    def watch(self, timeout: float) -> Iterator[LeaseEvent]:
        """Changes since the last call (first: every lease "added"), keyed by subnet,
        waiting up to *timeout* seconds for one."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock, self._etcd():
                revision = self._revision()
                if revision != self._seen_revision:
                    current, mods = self._snapshot()
                    events = flanneljson.diff_leases(self._seen, current)
                    self._seen, self._seen_mods = current, mods
                    self._seen_revision = revision
                    if events:
                        return iter(events)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return iter(())
            time.sleep(min(self.poll_interval, remaining))

    # -- private: everything below runs under self._lock inside self._etcd() ---------

    @property
    def _client(self) -> etcd3gw.Etcd3Client:
        return self._clients[self._current]

    @contextlib.contextmanager
    def _etcd(self) -> Iterator[None]:
        """The one place etcd3gw's and requests' errors become ``StoreUnavailable``."""
        endpoint = self.endpoints[self._current]
        try:
            yield
        except (etcd_errors.ConnectionFailedError, etcd_errors.ConnectionTimeoutError,
                requests.RequestException) as exc:
            self._current = (self._current + 1) % len(self._clients)
            raise StoreUnavailable(f"etcd at {endpoint}: "
                                   f"{getattr(exc, 'detail_text', None) or exc}") from exc
        except etcd_errors.Etcd3Exception as exc:
            raise StoreUnavailable(f"etcd at {endpoint}: {exc.detail_text or exc!r}") from exc

    def _check_config(self, config: NetworkConfig) -> RangeAllocator:
        if config.network is None:
            raise InvalidCIDR("flannel's etcd layout needs an IPv4 Network (subnet keys are "
                              "named by their IPv4 subnet)")
        return RangeAllocator.for_network(config)

    def _config(self) -> NetworkConfig:
        values = self._client.get(self.config_key)
        if not values:
            raise NetworkConfigNotFound(f"flannel config not found in etcd store at "
                                        f"{self.config_key}")
        return flanneljson.parse_config(values[0], self.config_key)

    def _range(self, key: str, *, exact: bool = False, count_only: bool = False
               ) -> dict[str, Any]:
        body: dict[str, Any] = {"key": _b64(key)}
        if not exact:
            body["range_end"] = _b64(_prefix_end(key))
        if count_only:
            body["count_only"] = True
        return self._client.post(self._client.get_url("/kv/range"), json=body)

    def _revision(self) -> int:
        return int(self._range(self.subnets_prefix, count_only=True)["header"]["revision"])

    def _entries(self, key: str | None = None, *, exact: bool = False) -> list[_Entry]:
        """The subnet keys (or just *key*), skipping what is no flannel lease as flannel
        does ("Ignoring bad subnet node")."""
        entries = []
        for kv in self._range(key or self.subnets_prefix, exact=exact).get("kvs", []):
            name = base64.b64decode(kv["key"]).decode("utf-8", "replace")
            parsed = flanneljson.parse_subnet_key(name)
            try:
                if parsed is None:
                    raise StoreCorrupt(name, "not a subnet key")
                attrs = flanneljson.parse_attrs(base64.b64decode(kv.get("value", "")), name)
            except StoreCorrupt as exc:
                log.warning("ignoring bad subnet node: %s", exc)
                continue
            entries.append(_Entry(name, parsed[0], parsed[1], attrs, int(kv["mod_revision"]),
                                  int(kv["create_revision"]), int(kv.get("lease", 0))))
        return entries

    def _lease(self, entry: _Entry) -> Lease | None:
        """The ``Lease`` for *entry*, None if its etcd lease has just expired."""
        expires_at = None
        if entry.lease_id:
            ttl = etcd3gw.Lease(entry.lease_id, self._client).ttl()
            if ttl < 0:
                return None
            expires_at = time.time() + ttl
        return Lease(node=entry.attrs["public_ip"], subnet=entry.subnet,
                     ipv6_subnet=entry.ipv6_subnet, expires_at=expires_at, **entry.attrs)

    def _snapshot(self) -> tuple[dict[str, Lease], dict[str, int]]:
        current: dict[str, Lease] = {}
        mods: dict[str, int] = {}
        for entry in sorted(self._entries(), key=lambda e: (e.subnet, e.key)):
            if self._seen_mods.get(entry.key) == entry.mod_revision:
                lease: Lease | None = self._seen[entry.key]    # unchanged: no TTL query
            else:
                lease = self._lease(entry)
            if lease is not None:
                current[entry.key], mods[entry.key] = lease, entry.mod_revision
        return current, mods

    def _put(self, key: str, value: bytes, ttl: float | None, compare: tuple[str, int],
             old_lease_id: int = 0) -> tuple[int, float | None]:
        """Put *value* at *key* if *compare* (``("CREATE", 0)`` or ``("MOD", rev)``)
        holds, attached to a new etcd lease of *ttl*. Returns the revision of the put
        (0 if the comparison failed) and the expiry (None: no TTL)."""
        ttl = self.default_ttl if ttl is None else ttl
        lease_id = self._client.lease(max(1, math.ceil(ttl))).id if ttl else 0
        target, revision = compare
        field = "create_revision" if target == "CREATE" else "mod_revision"
        put: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease_id:
            put["lease"] = lease_id
        try:
            resp = self._client.transaction({
                "compare": [{"key": _b64(key), "result": "EQUAL", "target": target,
                             field: revision}],
                "success": [{"request_put": put}], "failure": []})
        except BaseException:
            # The outcome is unknown (a timeout after etcd applied it would make a
            # revoke delete our own fresh key): leave the new lease to expire.
            raise
        if not resp.get("succeeded"):
            self._revoke(lease_id)
            return 0, None
        if old_lease_id and old_lease_id != lease_id:
            self._revoke(old_lease_id)      # the key moved to the new lease
        return int(resp["header"]["revision"]), (time.time() + ttl if ttl else None)

    def _delete(self, entry: _Entry) -> bool:
        """Delete *entry*'s key unless it changed since it was read."""
        resp = self._client.transaction({
            "compare": [{"key": _b64(entry.key), "result": "EQUAL", "target": "MOD",
                         "mod_revision": entry.mod_revision}],
            "success": [{"request_delete_range": {"key": _b64(entry.key)}}], "failure": []})
        if resp.get("succeeded"):
            self._revoke(entry.lease_id)
        return bool(resp.get("succeeded"))

    def _revoke(self, lease_id: int) -> None:
        if not lease_id:
            return
        try:
            etcd3gw.Lease(lease_id, self._client).revoke()
        except etcd_errors.Etcd3Exception as exc:    # it expires by itself anyway
            log.debug("revoking etcd lease %x: %s", lease_id, exc.detail_text or exc)

    def _acquired_lease(self, want: Lease, key: str, subnet: IPv4Network,
                        ipv6_subnet: IPv6Network | None, expires: float | None) -> Lease:
        self._acquired[want.node] = (key, want.public_ip)
        log.info("node %s (%s) holds %s", want.node, want.public_ip, key)
        return replace(want, subnet=subnet, ipv6_subnet=ipv6_subnet, expires_at=expires)
