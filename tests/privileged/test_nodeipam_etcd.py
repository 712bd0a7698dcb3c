"""The etcd backend against a real etcd (Debian's etcd-server): the registry contract,
flannel's bytes, etcd's TTLs and transactions, and the lease policy over them.

Each test makes a throwaway network namespace (``testbed.netns``), runs its own etcd there on 127.0.0.1
with a throwaway data dir, and talks to it from the test's thread switched into that
namespace (a thread's namespace is its own: etcd3gw opens its sockets in the calling
thread, and threads a test starts inherit it). The thread is switched back, etcd killed,
the namespace and the dir removed, even when the test fails: the host's network is
never touched. A missing etcd binary or etcd3gw skips, or fails under
CRI_SHIM_REQUIRE_ALL=1, like every other missing prerequisite (tests/conftest.py).
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import json
import os
import threading
import time
import urllib.request
from collections.abc import Iterator
from ipaddress import IPv4Network, IPv6Network

import pytest

from nodeipam import EXHAUSTED_MESSAGE, CIDRExhausted, InvalidCIDR, LeaseConflict, \
    LeaseManager, NetworkConfig, NetworkConfigNotFound, StoreUnavailable
import testbed.etcd
from testbed.netns import Namespace
from tests.unit.nodeipam.registry_contract import RegistryContract

pytestmark = pytest.mark.privileged

ETCD = testbed.etcd.ETCD
REQUIRE_ALL = os.environ.get("CRI_SHIM_REQUIRE_ALL") == "1"
NETWORK = NetworkConfig(network=IPv4Network("10.244.0.0/16"), backend={"Type": "vxlan"})
SUBNETS = "/coreos.com/network/subnets/"
CLONE_NEWNET = 0x40000000
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))   # no proxies


def _missing() -> str | None:
    if not os.access(ETCD, os.X_OK):
        return f"needs Debian's etcd-server ({ETCD})"
    try:
        import etcd3gw  # noqa: F401
    except ImportError:
        return "needs the etcd3gw package"
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    return None


@pytest.fixture(autouse=True)
def _etcd_prerequisites() -> None:
    missing = _missing()
    if missing:
        if REQUIRE_ALL:
            pytest.fail(f"etcd test cannot run: {missing} (CRI_SHIM_REQUIRE_ALL=1)")
        pytest.skip(missing)


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextlib.contextmanager
def inside(ns: Namespace) -> Iterator[None]:
    """The calling thread in *ns*'s network namespace for the block, and back after."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        target = os.open(ns.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(home)


class Etcd(testbed.etcd.Etcd):
    """The rig's etcd on 127.0.0.1 in a throwaway namespace, with raw access for the
    tests that check flannel's bytes."""

    def raw(self, key: str) -> tuple[bytes, dict] | None:
        """The value and metadata at *key*, read without nodeipam."""
        body = {"key": base64.b64encode(key.encode()).decode()}
        req = urllib.request.Request(self.endpoint + "/v3/kv/range", method="POST",
                                     data=json.dumps(body).encode())
        with _OPENER.open(req, timeout=5) as resp:
            kvs = json.load(resp).get("kvs")
        return (base64.b64decode(kvs[0].get("value", "")), kvs[0]) if kvs else None

    def client(self):
        import etcd3gw
        client = etcd3gw.client(host="127.0.0.1", port=2379)
        client.session.trust_env = False
        return client


@pytest.fixture
def etcd() -> Iterator[Etcd]:
    ns = Namespace("crishim-etcd")
    try:
        server = Etcd(ns)
        try:
            with inside(ns):
                server.start()
                yield server
        finally:
            server.stop()
    finally:
        ns.delete()


def make_store(etcd: Etcd, **kw):
    from nodeipam.etcdstore import EtcdLeaseStore
    return EtcdLeaseStore(etcd.endpoint, timeout=5, poll_interval=0.05, **kw)


@pytest.fixture
def store(etcd: Etcd):
    s = make_store(etcd)
    s.set_network_config(NETWORK)
    return s


def vxlan(n: int) -> dict:
    return {"VNI": 1, "VtepMAC": f"aa:bb:cc:dd:{n >> 8:02x}:{n & 0xFF:02x}"}


def lease_ttl(etcd: Etcd, key: str) -> tuple[int, int]:
    import etcd3gw
    lease_id = int(etcd.raw(key)[1]["lease"])
    return lease_id, etcd3gw.Lease(lease_id, etcd.client()).ttl()


# -- the registry contract -------------------------------------------------------------

class TestEtcdRegistry(RegistryContract):
    keeps_labels = False        # flannel's LeaseAttrs have no field for a node name

    @pytest.fixture
    def registry(self, etcd: Etcd):
        from nodeipam.etcdstore import EtcdRegistry
        return EtcdRegistry(etcd.endpoint, poll_interval=0.05)

    @pytest.fixture
    def other(self, etcd: Etcd):
        from nodeipam.etcdstore import EtcdRegistry
        return EtcdRegistry(etcd.endpoint, poll_interval=0.05)


# -- flannel's layout, etcd's TTLs and transactions --------------------------------------

def test_acquire_renew_release(etcd: Etcd, store) -> None:
    a = store.acquire("198.18.0.2", node="node-a", backend_data=vxlan(1))
    assert (a.node, str(a.subnet)) == ("node-a", "10.244.0.0/24")
    key = SUBNETS + "10.244.0.0-24"
    first_id, ttl = lease_ttl(etcd, key)
    assert 86000 < ttl <= 86400                                  # flannel's 24h
    assert abs(a.expires_at - time.time() - 86400) < 60
    renewed = store.renew(a, ttl=600)
    second_id, ttl = lease_ttl(etcd, key)
    assert second_id != first_id and 500 < ttl <= 600
    import etcd3gw
    assert etcd3gw.Lease(first_id, etcd.client()).ttl() < 0      # the old one was revoked
    assert renewed.subnet == a.subnet and abs(renewed.expires_at - time.time() - 600) < 60
    # the agent restarts: same PublicIP, same subnet
    again = make_store(etcd).acquire("198.18.0.2", node="node-a", backend_data=vxlan(1))
    assert again.subnet == a.subnet
    b = store.acquire("198.18.0.3", node="node-b", backend_data=vxlan(2))
    assert str(b.subnet) == "10.244.1.0/24"
    store.release("198.18.0.2")
    assert etcd.raw(key) is None
    make_store(etcd).release("198.18.0.3")                      # any store, by PublicIP
    assert store.leases() == []


def test_flannel_format_byte_for_byte(etcd: Etcd) -> None:
    s = make_store(etcd)
    s.set_network_config(NetworkConfig(network=IPv4Network("10.244.0.0/16"),
                                       ipv6_network=IPv6Network("fd00:10:244::/56")))
    assert etcd.raw("/coreos.com/network/config")[0] == (
        b'{"Network": "10.244.0.0/16", "SubnetLen": 24, "EnableIPv6": true, '
        b'"IPv6Network": "fd00:10:244::/56", "IPv6SubnetLen": 64, "Backend": {"Type": "vxlan"}}')
    s.acquire("198.18.0.2", node="n1", public_ipv6="fd00::2",
              backend_data={"VNI": 1, "VtepMAC": "aa:bb:cc:dd:ee:01"},
              backend_v6_data={"VNI": 1, "VtepMAC": "aa:bb:cc:dd:ee:02"})
    assert etcd.raw(SUBNETS + "10.244.0.0-24&fd00:10:244::-64")[0] == (
        b'{"PublicIP":"198.18.0.2","PublicIPv6":"fd00::2","BackendType":"vxlan",'
        b'"BackendData":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:01"},'
        b'"BackendV6Data":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:02"}}')
    with pytest.raises(InvalidCIDR, match="needs an IPv4 Network"):
        s.set_network_config(NetworkConfig(network=None, ipv6_network=IPv6Network("fd00::/48")))


def test_ipv4_value_and_a_lease_written_by_flannel(etcd: Etcd, store) -> None:
    client = etcd.client()
    flannel_value = (b'{"PublicIP":"198.18.0.9","PublicIPv6":null,"BackendType":"vxlan",'
                     b'"BackendData":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:09"}}')
    client.put(SUBNETS + "10.244.0.0-24", flannel_value, lease=client.lease(3600))
    client.put(SUBNETS + "junk", b"not a lease")                 # ignored, as flannel does
    a = store.acquire("198.18.0.2", node="n1",
                      backend_data={"VNI": 1, "VtepMAC": "aa:bb:cc:dd:ee:01"})
    assert str(a.subnet) == "10.244.1.0/24"                      # flannel's is occupied
    assert etcd.raw(SUBNETS + "10.244.1.0-24")[0] == (
        b'{"PublicIP":"198.18.0.2","PublicIPv6":null,"BackendType":"vxlan",'
        b'"BackendData":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:01"}}')
    theirs = store.acquire("198.18.0.9", node="flannel-node",
                           backend_data={"VNI": 1, "VtepMAC": "aa:bb:cc:dd:ee:09"})
    assert str(theirs.subnet) == "10.244.0.0/24"                 # found by PublicIP
    assert etcd.raw(SUBNETS + "10.244.0.0-24")[0] == flannel_value


def test_lost_race_takes_the_next_subnet(etcd: Etcd, store) -> None:
    from nodeipam.etcdstore import EtcdRegistry
    rival = make_store(etcd)

    class Slow(EtcdRegistry):
        raced = False

        def create_subnet(self, lease):
            if not self.raced:          # the rival creates the same key first
                self.raced = True
                assert str(rival.acquire("198.18.0.3", node="rival",
                                         backend_data=vxlan(3)).subnet) == "10.244.0.0/24"
            return super().create_subnet(lease)

    slow = LeaseManager(Slow(etcd.endpoint), default_ttl=3600)
    assert str(slow.acquire("198.18.0.2", node="n1",
                            backend_data=vxlan(2)).subnet) == "10.244.1.0/24"
    assert sorted(str(lease.subnet) for lease in store.leases()) == \
        ["10.244.0.0/24", "10.244.1.0/24"]


def test_stores_racing_never_collide(etcd: Etcd, store) -> None:
    stores, per_store = [make_store(etcd) for _ in range(4)], 10
    barrier, got, errors = threading.Barrier(len(stores)), {}, []

    def run(i: int) -> None:
        try:
            barrier.wait()
            for j in range(per_store):
                n = i * per_store + j
                lease = stores[i].acquire(f"198.18.1.{n}", node=f"n{n}", backend_data=vxlan(n))
                got[lease.node] = str(lease.subnet)
        except Exception as exc:        # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(stores))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    assert len(got) == len(set(got.values())) == len(stores) * per_store
    assert sorted(str(lease.subnet) for lease in store.leases()) == \
        sorted(got.values()) == sorted(f"10.244.{i}.0/24" for i in range(40))


def test_watch(etcd: Etcd, store) -> None:
    watcher = make_store(etcd)
    assert list(watcher.watch(0.2)) == []
    store.acquire("198.18.0.2", node="n1", backend_data=vxlan(1))
    events = list(watcher.watch(5))
    assert [(e.kind, e.lease.node, str(e.lease.subnet)) for e in events] == \
        [("added", "198.18.0.2", "10.244.0.0/24")]
    assert events[0].lease.backend_data == vxlan(1)
    b = store.acquire("198.18.0.3", node="n2", backend_data=vxlan(2), ttl=2)
    assert [(e.kind, e.lease.node) for e in watcher.watch(5)] == [("added", "198.18.0.3")]
    store.renew(events[0].lease)                                 # renewal alone: no event
    assert list(watcher.watch(0.3)) == []
    store.acquire("198.18.0.2", node="n1", backend_data=vxlan(7))
    assert [(e.kind, e.lease.backend_data) for e in watcher.watch(5)] == [("added", vxlan(7))]
    # n2's etcd lease runs out: etcd deletes the key
    assert [(e.kind, str(e.lease.subnet)) for e in watcher.watch(15)] == \
        [("removed", str(b.subnet))]
    store.release("198.18.0.2")
    assert [(e.kind, e.lease.node) for e in watcher.watch(5)] == [("removed", "198.18.0.2")]


def test_no_config_and_exhausted(etcd: Etcd) -> None:
    s = make_store(etcd)
    with pytest.raises(NetworkConfigNotFound, match="/coreos.com/network/config"):
        s.acquire("198.18.0.2", node="n1", backend_data=vxlan(1))
    s.set_network_config(NetworkConfig(network=IPv4Network("10.244.0.0/23")))
    for n in range(2):
        s.acquire(f"198.18.0.{n + 2}", node=f"n{n}", backend_data=vxlan(n))
    with pytest.raises(CIDRExhausted) as exc:
        s.acquire("198.18.0.9", node="n9", backend_data=vxlan(9))
    assert str(exc.value) == EXHAUSTED_MESSAGE


def test_renew_conflict(etcd: Etcd, store) -> None:
    a = store.acquire("198.18.0.2", node="n1", backend_data=vxlan(1))
    store.release("198.18.0.2")
    store.acquire("198.18.0.3", node="n2", backend_data=vxlan(2))   # next-fit: .1
    b = store.acquire("198.18.0.4", node="n3", backend_data=vxlan(3))
    assert str(b.subnet) == "10.244.2.0/24"
    assert store.renew(a).subnet == a.subnet       # free again: taken back
    with pytest.raises(LeaseConflict, match="198.18.0.4 holds it now"):
        store.renew(type(a)(node="x", subnet=b.subnet, public_ip="198.18.0.99"))


def test_etcd_down_then_back(etcd: Etcd, store) -> None:
    a = store.acquire("198.18.0.2", node="n1", backend_data=vxlan(1))
    list(store.watch(0.1))
    etcd.pause()
    for call in (lambda: store.acquire("198.18.0.3", node="n2", backend_data=vxlan(2)),
                 lambda: store.renew(a), store.leases, store.get_network_config,
                 lambda: list(store.watch(0.2)), lambda: store.release("198.18.0.2")):
        with pytest.raises(StoreUnavailable, match=f"etcd at {etcd.endpoint}"):
            call()
    etcd.start()                                   # same data dir, same ports
    assert [str(lease.subnet) for lease in store.leases()] == ["10.244.0.0/24"]
    b = store.acquire("198.18.0.3", node="n2", backend_data=vxlan(2))
    assert str(b.subnet) == "10.244.1.0/24"
    assert [(e.kind, e.lease.node) for e in store.watch(5)] == [("added", "198.18.0.3")]
