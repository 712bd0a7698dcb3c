"""The file backend: its format (schema 2, schema 1 migrated), several processes racing,
restart from the file, watching another process's writes, bad files. The lease policy
is tested once in test_nodeipam_manager; the storage contract in test_nodeipam_registry."""

from __future__ import annotations

import json
import multiprocessing
import os
import stat
from ipaddress import IPv4Network
from pathlib import Path

import pytest

from nodeipam import FileLeaseStore, Lease, NetworkConfig, NetworkConfigNotFound, \
    StoreCorrupt, StoreUnavailable

VXLAN = {"VNI": 1, "VtepMAC": "aa:bb:cc:dd:ee:01"}
NETWORK = NetworkConfig(network=IPv4Network("10.244.0.0/16"), backend={"Type": "vxlan"})
ATTRS = {"PublicIP": "198.18.0.2", "PublicIPv6": None, "BackendType": "vxlan",
         "BackendData": VXLAN}


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "leases.json"


@pytest.fixture
def store(path: Path) -> FileLeaseStore:
    s = FileLeaseStore(path, poll_interval=0.01)
    s.set_network_config(NETWORK)
    return s


def acquire(store: FileLeaseStore, node: str, ip: str = "198.18.0.2", **kw) -> Lease:
    return store.acquire(ip, node=node, backend_data=VXLAN, **kw)


def test_file_format(store: FileLeaseStore, path: Path) -> None:
    acquire(store, "node-a")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.with_name("leases.json.lock").exists()
    assert json.loads(path.read_text()) == {
        "schema_version": 2,
        "revision": 2,
        "network": {"Network": "10.244.0.0/16", "SubnetLen": 24, "Backend": {"Type": "vxlan"}},
        "subnets": {"10.244.0.0-24": {"node": "node-a", "subnet": "10.244.0.0/24",
                                      "ipv6_subnet": None, "expires_at": None,
                                      "create_revision": 2, "mod_revision": 2,
                                      "attrs": ATTRS}}}
    # no temp file left behind
    assert sorted(p.name for p in path.parent.iterdir()) == ["leases.json", "leases.json.lock"]


def test_schema_1_is_read_and_migrated_on_the_next_write(path: Path) -> None:
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({
        "schema_version": 1, "network": {"Network": "10.244.0.0/16", "SubnetLen": 24},
        "last_allocated": ["10.244.0.0/24"],
        "leases": {name: {"subnet": subnet, "ipv6_subnet": None, "expires_at": None,
                          "attrs": dict(ATTRS, PublicIP=ip)}
                   for name, subnet, ip in [("node-a", "10.244.0.0/24", "198.18.0.2"),
                                            ("node-b", "10.244.1.0/24", "198.18.0.3")]}}))
    s = FileLeaseStore(path)
    assert [(lease.node, str(lease.subnet)) for lease in s.leases()] == \
        [("node-a", "10.244.0.0/24"), ("node-b", "10.244.1.0/24")]
    assert json.loads(path.read_text())["schema_version"] == 1          # reading changes nothing
    assert acquire(s, "node-b", "198.18.0.3").subnet == IPv4Network("10.244.1.0/24")
    # next-fit carries on after last_allocated (node-a's record is the newest)
    assert str(acquire(s, "node-c", "198.18.0.4").subnet) == "10.244.2.0/24"
    doc = json.loads(path.read_text())
    assert doc["schema_version"] == 2 and "leases" not in doc and "last_allocated" not in doc
    assert {key: entry["node"] for key, entry in doc["subnets"].items()} == {
        "10.244.0.0-24": "node-a", "10.244.1.0-24": "node-b", "10.244.2.0-24": "node-c"}


def test_schema_1_last_allocated_keeps_next_fit(path: Path) -> None:
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({
        "schema_version": 1, "network": {"Network": "10.244.0.0/16", "SubnetLen": 24},
        "last_allocated": ["10.244.5.0/24"],
        "leases": {"a": {"subnet": "10.244.5.0/24", "ipv6_subnet": None, "expires_at": None,
                         "attrs": ATTRS},
                   "z": {"subnet": "10.244.1.0/24", "ipv6_subnet": None, "expires_at": None,
                         "attrs": dict(ATTRS, PublicIP="198.18.0.9")}}}))
    assert str(acquire(FileLeaseStore(path), "c", "198.18.0.4").subnet) == "10.244.6.0/24"


# -- several processes -------------------------------------------------------------------

def _acquire_in_child(path: str, i: int, nodes: list[str], barrier, results) -> None:
    store = FileLeaseStore(path)
    barrier.wait()
    for j, node in enumerate(nodes):
        lease = store.acquire(f"198.18.{i}.{j + 1}", node=node, backend_data=VXLAN)
        results.put((node, str(lease.subnet)))


def test_processes_racing_get_distinct_subnets(store: FileLeaseStore, path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    procs_n, per_proc = 8, 6
    barrier, results = ctx.Barrier(procs_n), ctx.Queue()
    procs = [ctx.Process(target=_acquire_in_child,
                         args=(str(path), i, [f"p{i}-n{j}" for j in range(per_proc)], barrier,
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
    a, b = acquire(store, "a"), acquire(store, "b", "198.18.0.3")
    restarted = FileLeaseStore(path)
    assert restarted.leases() == [a, b]
    assert acquire(restarted, "b", "198.18.0.3") == b
    assert str(acquire(restarted, "c", "198.18.0.4").subnet) == "10.244.2.0/24"


def test_default_ttl_and_clock(path: Path) -> None:
    s = FileLeaseStore(path, default_ttl=60, clock=lambda: 1000.0)
    s.set_network_config(NETWORK)
    assert acquire(s, "a").expires_at == 1060.0
    assert json.loads(path.read_text())["subnets"]["10.244.0.0-24"]["expires_at"] == 1060.0


def test_watch_sees_another_process_writes(store: FileLeaseStore, path: Path) -> None:
    watcher = FileLeaseStore(path, poll_interval=0.01)
    a = acquire(store, "a")
    assert [(e.kind, e.lease) for e in watcher.watch(1)] == [("added", a)]
    assert list(watcher.watch(0.05)) == []
    store.release("198.18.0.2")
    assert [(e.kind, e.lease.node) for e in watcher.watch(1)] == [("removed", "a")]


def test_watch_waits_for_the_first_lease(path: Path) -> None:
    watcher = FileLeaseStore(path, poll_interval=0.01)
    assert list(watcher.watch(0.05)) == []              # no file yet
    store = FileLeaseStore(path)
    store.set_network_config(NETWORK)
    a = acquire(store, "a")
    assert [e.lease for e in watcher.watch(1)] == [a]


# -- bad files -----------------------------------------------------------------------------

def test_no_network_config(path: Path) -> None:
    s = FileLeaseStore(path)
    for call in (s.get_network_config, lambda: acquire(s, "a")):
        with pytest.raises(NetworkConfigNotFound, match=str(path)):
            call()


ENTRY = '"node": "n1", "create_revision": 1, "mod_revision": 1'


@pytest.mark.parametrize("content,match", [
    ("{not json", "not a lease store"),
    ("[]", "not a JSON object"),
    ('{"schema_version": 2}', "no subnets or revision"),
    ('{"schema_version": 1}', "no leases object"),
    ('{"schema_version": 9, "leases": {}}', "schema_version 9 is not 1 or 2"),
    ('{"schema_version": 1, "leases": {"n1": {"subnet": "garbage"}}}',
     "lease of node 'n1'.*bad lease entry"),
    ('{"schema_version": 2, "revision": 1, "subnets": {"10.244.0.0-24": {"subnet": "garbage"}}}',
     "subnet '10.244.0.0-24'.*bad lease entry"),
    ('{"schema_version": 2, "revision": 1, "subnets": {"10.9.0.0-24": {"subnet": "10.244.0.0/24",'
     ' "ipv6_subnet": null, "expires_at": null, "attrs": {"PublicIP": "1.1.1.1"}, ' + ENTRY +
     '}}}', "does not name 10.244.0.0/24"),
    ('{"schema_version": 2, "revision": 1, "subnets": {"10.244.0.0-24": {"subnet":'
     ' "10.244.0.0/24", "ipv6_subnet": null, "expires_at": null, "node": "n1",'
     ' "attrs": {"PublicIP": "1.1.1.1"}}}}', "bad subnet entry.*create_revision"),
    ('{"schema_version": 1, "leases": {"n1": {"subnet": "fd00::/64", "ipv6_subnet": null,'
     ' "expires_at": null, "attrs": {"PublicIP": "1.1.1.1"}}}}', "wrong IP family"),
    ('{"schema_version": 1, "leases": {"n1": {"subnet": "10.0.0.0/24", "ipv6_subnet": null,'
     ' "expires_at": null, "attrs": []}}}', "not a flannel LeaseAttrs"),
    ('{"schema_version": 2, "revision": 0, "network": [1], "subnets": {}}',
     "network config is not a JSON"),
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


def test_a_failed_compare_writes_nothing(store: FileLeaseStore, path: Path) -> None:
    record = store.file.create_subnet(Lease(node="a", subnet=IPv4Network("10.244.0.0/24"),
                                            public_ip="198.18.0.2"))
    before = path.stat().st_mtime_ns, path.read_bytes()
    assert store.file.create_subnet(record.lease) is None
    assert store.file.update_subnet(record.lease, mod_revision=99) is None
    assert (path.stat().st_mtime_ns, path.read_bytes()) == before
