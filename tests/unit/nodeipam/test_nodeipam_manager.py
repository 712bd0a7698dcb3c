"""The lease policy (``LeaseManager``) once, against ``MemoryRegistry``: allocation,
identity, restart, TTL, renewal, release, races, watch, bad input. The file and etcd
backends only store; ``registry_contract`` checks that they store alike, and each
backend's own tests race real writers (processes on one file, threads on one etcd)."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from ipaddress import IPv4Network, IPv6Network

import pytest

from nodeipam import EXHAUSTED_MESSAGE, CIDRExhausted, InvalidCIDR, Lease, LeaseConflict, \
    LeaseEvent, LeaseManager, MemoryRegistry, NetworkConfig, NetworkConfigNotFound
from nodeipam.manager import RACE_RETRIES, diff_leases

VXLAN = {"VNI": 1, "VtepMAC": "aa:bb:cc:dd:ee:01"}
NETWORK = NetworkConfig(network=IPv4Network("10.244.0.0/16"), backend={"Type": "vxlan"})
SMALL = NetworkConfig(network=IPv4Network("10.244.0.0/23"))       # two subnets


class Clock:
    """A settable clock for TTL tests."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def registry() -> MemoryRegistry:
    return MemoryRegistry(NETWORK)


def manager(registry, clock=time.time, **kw) -> LeaseManager:
    return LeaseManager(registry, clock=clock, sleep=lambda _: None, **kw)


@pytest.fixture
def store(registry: MemoryRegistry, clock: Clock) -> LeaseManager:
    return manager(registry, clock)


def acquire(store: LeaseManager, node: str, ip: str, **kw) -> Lease:
    return store.acquire(ip, node=node, **{"backend_data": VXLAN, **kw})


def subnets(leases) -> list[str]:
    return [str(lease.subnet) for lease in leases]


# -- allocation and identity ----------------------------------------------------------------

def test_first_nodes_get_first_blocks(store: LeaseManager) -> None:
    a, b = acquire(store, "node-a", "198.18.0.2"), acquire(store, "node-b", "198.18.0.3")
    assert (str(a.subnet), str(b.subnet)) == ("10.244.0.0/24", "10.244.1.0/24")
    assert a == Lease(node="node-a", subnet=IPv4Network("10.244.0.0/24"),
                      public_ip="198.18.0.2", backend_data=VXLAN)
    assert store.leases() == [a, b]


def test_a_lease_is_identified_by_its_public_ip(store: LeaseManager) -> None:
    acquire(store, "node-a", "198.18.0.2"), acquire(store, "node-b", "198.18.0.3")
    again = store.acquire("198.18.0.2", node="node-a", backend_data={"VNI": 7})
    assert str(again.subnet) == "10.244.0.0/24" and again.backend_data == {"VNI": 7}
    renamed = acquire(store, "renamed", "198.18.0.2")         # the label is no identity
    assert (str(renamed.subnet), renamed.node) == ("10.244.0.0/24", "renamed")
    assert len(store.leases()) == 2
    # A node with a new PublicIP is a new lease, as in flannel; the old one stays
    # until it is released or expires.
    moved = acquire(store, "node-a", "198.18.0.9")
    assert str(moved.subnet) == "10.244.2.0/24" and len(store.leases()) == 3
    assert acquire(store, "", "198.18.0.10").node == "198.18.0.10"   # default label


def test_next_fit_survives_rebuilds(registry: MemoryRegistry, store: LeaseManager) -> None:
    acquire(store, "a", "198.18.0.2"), acquire(store, "b", "198.18.0.3")
    store.release("198.18.0.2")
    rebuilt = manager(registry)
    assert str(acquire(rebuilt, "c", "198.18.0.4").subnet) == "10.244.2.0/24"  # not the freed .0


def test_dual_stack(registry: MemoryRegistry) -> None:
    registry.write_config(NetworkConfig(network=IPv4Network("10.244.0.0/16"),
                                        ipv6_network=IPv6Network("fd00:10:244::/48")))
    s = manager(registry)
    lease = s.acquire("198.18.0.2", node="a", public_ipv6="fd00::2", backend_data=VXLAN,
                      backend_v6_data={"VNI": 1, "VtepMAC": "aa:bb:cc:dd:ee:02"})
    assert (str(lease.subnet), str(lease.ipv6_subnet)) == ("10.244.0.0/24", "fd00:10:244::/64")
    assert manager(registry).leases() == [lease]


def test_new_network_reallocates(store: LeaseManager) -> None:
    acquire(store, "a", "198.18.0.2")
    store.set_network_config(NetworkConfig(network=IPv4Network("10.245.0.0/16")))
    assert str(acquire(store, "a", "198.18.0.2").subnet) == "10.245.0.0/24"
    assert subnets(store.leases()) == ["10.245.0.0/24"]       # the old record is gone


def test_release(store: LeaseManager, caplog) -> None:
    acquire(store, "a", "198.18.0.2")
    store.release("198.18.0.2")
    store.release("198.18.0.2")     # a missing lease is fine
    store.release("198.18.0.77")
    assert store.leases() == []
    assert "release: no lease with PublicIP 198.18.0.77" in caplog.text
    with pytest.raises(InvalidCIDR, match="public IP 'a' is not an IPv4 address"):
        store.release("a")           # the identity is the PublicIP, never a node name


def test_restart_recovery(registry: MemoryRegistry, store: LeaseManager) -> None:
    a, b = acquire(store, "a", "198.18.0.2"), acquire(store, "b", "198.18.0.3")
    restarted = manager(registry)
    assert restarted.leases() == [a, b]
    assert acquire(restarted, "b", "198.18.0.3") == b
    assert str(acquire(restarted, "c", "198.18.0.4").subnet) == "10.244.2.0/24"


def test_duplicate_leases_of_one_public_ip_are_cleaned_up(registry: MemoryRegistry,
                                                          store: LeaseManager) -> None:
    first = acquire(store, "a", "198.18.0.2")
    registry.create_subnet(replace(first, subnet=IPv4Network("10.244.7.0/24")))
    assert len(store.leases()) == 2
    assert acquire(store, "a", "198.18.0.2").subnet == first.subnet    # the older one
    assert subnets(store.leases()) == ["10.244.0.0/24"]


# -- TTL ---------------------------------------------------------------------------------

def test_expired_leases_are_free(registry: MemoryRegistry, clock: Clock) -> None:
    registry.write_config(SMALL)
    s = manager(registry, clock)
    a = acquire(s, "a", "198.18.0.2", ttl=10)
    assert a.expires_at == clock.now + 10
    acquire(s, "b", "198.18.0.3")
    with pytest.raises(CIDRExhausted):
        acquire(s, "c", "198.18.0.4")
    clock.now += 10
    assert subnets(s.leases()) == ["10.244.1.0/24"]
    assert str(acquire(s, "c", "198.18.0.4").subnet) == "10.244.0.0/24"
    assert sorted(r.lease.node for r in registry.list_subnets()[1]) == ["b", "c"]   # a's is gone


def test_expired_lease_still_free_is_kept(store: LeaseManager, clock: Clock) -> None:
    acquire(store, "a", "198.18.0.2", ttl=1), acquire(store, "b", "198.18.0.3", ttl=1)
    clock.now += 2
    assert str(acquire(store, "b", "198.18.0.3").subnet) == "10.244.1.0/24"     # its old subnet
    assert str(acquire(store, "c", "198.18.0.4").subnet) == "10.244.2.0/24"
    assert str(acquire(store, "a", "198.18.0.2").subnet) == "10.244.0.0/24"


def test_expired_lease_overlapped_since_is_replaced(registry: MemoryRegistry,
                                                    clock: Clock) -> None:
    s = manager(registry, clock)
    acquire(s, "a", "198.18.0.2", ttl=1)
    clock.now += 2
    # Meanwhile, under an older config, b got a /23 covering a's old /24.
    registry.create_subnet(Lease(node="b", subnet=IPv4Network("10.244.0.0/23"),
                                 public_ip="198.18.0.3", backend_data=VXLAN))
    assert str(acquire(s, "a", "198.18.0.2").subnet) == "10.244.2.0/24"
    assert sorted(r.key for r in registry.list_subnets()[1]) == ["10.244.0.0-23", "10.244.2.0-24"]


def test_default_ttl_and_renew(registry: MemoryRegistry, clock: Clock) -> None:
    s = manager(registry, clock, default_ttl=60)
    a = acquire(s, "a", "198.18.0.2")
    assert a.expires_at == clock.now + 60
    clock.now += 30
    renewed = s.renew(a)
    assert renewed.expires_at == clock.now + 60
    assert renewed.subnet == a.subnet and s.leases() == [renewed]
    assert s.renew(a, ttl=5).expires_at == clock.now + 5


def test_renew_after_expiry_takes_it_back_if_free(store: LeaseManager, clock: Clock,
                                                   caplog) -> None:
    a = acquire(store, "a", "198.18.0.2", ttl=1)
    clock.now += 2
    assert store.leases() == []
    assert store.renew(a, ttl=10).expires_at == clock.now + 10
    assert subnets(store.leases()) == ["10.244.0.0/24"]
    assert "lease 10.244.0.0-24 of 198.18.0.2 (node a) had expired: taken back" in caplog.text
    store.release("198.18.0.2")                         # released, free again: taken back
    assert store.renew(a).subnet == a.subnet


def test_renew_conflicts(registry: MemoryRegistry, clock: Clock) -> None:
    registry.write_config(NetworkConfig(network=IPv4Network("10.244.0.0/24"), subnet_len=24))
    s = manager(registry, clock)
    a = acquire(s, "a", "198.18.0.2", ttl=1)
    clock.now += 2
    b = acquire(s, "b", "198.18.0.3")                     # takes a's expired subnet
    with pytest.raises(LeaseConflict, match=r"198.18.0.3 \(node b\) holds it now"):
        s.renew(a)
    with pytest.raises(LeaseConflict, match=r"198.18.0.3 \(node b\) holds 10.244.0.0/24, "
                                            "not 10.9.0.0/24"):
        s.renew(replace(b, subnet=IPv4Network("10.9.0.0/24")))
    with pytest.raises(LeaseConflict, match="no longer fits the network"):
        s.renew(replace(a, public_ip="198.18.0.9", subnet=IPv4Network("10.9.0.0/24")))
    with pytest.raises(InvalidCIDR, match="public IP"):
        s.renew(replace(a, public_ip=""))


# -- races -------------------------------------------------------------------------------------

class RivalFirst:
    """A registry through which *rival* acquires first, at our first create."""

    def __init__(self, registry: MemoryRegistry, rival) -> None:
        self.registry, self.rival, self.creates = registry, rival, 0

    def __getattr__(self, name: str):
        return getattr(self.registry, name)

    def create_subnet(self, lease: Lease):
        self.creates += 1
        if self.creates == 1:
            self.rival()
        return self.registry.create_subnet(lease)


def test_lost_race_takes_the_next_subnet(registry: MemoryRegistry, store: LeaseManager) -> None:
    racing = RivalFirst(registry, lambda: acquire(store, "rival", "198.18.0.3"))
    assert str(acquire(manager(racing), "n1", "198.18.0.2").subnet) == "10.244.1.0/24"
    assert subnets(store.leases()) == ["10.244.0.0/24", "10.244.1.0/24"]
    assert racing.creates == 2


def test_lost_update_is_retried(registry: MemoryRegistry, store: LeaseManager) -> None:
    a = acquire(store, "a", "198.18.0.2")

    class RivalUpdates(RivalFirst):
        def update_subnet(self, lease, *, mod_revision):
            self.creates += 1
            if self.creates == 1:
                self.rival()
            return self.registry.update_subnet(lease, mod_revision=mod_revision)

    racing = RivalUpdates(registry, lambda: store.renew(a, ttl=5))
    assert manager(racing).renew(a).expires_at is None and racing.creates == 2


def test_losing_every_race_is_a_lease_conflict(registry: MemoryRegistry) -> None:
    class Taken(RivalFirst):
        def create_subnet(self, lease):
            self.creates += 1
            return None

    taken, pauses = Taken(registry, None), []
    s = LeaseManager(taken, sleep=pauses.append)
    with pytest.raises(LeaseConflict, match="Max retries reached trying to acquire a subnet"):
        acquire(s, "a", "198.18.0.2")
    assert taken.creates == RACE_RETRIES and len(pauses) == RACE_RETRIES - 1
    assert all(0 <= p <= 1.0 for p in pauses)


# -- watch -----------------------------------------------------------------------------------

def test_watch(registry: MemoryRegistry, store: LeaseManager, clock: Clock) -> None:
    a = acquire(store, "a", "198.18.0.2", ttl=100)
    watcher = manager(registry, clock)
    assert [(e.kind, e.lease) for e in watcher.watch(1)] == [("added", a)]
    assert list(watcher.watch(0.05)) == []
    b = acquire(store, "b", "198.18.0.3")
    assert [(e.kind, e.lease) for e in watcher.watch(0)] == [("added", b)]   # no wait needed
    store.renew(a, ttl=200)                            # a renewal alone is no event
    assert list(watcher.watch(0.05)) == []
    changed = store.acquire("198.18.0.3", node="b", backend_data={"VNI": 1, "VtepMAC": "x"})
    assert [(e.kind, e.lease) for e in watcher.watch(1)] == [("added", changed)]
    store.release("198.18.0.3")
    assert [(e.kind, e.lease.node) for e in watcher.watch(1)] == [("removed", "b")]
    clock.now += 1000                                  # a expires: no write, still an event
    assert [(e.kind, e.lease.node) for e in watcher.watch(1)] == [("removed", "a")]


def test_watch_wakes_up_on_a_change(registry: MemoryRegistry, store: LeaseManager) -> None:
    watcher = manager(registry)
    assert list(watcher.watch(0)) == []
    timer = threading.Timer(0.05, lambda: acquire(store, "a", "198.18.0.2"))
    timer.start()
    started = time.monotonic()
    assert [e.lease.node for e in watcher.watch(10)] == ["a"]
    assert time.monotonic() - started < 5
    timer.join()


def test_watch_notices_an_expiry_while_waiting(registry: MemoryRegistry) -> None:
    s = manager(registry)
    s.acquire("198.18.0.2", node="a", backend_data=VXLAN, ttl=0.2)
    assert [e.kind for e in s.watch(0)] == ["added"]
    started = time.monotonic()
    assert [e.kind for e in s.watch(10)] == ["removed"]
    assert time.monotonic() - started < 5


def test_diff_leases() -> None:
    a = Lease(node="a", subnet=IPv4Network("10.0.0.0/24"), public_ip="1.1.1.1", expires_at=1)
    b = Lease(node="b", subnet=IPv4Network("10.0.1.0/24"), public_ip="1.1.1.2")
    renewed = replace(a, expires_at=99)
    moved = replace(a, subnet=IPv4Network("10.0.9.0/24"))
    assert diff_leases({}, {"a": a, "b": b}) == [LeaseEvent(kind="added", lease=a),
                                                 LeaseEvent(kind="added", lease=b)]
    assert diff_leases({"a": a}, {"a": renewed}) == []
    assert diff_leases({"a": a, "b": b}, {"a": moved}) == [
        LeaseEvent(kind="removed", lease=b), LeaseEvent(kind="added", lease=moved)]


# -- bad input -----------------------------------------------------------------------------

def test_exhausted(registry: MemoryRegistry) -> None:
    registry.write_config(SMALL)
    s = manager(registry)
    acquire(s, "a", "198.18.0.2"), acquire(s, "b", "198.18.0.3")
    before = registry.list_subnets()
    with pytest.raises(CIDRExhausted) as exc:
        acquire(s, "c", "198.18.0.4")
    assert str(exc.value) == EXHAUSTED_MESSAGE
    assert exc.value.reason == "CIDRNotAvailable"
    assert registry.list_subnets() == before            # nothing written


@pytest.mark.parametrize("config,match", [
    (NetworkConfig(network=IPv4Network("10.244.0.0/16"), subnet_len=8),
     "mask size of cluster CIDR must be less than or equal to"),
    (NetworkConfig(network=IPv4Network("10.244.0.0/16"), subnet_len=33), "not valid for IPv4"),
    (NetworkConfig(network=None), "no cluster CIDR"),
])
def test_invalid_network_config(config: NetworkConfig, match: str) -> None:
    registry = MemoryRegistry()
    with pytest.raises(InvalidCIDR, match=match):
        manager(registry).set_network_config(config)
    assert registry.list_subnets()[0] == 0               # nothing written


def test_no_network_config() -> None:
    s = manager(MemoryRegistry())
    for call in (s.get_network_config, lambda: acquire(s, "a", "198.18.0.2")):
        with pytest.raises(NetworkConfigNotFound, match="no network config"):
            call()


def test_bad_public_ip(store: LeaseManager) -> None:
    with pytest.raises(InvalidCIDR, match="public IP 'nope' is not an IPv4 address"):
        acquire(store, "a", "nope")
    with pytest.raises(InvalidCIDR, match="public IP 'nope' is not an IPv6 address"):
        acquire(store, "a", "198.18.0.2", public_ipv6="nope")
