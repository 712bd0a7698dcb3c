"""What every ``Registry`` must do, written once and run per backend.

A test module subclasses ``RegistryContract`` (as ``TestXRegistry``) and provides two
fixtures: ``registry``, an empty registry (no config, no records), and ``other``, a
second handle on the same storage (another instance on the same file or etcd; the
same object for the memory registry). ``keeps_labels`` says whether the backend stores
``Lease.node`` (etcd cannot: flannel's value has no field for it).

The lease policy itself is tested once, on the memory registry
(``test_nodeipam_manager``); these tests only check storage: round trips, the
conditional writes, revisions and watch.
"""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from ipaddress import IPv4Network, IPv6Network

import pytest

from nodeipam import Lease, NetworkConfig, NetworkConfigNotFound
from nodeipam.registry import Record

CONFIG = NetworkConfig(network=IPv4Network("10.244.0.0/16"), ipv6_network=IPv6Network(
    "fd00:10:244::/56"), backend={"Type": "vxlan", "VNI": 1})
LEASE = Lease(node="node-a", subnet=IPv4Network("10.244.1.0/24"), public_ip="198.18.0.2",
              backend_data={"VNI": 1, "VtepMAC": "aa:bb:cc:dd:ee:01"})
LEASE_KEY = "10.244.1.0-24"


def listed(registry) -> dict[str, Record]:
    return {r.key: r for r in registry.list_subnets()[1]}


class RegistryContract:
    keeps_labels = True

    def stored(self, lease: Lease) -> Lease:
        """*lease* as the backend lists it."""
        return lease if self.keeps_labels else replace(lease, node=lease.public_ip)

    def test_config_round_trip(self, registry, other) -> None:
        with pytest.raises(NetworkConfigNotFound):
            registry.read_config()
        registry.write_config(CONFIG)
        assert other.read_config() == CONFIG
        registry.write_config(replace(CONFIG, network=IPv4Network("10.9.0.0/16")))
        assert other.read_config().network == IPv4Network("10.9.0.0/16")

    def test_create_if_absent(self, registry, other) -> None:
        assert registry.list_subnets()[1] == []
        record = registry.create_subnet(LEASE)
        assert record is not None and record.key == LEASE_KEY
        assert record.create_revision == record.mod_revision > 0
        assert other.create_subnet(replace(LEASE, public_ip="198.18.0.3")) is None
        assert listed(other) == {LEASE_KEY: replace(record, lease=self.stored(LEASE))}

    def test_update_if_unchanged(self, registry, other) -> None:
        first = registry.create_subnet(LEASE)
        changed = replace(LEASE, backend_data={"VNI": 1, "VtepMAC": "aa:bb:cc:dd:ee:99"})
        second = other.update_subnet(changed, mod_revision=first.mod_revision)
        assert second is not None and second.create_revision == first.create_revision
        assert second.mod_revision > first.mod_revision
        assert registry.update_subnet(LEASE, mod_revision=first.mod_revision) is None  # stale
        assert listed(registry)[first.key].lease == self.stored(changed)
        gone = replace(LEASE, subnet=IPv4Network("10.244.2.0/24"))
        assert registry.update_subnet(gone, mod_revision=first.mod_revision) is None

    def test_delete_if_unchanged(self, registry, other) -> None:
        first = registry.create_subnet(LEASE)
        second = other.update_subnet(LEASE, mod_revision=first.mod_revision)
        assert registry.delete_subnet(first) is False                  # changed since
        assert listed(registry) != {}
        assert registry.delete_subnet(second) is True
        assert listed(other) == {}
        assert registry.delete_subnet(second) is False                 # already gone

    def test_records_round_trip(self, registry, other) -> None:
        registry.write_config(CONFIG)
        expires = time.time() + 3600
        dual = Lease(node="node-b", subnet=IPv4Network("10.244.2.0/24"),
                     ipv6_subnet=IPv6Network("fd00:10:244:2::/64"), public_ip="198.18.0.3",
                     public_ipv6="fd00::3", backend_data={"VNI": 1, "VtepMAC": "aa:bb:cc:dd:ee:02"},
                     backend_v6_data={"VNI": 1, "VtepMAC": "aa:bb:cc:dd:ee:03"},
                     expires_at=expires)
        registry.create_subnet(LEASE)
        registry.create_subnet(dual)
        got = listed(other)
        assert sorted(got) == ["10.244.1.0-24", "10.244.2.0-24&fd00:10:244:2::-64"]
        assert got[LEASE_KEY].lease == self.stored(LEASE)
        back = got["10.244.2.0-24&fd00:10:244:2::-64"].lease
        assert back.expires_at == pytest.approx(expires, abs=2)      # etcd: from the TTL
        assert replace(back, expires_at=expires) == self.stored(dual)

    def test_revisions_and_watch(self, registry, other) -> None:
        revision, _ = registry.list_subnets()
        started = time.monotonic()
        assert registry.watch_subnets(revision, 0.1) == revision      # nothing happened
        assert time.monotonic() - started >= 0.09
        timer = threading.Timer(0.1, lambda: other.create_subnet(LEASE))
        timer.start()
        try:
            moved = registry.watch_subnets(revision, 10)
        finally:
            timer.join()
        assert moved > revision and registry.list_subnets()[0] == moved
        assert registry.watch_subnets(revision, 10) == moved           # already past it
        record = listed(registry)[LEASE_KEY]
        assert record.mod_revision <= moved
        registry.delete_subnet(record)
        assert registry.list_subnets()[0] > moved

    def test_racing_creates_one_wins(self, registry, other) -> None:
        handles = [registry, other] * 3
        barrier, results = threading.Barrier(len(handles)), []

        def create(handle, n: int) -> None:
            barrier.wait()
            results.append(handle.create_subnet(replace(LEASE, public_ip=f"198.18.0.{n}")))

        threads = [threading.Thread(target=create, args=(h, n)) for n, h in enumerate(handles, 2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        winners = [r for r in results if r is not None]
        assert len(results) == len(handles) and len(winners) == 1
        assert listed(registry)[LEASE_KEY].lease.public_ip == winners[0].lease.public_ip

