"""Fakes for the node agent's unit tests: an in-memory ``LeaseStore`` and a data path
that records what it was asked to program."""

from __future__ import annotations

import ipaddress
from dataclasses import replace
from typing import Any, Iterable, Iterator, Mapping

from flannel.vxlan import VTEP, DataPathError, Peer
from nodeipam.errors import CIDRExhausted, NetworkConfigNotFound, StoreUnavailable
from nodeipam.lease import Lease, LeaseEvent, NetworkConfig

NETWORK = ipaddress.IPv4Network("10.244.0.0/16")


def peer_lease(node: str, third: int, *, mac: str | None = None, ip: str | None = None,
               **kw: Any) -> Lease:
    """A well-formed vxlan lease for *node* with podCIDR 10.244.<third>.0/24."""
    data = kw.pop("backend_data", {"VNI": 1, "VtepMAC": mac or f"02:00:00:00:00:{third:02x}"})
    return Lease(node=node, subnet=ipaddress.IPv4Network(f"10.244.{third}.0/24"),
                 public_ip=ip or f"198.18.0.{third}", backend_data=data, **kw)


class FakeStore:
    """LeaseStore in memory. ``fail`` = how many upcoming calls raise StoreUnavailable;
    ``calls`` records method names; ``push`` queues watch events (as a real store would
    report a change by another node)."""

    def __init__(self, config: NetworkConfig | None = None, *, next_subnet: int = 1,
                 exhausted: bool = False) -> None:
        self.config = config
        self.by_node: dict[str, Lease] = {}
        self.pending: list[LeaseEvent] = []
        self.watched = False
        self.fail = 0
        self.calls: list[str] = []
        self.acquired: list[dict[str, Any]] = []
        self.watch_timeouts: list[float] = []
        self._next = next_subnet
        self.exhausted = exhausted
        self.ttl_clock = 1000.0

    def _enter(self, name: str) -> None:
        self.calls.append(name)
        if self.fail:
            self.fail -= 1
            raise StoreUnavailable("etcd: connection refused")

    def get_network_config(self) -> NetworkConfig:
        self._enter("get_network_config")
        if self.config is None:
            raise NetworkConfigNotFound("no network config")
        return self.config

    def set_network_config(self, config: NetworkConfig) -> None:
        self._enter("set_network_config")
        self.config = config

    def acquire(self, node: str, *, public_ip: str, backend_data: Mapping[str, Any],
                ttl: float | None = None) -> Lease:
        self._enter("acquire")
        if self.exhausted:
            raise CIDRExhausted()
        self.acquired.append({"node": node, "public_ip": public_ip,
                              "backend_data": dict(backend_data), "ttl": ttl})
        old = self.by_node.get(node)
        subnet = old.subnet if old else ipaddress.IPv4Network(f"10.244.{self._next}.0/24")
        if old is None:
            self._next += 1
        lease = Lease(node=node, subnet=subnet, public_ip=public_ip, backend_data=dict(backend_data),
                      expires_at=None if ttl is None else self.ttl_clock + ttl)
        self.put(lease)
        return lease

    def renew(self, lease: Lease, ttl: float | None = None) -> Lease:
        self._enter("renew")
        new = replace(lease, expires_at=None if ttl is None else self.ttl_clock + ttl)
        self.by_node[lease.node] = new
        return new

    def release(self, node: str) -> None:
        self._enter("release")
        self.remove(node)

    def leases(self) -> list[Lease]:
        self._enter("leases")
        return list(self.by_node.values())

    def watch(self, timeout: float) -> Iterator[LeaseEvent]:
        self._enter("watch")
        self.watch_timeouts.append(timeout)
        if not self.watched:
            self.watched = True
            self.pending = [LeaseEvent(kind="added", lease=lease) for lease in self.by_node.values()]
        events, self.pending = self.pending, []
        return iter(events)

    # -- test helpers: another node's doing --------------------------------------------

    def put(self, lease: Lease) -> None:
        self.by_node[lease.node] = lease
        self.pending.append(LeaseEvent(kind="added", lease=lease))

    def remove(self, node: str) -> None:
        lease = self.by_node.pop(node, None)
        if lease is not None:
            self.pending.append(LeaseEvent(kind="removed", lease=lease))


class FakeDataPath:
    """Records ``ops`` and keeps ``peers`` (node -> Peer) as the kernel would hold them;
    ``fail_nodes`` makes add_peer fail for those nodes."""

    def __init__(self, *, mac: str = "02:aa:bb:cc:dd:01", mtu: int = 1450,
                 public_ip: str = "198.18.0.1") -> None:
        self.vtep = VTEP(ifindex=7, mac=mac, mtu=mtu, public_ip=ipaddress.IPv4Address(public_ip), vni=1)
        self.ops: list[tuple] = []
        self.peers: dict[str, Peer] = {}
        self.fail_nodes: set[str] = set()
        self.fail_ensure: Exception | None = None

    def ensure(self, *, vni: int, port: int) -> VTEP:
        self.ops.append(("ensure", vni, port))
        if self.fail_ensure is not None:
            raise self.fail_ensure
        self.vtep = replace(self.vtep, vni=vni)
        return self.vtep

    def configure(self, subnet: ipaddress.IPv4Network, network: ipaddress.IPv4Network | None) -> None:
        self.ops.append(("configure", str(subnet), str(network)))

    def add_peer(self, peer: Peer) -> None:
        if peer.node in self.fail_nodes:
            raise DataPathError(17, f"add route: File exists ({peer.node})")
        self.ops.append(("add", peer.node))
        self.peers[peer.node] = peer

    def remove_peer(self, peer: Peer) -> None:
        self.ops.append(("remove", peer.node))
        self.peers.pop(peer.node, None)

    def sync_peers(self, peers: Iterable[Peer]) -> None:
        peers = list(peers)
        self.ops.append(("sync", tuple(sorted(p.node for p in peers))))
        self.peers = {p.node: p for p in peers}


class FakeMasq:
    def __init__(self) -> None:
        self.ops: list[tuple] = []

    def ensure(self, network: ipaddress.IPv4Network, subnet: ipaddress.IPv4Network) -> bool:
        self.ops.append(("ensure", str(network), str(subnet)))
        return True

    def teardown(self) -> None:
        self.ops.append(("teardown",))
