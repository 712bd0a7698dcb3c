"""EtcdLeaseStore against a real etcd (Debian's etcd-server) on 127.0.0.1.

Each test starts its own etcd on random free ports with a throwaway data dir and always
kills it and removes the dir. A missing etcd binary or etcd3gw skips, or fails under
CRI_SHIM_REQUIRE_ALL=1, like every other missing prerequisite (tests/conftest.py).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network

import pytest

from nodeipam import EXHAUSTED_MESSAGE, CIDRExhausted, LeaseConflict, NetworkConfig, \
    NetworkConfigNotFound, StoreUnavailable

pytestmark = pytest.mark.privileged

ETCD = "/usr/bin/etcd"
REQUIRE_ALL = os.environ.get("CRI_SHIM_REQUIRE_ALL") == "1"
NETWORK = NetworkConfig(network=IPv4Network("10.244.0.0/16"), backend={"Type": "vxlan"})
SUBNETS = "/coreos.com/network/subnets/"


def _missing() -> str | None:
    if not os.access(ETCD, os.X_OK):
        return f"needs Debian's etcd-server ({ETCD})"
    try:
        import etcd3gw  # noqa: F401
    except ImportError:
        return "needs the etcd3gw package"
    return None


@pytest.fixture(autouse=True)
def _etcd_prerequisites() -> None:
    missing = _missing()
    if missing:
        if REQUIRE_ALL:
            pytest.fail(f"etcd test cannot run: {missing} (CRI_SHIM_REQUIRE_ALL=1)")
        pytest.skip(missing)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Etcd:
    """One etcd member listening on 127.0.0.1 only."""

    data_dir: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="nodeipam-etcd-"))
    client_port: int = field(default_factory=_free_port)
    peer_port: int = field(default_factory=_free_port)
    proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    def start(self) -> None:
        peer = f"http://127.0.0.1:{self.peer_port}"
        log = open(os.path.join(self.data_dir, "etcd.log"), "ab")
        self.proc = subprocess.Popen(
            [ETCD, "--name", "test", "--data-dir", os.path.join(self.data_dir, "data"),
             "--listen-client-urls", self.endpoint, "--advertise-client-urls", self.endpoint,
             "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
             "--initial-cluster", f"test={peer}", "--log-level", "warn"],
            stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(self.endpoint + "/health", timeout=1) as resp:
                    if b'"true"' in resp.read():
                        break
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"etcd did not come up: {self.log()}")
            time.sleep(0.1)
        self._check_loopback_only()

    def _check_loopback_only(self) -> None:
        out = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True).stdout
        mine = [line.split()[3] for line in out.splitlines() if f"pid={self.proc.pid}," in line]
        assert mine and all(addr.startswith("127.0.0.1:") for addr in mine), mine

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)

    def log(self) -> str:
        with open(os.path.join(self.data_dir, "etcd.log"), errors="replace") as f:
            return f.read()[-3000:]

    def raw(self, key: str) -> tuple[bytes, dict] | None:
        """The value and metadata at *key*, read without nodeipam."""
        body = {"key": base64.b64encode(key.encode()).decode()}
        req = urllib.request.Request(self.endpoint + "/v3/kv/range", method="POST",
                                     data=json.dumps(body).encode())
        with urllib.request.urlopen(req, timeout=5) as resp:
            kvs = json.load(resp).get("kvs")
        return (base64.b64decode(kvs[0].get("value", "")), kvs[0]) if kvs else None


@pytest.fixture
def etcd() -> Iterator[Etcd]:
    server = Etcd()
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.data_dir, ignore_errors=True)


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
    client = etcd3gw.client(host="127.0.0.1", port=etcd.client_port)
    lease_id = int(etcd.raw(key)[1]["lease"])
    return lease_id, etcd3gw.Lease(lease_id, client).ttl()


def test_acquire_renew_release(etcd: Etcd, store) -> None:
    a = store.acquire("node-a", public_ip="198.18.0.2", backend_data=vxlan(1))
    assert (a.node, str(a.subnet)) == ("node-a", "10.244.0.0/24")
    key = SUBNETS + "10.244.0.0-24"
    first_id, ttl = lease_ttl(etcd, key)
    assert 86000 < ttl <= 86400                                  # flannel's 24h
    assert abs(a.expires_at - time.time() - 86400) < 60
    renewed = store.renew(a, ttl=600)
    second_id, ttl = lease_ttl(etcd, key)
    assert second_id != first_id and 500 < ttl <= 600
    assert renewed.subnet == a.subnet and abs(renewed.expires_at - time.time() - 600) < 60
    # the agent restarts: same PublicIP, same subnet
    again = make_store(etcd).acquire("node-a", public_ip="198.18.0.2", backend_data=vxlan(1))
    assert again.subnet == a.subnet
    b = store.acquire("node-b", public_ip="198.18.0.3", backend_data=vxlan(2))
    assert str(b.subnet) == "10.244.1.0/24"
    store.release("node-a")
    assert etcd.raw(key) is None
    make_store(etcd).release("198.18.0.3")                      # by PublicIP, as flannel
    assert store.leases() == []


def test_flannel_format_byte_for_byte(etcd: Etcd) -> None:
    s = make_store(etcd)
    s.set_network_config(NetworkConfig(network=IPv4Network("10.244.0.0/16"),
                                       ipv6_network=IPv6Network("fd00:10:244::/56")))
    assert etcd.raw("/coreos.com/network/config")[0] == (
        b'{"Network": "10.244.0.0/16", "SubnetLen": 24, "EnableIPv6": true, '
        b'"IPv6Network": "fd00:10:244::/56", "IPv6SubnetLen": 64, "Backend": {"Type": "vxlan"}}')
    s.acquire("n1", public_ip="198.18.0.2", public_ipv6="fd00::2",
              backend_data={"VNI": 1, "VtepMAC": "aa:bb:cc:dd:ee:01"},
              backend_v6_data={"VNI": 1, "VtepMAC": "aa:bb:cc:dd:ee:02"})
    assert etcd.raw(SUBNETS + "10.244.0.0-24&fd00:10:244::-64")[0] == (
        b'{"PublicIP":"198.18.0.2","PublicIPv6":"fd00::2","BackendType":"vxlan",'
        b'"BackendData":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:01"},'
        b'"BackendV6Data":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:02"}}')


def test_ipv4_value_and_a_lease_written_by_flannel(etcd: Etcd, store) -> None:
    import etcd3gw
    client = etcd3gw.client(host="127.0.0.1", port=etcd.client_port)
    flannel_value = (b'{"PublicIP":"198.18.0.9","PublicIPv6":null,"BackendType":"vxlan",'
                     b'"BackendData":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:09"}}')
    client.put(SUBNETS + "10.244.0.0-24", flannel_value, lease=client.lease(3600))
    client.put(SUBNETS + "junk", b"not a lease")                 # ignored, as flannel does
    a = store.acquire("n1", public_ip="198.18.0.2",
                      backend_data={"VNI": 1, "VtepMAC": "aa:bb:cc:dd:ee:01"})
    assert str(a.subnet) == "10.244.1.0/24"                      # flannel's is occupied
    assert etcd.raw(SUBNETS + "10.244.1.0-24")[0] == (
        b'{"PublicIP":"198.18.0.2","PublicIPv6":null,"BackendType":"vxlan",'
        b'"BackendData":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:01"}}')
    theirs = store.acquire("flannel-node", public_ip="198.18.0.9",
                           backend_data={"VNI": 1, "VtepMAC": "aa:bb:cc:dd:ee:09"})
    assert str(theirs.subnet) == "10.244.0.0/24"                 # found by PublicIP
    assert etcd.raw(SUBNETS + "10.244.0.0-24")[0] == flannel_value


def test_lost_race_takes_the_next_subnet(etcd: Etcd, store) -> None:
    from nodeipam.etcdstore import EtcdLeaseStore
    rival = make_store(etcd)

    class Slow(EtcdLeaseStore):
        raced = False

        def _put(self, key, *args, **kw):
            if not self.raced:          # the rival creates the same key first
                self.raced = True
                assert str(rival.acquire("rival", public_ip="198.18.0.3",
                                         backend_data=vxlan(3)).subnet) == "10.244.0.0/24"
            return super()._put(key, *args, **kw)

    slow = Slow(etcd.endpoint)
    assert str(slow.acquire("n1", public_ip="198.18.0.2",
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
                lease = stores[i].acquire(f"n{n}", public_ip=f"198.18.1.{n}",
                                          backend_data=vxlan(n))
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
    store.acquire("n1", public_ip="198.18.0.2", backend_data=vxlan(1))
    events = list(watcher.watch(5))
    assert [(e.kind, e.lease.node, str(e.lease.subnet)) for e in events] == \
        [("added", "198.18.0.2", "10.244.0.0/24")]
    assert events[0].lease.backend_data == vxlan(1)
    b = store.acquire("n2", public_ip="198.18.0.3", backend_data=vxlan(2), ttl=2)
    assert [(e.kind, e.lease.node) for e in watcher.watch(5)] == [("added", "198.18.0.3")]
    store.renew(events[0].lease)                                 # renewal alone: no event
    assert list(watcher.watch(0.3)) == []
    store.acquire("n1", public_ip="198.18.0.2", backend_data=vxlan(7))
    assert [(e.kind, e.lease.backend_data) for e in watcher.watch(5)] == [("added", vxlan(7))]
    # n2's etcd lease runs out: etcd deletes the key
    assert [(e.kind, str(e.lease.subnet)) for e in watcher.watch(15)] == \
        [("removed", str(b.subnet))]
    store.release("n1")
    assert [(e.kind, e.lease.node) for e in watcher.watch(5)] == [("removed", "198.18.0.2")]


def test_no_config_and_exhausted(etcd: Etcd) -> None:
    s = make_store(etcd)
    with pytest.raises(NetworkConfigNotFound, match="/coreos.com/network/config"):
        s.acquire("n1", public_ip="198.18.0.2", backend_data=vxlan(1))
    s.set_network_config(NetworkConfig(network=IPv4Network("10.244.0.0/23")))
    for n in range(2):
        s.acquire(f"n{n}", public_ip=f"198.18.0.{n + 2}", backend_data=vxlan(n))
    with pytest.raises(CIDRExhausted) as exc:
        s.acquire("n9", public_ip="198.18.0.9", backend_data=vxlan(9))
    assert str(exc.value) == EXHAUSTED_MESSAGE


def test_renew_conflict(etcd: Etcd, store) -> None:
    a = store.acquire("n1", public_ip="198.18.0.2", backend_data=vxlan(1))
    store.release("n1")
    store.acquire("n2", public_ip="198.18.0.3", backend_data=vxlan(2))   # next-fit: .1
    b = store.acquire("n3", public_ip="198.18.0.4", backend_data=vxlan(3))
    assert str(b.subnet) == "10.244.2.0/24"
    assert store.renew(a).subnet == a.subnet       # free again: taken back
    with pytest.raises(LeaseConflict, match="held by 198.18.0.4"):
        store.renew(type(a)(node="x", subnet=b.subnet, public_ip="198.18.0.99"))


def test_etcd_down_then_back(etcd: Etcd, store) -> None:
    a = store.acquire("n1", public_ip="198.18.0.2", backend_data=vxlan(1))
    list(store.watch(0.1))
    etcd.stop()
    for call in (lambda: store.acquire("n2", public_ip="198.18.0.3", backend_data=vxlan(2)),
                 lambda: store.renew(a), store.leases, store.get_network_config,
                 lambda: list(store.watch(0.2)), lambda: store.release("n1")):
        with pytest.raises(StoreUnavailable, match=f"etcd at {etcd.endpoint}"):
            call()
    etcd.start()                                   # same data dir, same ports
    assert [str(lease.subnet) for lease in store.leases()] == ["10.244.0.0/24"]
    b = store.acquire("n2", public_ip="198.18.0.3", backend_data=vxlan(2))
    assert str(b.subnet) == "10.244.1.0/24"
    assert [(e.kind, e.lease.node) for e in store.watch(5)] == [("added", "198.18.0.3")]
