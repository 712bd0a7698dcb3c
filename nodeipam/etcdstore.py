"""The etcd backend: ``EtcdRegistry`` stores in flannel's own layout (flannel
pkg/subnet/etcd ``etcdSubnetRegistry``); ``EtcdLeaseStore`` is the lease policy over it.

* ``<prefix>/config``: the network config document (``nodeipam.flanneljson``).
* ``<prefix>/subnets/10.244.1.0-24``: one key per lease, value flannel's ``LeaseAttrs``
  JSON, attached to an etcd lease of the lease's TTL (flannel: 24h). An update grants a
  new etcd lease and puts the value again, as flannel's ``updateSubnet`` does, and
  revokes the one the key had.

Writes are transactions: create on ``create_revision == 0`` (flannel: ``version == 0``,
the same condition), update and delete on ``mod_revision ==`` the revision read, so of
two agents racing for one subnet exactly one wins. Expiry is etcd's: a key whose etcd
lease ran out is gone, and ``expires_at`` of a listed record comes from its lease's
remaining TTL. flannel's value names no node, so listed records carry their PublicIP
as ``node``. flannel's key names the IPv4 subnet: an IPv6-only network or lease is
refused (``InvalidCIDR``).

We talk to etcd's v3 JSON gateway through etcd3gw; every etcd3gw/requests error is
mapped to ``StoreUnavailable`` in ``_etcd()``.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import math
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import urlsplit

import etcd3gw
import requests
from etcd3gw import exceptions as etcd_errors

from . import flanneljson
from .errors import InvalidCIDR, NetworkConfigNotFound, StoreCorrupt, StoreUnavailable
from .lease import Lease, NetworkConfig
from .manager import LeaseManager
from .registry import Record, record_key

__all__ = ["FLANNEL_SUBNET_TTL", "EtcdRegistry", "EtcdLeaseStore"]

log = logging.getLogger(__name__)

FLANNEL_SUBNET_TTL = 24 * 3600      # flannel pkg/subnet/etcd/local_manager.go subnetTTL


def _b64(data: str | bytes) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def _prefix_end(prefix: str) -> str:
    """The range end covering every key under *prefix* (last byte + 1)."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


class EtcdRegistry:
    """A ``Registry`` on etcd at *endpoints* (``http://127.0.0.1:2379``, a list, or a
    comma-separated string; after a connection error the next call tries the next one).
    ``watch_subnets`` polls the store's revision every *poll_interval* seconds.

    Locking: one lock per registry, taken by every public method around its exchange
    with etcd (the HTTP session is not thread-safe); ``watch_subnets`` drops it while
    it sleeps.
    """

    def __init__(self, endpoints: str | Sequence[str], prefix: str = "/coreos.com/network",
                 *, timeout: float = 5.0, poll_interval: float = 1.0) -> None:
        if isinstance(endpoints, str):
            endpoints = [e for e in endpoints.split(",") if e.strip()]
        if not endpoints:
            raise ValueError("no etcd endpoint given")
        self.endpoints = [e.strip() for e in endpoints]
        self.prefix = prefix.rstrip("/")
        self.config_key = f"{self.prefix}/config"
        self.subnets_prefix = f"{self.prefix}/subnets/"
        self.poll_interval = poll_interval
        self._clients = [self._make_client(e, timeout) for e in self.endpoints]
        self._current = 0
        self._lock = threading.Lock()
        # key -> (mod_revision, expires_at): a listed key's TTL is asked for once
        self._expiries: dict[str, tuple[int, float | None]] = {}

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

    # -- Registry ------------------------------------------------------------------

    def read_config(self) -> NetworkConfig:
        """The config at ``<prefix>/config``; ``NetworkConfigNotFound`` if absent."""
        with self._lock, self._etcd():
            values = self._client.get(self.config_key)
        if not values:
            raise NetworkConfigNotFound(f"flannel config not found in etcd store at "
                                        f"{self.config_key}")
        return flanneljson.parse_config(values[0], self.config_key)

    def write_config(self, config: NetworkConfig) -> None:
        """Put *config* at ``<prefix>/config``; ``InvalidCIDR`` without an IPv4 Network."""
        if config.network is None:
            raise InvalidCIDR("flannel's etcd layout needs an IPv4 Network (subnet keys are "
                              "named by their IPv4 subnet)")
        with self._lock, self._etcd():
            self._client.put(self.config_key, flanneljson.format_config(config))

    def list_subnets(self) -> tuple[int, list[Record]]:
        """The store's revision and every subnet key, skipping what is no flannel lease
        as flannel does ("Ignoring bad subnet node") and keys whose lease just ran out."""
        with self._lock, self._etcd():
            resp = self._range(self.subnets_prefix)
            records, expiries = [], {}
            for kv in resp.get("kvs", []):
                record = self._record(kv)
                if record is not None:
                    records.append(record)
                    expiries[record.key] = (record.mod_revision, record.lease.expires_at)
            self._expiries = expiries
            return int(resp["header"]["revision"]), records

    def create_subnet(self, lease: Lease) -> Record | None:
        """Put *lease* at its key in a transaction on ``create_revision == 0``."""
        with self._lock, self._etcd():
            resp, _ = self._put(lease, ("CREATE", 0))
            if resp is None:
                return None
            revision = int(resp["header"]["revision"])
            return self._written(lease, revision, revision)

    def update_subnet(self, lease: Lease, *, mod_revision: int) -> Record | None:
        """Put *lease* at its key in a transaction on ``mod_revision``; the key's old
        etcd lease is revoked."""
        with self._lock, self._etcd():
            resp, new_lease = self._put(lease, ("MOD", mod_revision))
            if resp is None:
                return None
            prev = resp["responses"][0]["response_put"].get("prev_kv", {})
            if int(prev.get("lease", 0)) not in (0, new_lease):
                self._revoke(int(prev["lease"]))
            return self._written(lease, int(prev.get("create_revision", 0)),
                                 int(resp["header"]["revision"]))

    def delete_subnet(self, record: Record) -> bool:
        """Delete *record*'s key unless it changed since it was read; its etcd lease is
        revoked."""
        key = self.subnets_prefix + record.key
        with self._lock, self._etcd():
            resp = self._client.transaction({
                "compare": [{"key": _b64(key), "result": "EQUAL", "target": "MOD",
                             "mod_revision": record.mod_revision}],
                "success": [{"request_delete_range": {"key": _b64(key), "prev_kv": True}}],
                "failure": []})
            if not resp.get("succeeded"):
                return False
            for prev in resp["responses"][0]["response_delete_range"].get("prev_kvs", []):
                self._revoke(int(prev.get("lease", 0)))
            return True

    def watch_subnets(self, revision: int, timeout: float) -> int:
        """The store's revision once it differs from *revision*, or after *timeout*."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock, self._etcd():
                current = int(self._range(self.subnets_prefix, count_only=True)
                              ["header"]["revision"])
            remaining = deadline - time.monotonic()
            if current != revision or remaining <= 0:
                return current
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

    def _range(self, key: str, *, count_only: bool = False) -> dict[str, Any]:
        body: dict[str, Any] = {"key": _b64(key), "range_end": _b64(_prefix_end(key))}
        if count_only:
            body["count_only"] = True
        return self._client.post(self._client.get_url("/kv/range"), json=body)

    def _record(self, kv: dict[str, Any]) -> Record | None:
        """The record for one key-value, None if it is no lease or its TTL ran out."""
        name = base64.b64decode(kv["key"]).decode("utf-8", "replace")
        parsed = flanneljson.parse_subnet_key(name)
        try:
            if parsed is None:
                raise StoreCorrupt(name, "not a subnet key")
            attrs = flanneljson.parse_attrs(base64.b64decode(kv.get("value", "")), name)
        except StoreCorrupt as exc:
            log.warning("ignoring bad subnet node: %s", exc)
            return None
        key, mod_revision = record_key(*parsed), int(kv["mod_revision"])
        seen = self._expiries.get(key)
        if seen is not None and seen[0] == mod_revision:
            expires_at = seen[1]
        elif int(kv.get("lease", 0)):
            ttl = etcd3gw.Lease(int(kv["lease"]), self._client).ttl()
            if ttl < 0:
                return None
            expires_at = time.time() + ttl
        else:
            expires_at = None
        lease = Lease(node=attrs["public_ip"], subnet=parsed[0], ipv6_subnet=parsed[1],
                      expires_at=expires_at, **attrs)
        return Record(lease=lease, create_revision=int(kv["create_revision"]),
                      mod_revision=mod_revision)

    def _put(self, lease: Lease, compare: tuple[str, int]
             ) -> tuple[dict[str, Any] | None, int]:
        """Put *lease*'s value at its key if *compare* (``("CREATE", 0)`` or ``("MOD",
        rev)``) holds, attached to a new etcd lease until its ``expires_at``. The
        transaction's response (None if the comparison failed) and the etcd lease id."""
        if lease.subnet is None:
            raise InvalidCIDR("flannel's etcd layout needs an IPv4 subnet in every lease")
        key = self.subnets_prefix + record_key(lease.subnet, lease.ipv6_subnet)
        lease_id = 0
        if lease.expires_at is not None:
            ttl = max(1, math.ceil(lease.expires_at - time.time()))
            lease_id = self._client.lease(ttl).id
        target, revision = compare
        field = "create_revision" if target == "CREATE" else "mod_revision"
        put: dict[str, Any] = {"key": _b64(key), "value": _b64(flanneljson.format_attrs(lease)),
                               "prev_kv": True}
        if lease_id:
            put["lease"] = lease_id
        # If this raises, the outcome is unknown (a timeout after etcd applied it would
        # make a revoke delete our own fresh key): the new etcd lease is left to expire.
        resp = self._client.transaction({
            "compare": [{"key": _b64(key), "result": "EQUAL", "target": target,
                         field: revision}],
            "success": [{"request_put": put}], "failure": []})
        if not resp.get("succeeded"):
            self._revoke(lease_id)
            return None, 0
        return resp, lease_id

    def _written(self, lease: Lease, create_revision: int, mod_revision: int) -> Record:
        self._expiries[record_key(lease.subnet, lease.ipv6_subnet)] = (mod_revision,
                                                                        lease.expires_at)
        return Record(lease=lease, create_revision=create_revision, mod_revision=mod_revision)

    def _revoke(self, lease_id: int) -> None:
        if not lease_id:
            return
        try:
            etcd3gw.Lease(lease_id, self._client).revoke()
        except etcd_errors.Etcd3Exception as exc:    # it expires by itself anyway
            log.debug("revoking etcd lease %x: %s", lease_id, exc.detail_text or exc)


class EtcdLeaseStore(LeaseManager):
    """The lease policy over an ``EtcdRegistry``: flannel's etcd layout, flannel's 24 h
    TTL by default (*default_ttl* None: no etcd lease, flannel's "reservation")."""

    def __init__(self, endpoints: str | Sequence[str], prefix: str = "/coreos.com/network",
                 *, default_ttl: float | None = FLANNEL_SUBNET_TTL, timeout: float = 5.0,
                 poll_interval: float = 1.0) -> None:
        self.etcd = EtcdRegistry(endpoints, prefix, timeout=timeout, poll_interval=poll_interval)
        super().__init__(self.etcd, default_ttl=default_ttl)
