"""FileLeaseStore: allocation, several processes racing, restart, TTL, watch, bad input."""

from __future__ import annotations

import json
import multiprocessing
import os
import stat
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path

import pytest

from nodeipam import EXHAUSTED_MESSAGE, CIDRExhausted, FileLeaseStore, InvalidCIDR, Lease, \
    LeaseConflict, NetworkConfig, NetworkConfigNotFound, StoreCorrupt, StoreUnavailable

VXLAN = {"VNI": 1, "VtepMAC": "aa:bb:cc:dd:ee:01"}
NETWORK = NetworkConfig(network=IPv4Network("10.244.0.0/16"), backend={"Type": "vxlan"})


class Clock:
    """A settable clock for TTL tests."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "leases.json"


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(path: Path, clock: Clock) -> FileLeaseStore:
    s = FileLeaseStore(path, clock=clock, poll_interval=0.01)
    s.set_network_config(NETWORK)
    return s


def acquire(store: FileLeaseStore, node: str, ip: str = "198.18.0.2", **kw) -> Lease:
    return store.acquire(node, public_ip=ip, backend_data=VXLAN, **kw)


def subnets(leases) -> list[str]:
    return [str(lease.subnet) for lease in leases]


# -- allocation ------------------------------------------------------------------------

def test_first_nodes_get_first_blocks(store: FileLeaseStore) -> None:
    a, b = acquire(store, "node-a"), acquire(store, "node-b", "198.18.0.3")
    assert (str(a.subnet), str(b.subnet)) == ("10.244.0.0/24", "10.244.1.0/24")
    assert a == Lease(node="node-a", subnet=IPv4Network("10.244.0.0/24"),
                      public_ip="198.18.0.2", backend_data=VXLAN)
    assert store.leases() == [a, b]


def test_acquire_keeps_the_nodes_subnet_and_updates_attrs(store: FileLeaseStore) -> None:
    acquire(store, "node-a"), acquire(store, "node-b")
    again = store.acquire("node-a", public_ip="198.18.0.9", backend_data={"VNI": 7})
    assert str(again.subnet) == "10.244.0.0/24"
    assert (again.public_ip, again.backend_data) == ("198.18.0.9", {"VNI": 7})
    assert len(store.leases()) == 2


def test_file_format(store: FileLeaseStore, path: Path) -> None:
    acquire(store, "node-a")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.with_name("leases.json.lock").exists()
    assert json.loads(path.read_text()) == {
        "schema_version": 1,
        "network": {"Network": "10.244.0.0/16", "SubnetLen": 24, "Backend": {"Type": "vxlan"}},
        "last_allocated": ["10.244.0.0/24"],
        "leases": {"node-a": {"subnet": "10.244.0.0/24", "ipv6_subnet": None,
                              "expires_at": None,
                              "attrs": {"PublicIP": "198.18.0.2", "PublicIPv6": None,
                                        "BackendType": "vxlan", "BackendData": VXLAN}}}}
    # no temp file left behind
    assert sorted(p.name for p in path.parent.iterdir()) == ["leases.json", "leases.json.lock"]


def test_next_fit_survives_rebuilds(store: FileLeaseStore) -> None:
    acquire(store, "a"), acquire(store, "b")
    store.release("a")
    assert str(acquire(store, "c").subnet) == "10.244.2.0/24"   # next-fit, not the freed .0


def test_dual_stack(path: Path) -> None:
    s = FileLeaseStore(path)
    s.set_network_config(NetworkConfig(network=IPv4Network("10.244.0.0/16"),
                                       ipv6_network=IPv6Network("fd00:10:244::/48")))
    lease = s.acquire("a", public_ip="198.18.0.2", public_ipv6="fd00::2", backend_data=VXLAN,
                      backend_v6_data={"VNI": 1, "VtepMAC": "aa:bb:cc:dd:ee:02"})
    assert (str(lease.subnet), str(lease.ipv6_subnet)) == ("10.244.0.0/24", "fd00:10:244::/64")
    assert FileLeaseStore(path).leases() == [lease]


def test_new_network_reallocates(store: FileLeaseStore) -> None:
    acquire(store, "a")
    store.set_network_config(NetworkConfig(network=IPv4Network("10.245.0.0/16")))
    assert str(acquire(store, "a").subnet) == "10.245.0.0/24"


def test_release(store: FileLeaseStore) -> None:
    acquire(store, "a")
    store.release("a")
    store.release("a")          # a missing lease is fine
    store.release("never-was")
    assert store.leases() == []


# -- several processes -------------------------------------------------------------------

def _acquire_in_child(path: str, nodes: list[str], barrier, results) -> None:
    store = FileLeaseStore(path)
    barrier.wait()
    for node in nodes:
        lease = store.acquire(node, public_ip="198.18.0.2", backend_data=VXLAN)
        results.put((node, str(lease.subnet)))


def test_processes_racing_get_distinct_subnets(store: FileLeaseStore, path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    procs_n, per_proc = 8, 6
    barrier, results = ctx.Barrier(procs_n), ctx.Queue()
    procs = [ctx.Process(target=_acquire_in_child,
                         args=(str(path), [f"p{i}-n{j}" for j in range(per_proc)], barrier,
                               results)) for i in range(procs_n)]
    for p in procs:
        p.start()
    got = dict(results.get(timeout=60) for _ in range(procs_n * per_proc))
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert len(set(got.values())) == procs_n * per_proc
    assert {lease.node: str(lease.subnet) for lease in store.leases()} == got
    assert sorted(got.values(), key=lambda c: IPv4Network(c)) == \
        [f"10.244.{i}.0/24" for i in range(procs_n * per_proc)]


def test_restart_recovery(store: FileLeaseStore, path: Path) -> None:
    a, b = acquire(store, "a"), acquire(store, "b")
    restarted = FileLeaseStore(path)
    assert restarted.leases() == [a, b]
    assert restarted.acquire("b", public_ip="198.18.0.2", backend_data=VXLAN) == b
    assert str(acquire(restarted, "c").subnet) == "10.244.2.0/24"


# -- TTL ---------------------------------------------------------------------------------

def test_expired_leases_are_free(path: Path, clock: Clock) -> None:
    s = FileLeaseStore(path, clock=clock)
    s.set_network_config(NetworkConfig(network=IPv4Network("10.244.0.0/23")))
    a = acquire(s, "a", ttl=10)
    assert a.expires_at == clock.now + 10
    acquire(s, "b")
    with pytest.raises(CIDRExhausted):
        acquire(s, "c")
    clock.now += 10
    assert subnets(s.leases()) == ["10.244.1.0/24"]
    assert str(acquire(s, "c").subnet) == "10.244.0.0/24"
    assert "a" not in json.loads(path.read_text())["leases"]      # dropped on write


def test_expired_lease_still_free_is_kept(store: FileLeaseStore, clock: Clock) -> None:
    acquire(store, "a", ttl=1), acquire(store, "b", ttl=1)
    clock.now += 2
    assert str(acquire(store, "b").subnet) == "10.244.1.0/24"     # its old subnet
    assert str(acquire(store, "c").subnet) == "10.244.2.0/24"
    assert str(acquire(store, "a").subnet) == "10.244.0.0/24"


def test_default_ttl_and_renew(path: Path, clock: Clock) -> None:
    s = FileLeaseStore(path, clock=clock, default_ttl=60)
    s.set_network_config(NETWORK)
    a = acquire(s, "a")
    assert a.expires_at == clock.now + 60
    clock.now += 30
    renewed = s.renew(a)
    assert renewed.expires_at == clock.now + 60
    assert renewed.subnet == a.subnet and s.leases() == [renewed]
    assert s.renew(a, ttl=5).expires_at == clock.now + 5


def test_renew_after_expiry_takes_it_back_if_free(store: FileLeaseStore,
                                                   clock: Clock) -> None:
    a = acquire(store, "a", ttl=1)
    clock.now += 2
    assert store.leases() == []
    assert store.renew(a, ttl=10).expires_at == clock.now + 10
    assert subnets(store.leases()) == ["10.244.0.0/24"]


def test_renew_conflicts(path: Path, clock: Clock) -> None:
    s = FileLeaseStore(path, clock=clock)
    s.set_network_config(NetworkConfig(network=IPv4Network("10.244.0.0/24"), subnet_len=24))
    a = acquire(s, "a", ttl=1)
    clock.now += 2
    acquire(s, "b")                                   # takes a's expired subnet
    with pytest.raises(LeaseConflict, match="node b holds it now"):
        s.renew(a)
    with pytest.raises(LeaseConflict, match="node b holds 10.244.0.0/24, not 10.9.0.0/24"):
        s.renew(Lease(node="b", subnet=IPv4Network("10.9.0.0/24")))


# -- watch ---------------------------------------------------------------------------------

def test_watch(store: FileLeaseStore, path: Path, clock: Clock) -> None:
    a = acquire(store, "a", ttl=100)
    watcher = FileLeaseStore(path, clock=clock, poll_interval=0.01)
    assert [(e.kind, e.lease) for e in watcher.watch(1)] == [("added", a)]
    assert list(watcher.watch(0.05)) == []
    b = acquire(store, "b", "198.18.0.3")
    assert [(e.kind, e.lease) for e in watcher.watch(1)] == [("added", b)]
    store.renew(a, ttl=200)                            # a renewal alone is no event
    assert list(watcher.watch(0.05)) == []
    moved = acquire(store, "b", "198.18.0.4")
    assert [(e.kind, e.lease) for e in watcher.watch(1)] == [("added", moved)]
    store.release("b")
    assert [(e.kind, e.lease.node) for e in watcher.watch(1)] == [("removed", "b")]
    clock.now += 1000                                  # a expires: no write, still an event
    assert [(e.kind, e.lease.node) for e in watcher.watch(1)] == [("removed", "a")]


def test_watch_waits_for_the_first_lease(path: Path) -> None:
    watcher = FileLeaseStore(path, poll_interval=0.01)
    assert list(watcher.watch(0.05)) == []              # no file yet
    store = FileLeaseStore(path)
    store.set_network_config(NETWORK)
    a = acquire(store, "a")
    assert [e.lease for e in watcher.watch(1)] == [a]


# -- bad input -----------------------------------------------------------------------------

def test_exhausted(path: Path) -> None:
    s = FileLeaseStore(path)
    s.set_network_config(NetworkConfig(network=IPv4Network("10.244.0.0/23")))
    acquire(s, "a"), acquire(s, "b")
    before = path.read_bytes()
    with pytest.raises(CIDRExhausted) as exc:
        acquire(s, "c")
    assert str(exc.value) == EXHAUSTED_MESSAGE
    assert exc.value.reason == "CIDRNotAvailable"
    assert path.read_bytes() == before


@pytest.mark.parametrize("config,match", [
    (NetworkConfig(network=IPv4Network("10.244.0.0/16"), subnet_len=8),
     "mask size of cluster CIDR must be less than or equal to"),
    (NetworkConfig(network=IPv4Network("10.244.0.0/16"), subnet_len=33), "not valid for IPv4"),
    (NetworkConfig(network=None), "no cluster CIDR"),
])
def test_invalid_network_config(path: Path, config: NetworkConfig, match: str) -> None:
    with pytest.raises(InvalidCIDR, match=match):
        FileLeaseStore(path).set_network_config(config)
    assert not path.exists()


def test_no_network_config(path: Path) -> None:
    s = FileLeaseStore(path)
    for call in (s.get_network_config, lambda: acquire(s, "a")):
        with pytest.raises(NetworkConfigNotFound, match=str(path)):
            call()


def test_bad_public_ip(store: FileLeaseStore) -> None:
    with pytest.raises(InvalidCIDR, match="public IP 'nope' is not an IPv4 address"):
        acquire(store, "a", ip="nope")


@pytest.mark.parametrize("content,match", [
    ("{not json", "not a lease store"),
    ('{"schema_version": 1}', "no leases object"),
    ('{"schema_version": 9, "leases": {}}', "schema_version 9 is not 1"),
    ('{"schema_version": 1, "leases": {"n1": {"subnet": "garbage"}}}',
     "lease of node 'n1'.*bad lease entry"),
    ('{"schema_version": 1, "leases": {"n1": {"subnet": "fd00::/64", "ipv6_subnet": null,'
     ' "expires_at": null, "attrs": {"PublicIP": "1.1.1.1"}}}}', "wrong IP family"),
    ('{"schema_version": 1, "leases": {"n1": {"subnet": null, "ipv6_subnet": null,'
     ' "expires_at": null, "attrs": []}}}', "not a flannel LeaseAttrs"),
    ('{"schema_version": 1, "network": [1], "leases": {}}', "network config is not a JSON"),
])
def test_corrupt_store_file_names_the_file(path: Path, content: str, match: str) -> None:
    path.parent.mkdir(parents=True)
    path.write_text(content)
    s = FileLeaseStore(path)
    with pytest.raises(StoreCorrupt, match=match) as exc:
        s.leases() if "network" not in content else s.get_network_config()
    assert str(path) in str(exc.value)
    assert exc.value.where.startswith(str(path))


def test_unwritable_location_is_unavailable(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    s = FileLeaseStore(tmp_path / "file" / "leases.json")
    with pytest.raises(StoreUnavailable, match="leases.json.lock"):
        s.set_network_config(NETWORK)


def test_lock_file_is_not_the_store(path: Path, store: FileLeaseStore) -> None:
    acquire(store, "a")
    assert os.path.getsize(path.with_name("leases.json.lock")) == 0
