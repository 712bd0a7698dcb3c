"""Fakes for the node agent's unit tests: a recording ``LeaseStore`` (the real lease
policy over ``nodeipam.registry.MemoryRegistry``) and a data path that records what it
was asked to program."""

from __future__ import annotations

import ipaddress
from dataclasses import replace
from typing import Any, Callable, Iterable, Iterator, Mapping

from flannel.vxlan import VTEP, DataPathError, Peer
from nodeipam.errors import NetworkConfigNotFound, StoreUnavailable
from nodeipam.lease import Lease, LeaseEvent, NetworkConfig
from nodeipam.manager import LeaseManager
from nodeipam.registry import MemoryRegistry, record_key

NETWORK = ipaddress.IPv4Network("10.244.0.0/16")


def peer_lease(node: str, third: int, *, mac: str | None = None, ip: str | None = None,
               **kw: Any) -> Lease:
    """A well-formed vxlan lease for *node* with podCIDR 10.244.<third>.0/24."""
    data = kw.pop("backend_data", {"VNI": 1, "VtepMAC": mac or f"02:00:00:00:00:{third:02x}"})
    return Lease(node=node, subnet=ipaddress.IPv4Network(f"10.244.{third}.0/24"),
                 public_ip=ip or f"198.18.0.{third}", backend_data=data, **kw)


class FakeStore:
    """A ``LeaseStore`` for the agent: the real lease policy (``LeaseManager``) over a
    ``MemoryRegistry``, with a spy in front. ``fail`` = how many upcoming calls raise
    StoreUnavailable; ``calls`` records method names, ``acquired`` the arguments of
    ``acquire`` and ``watch_timeouts`` how long the agent asked to wait (the watch
    itself returns at once); ``put``/``remove`` change the registry as another node
    would (a real store reports that as a watch event)."""

    def __init__(self, config: NetworkConfig | None = None, *,
                 clock: Callable[[], float] = lambda: 1000.0) -> None:
        self.registry = MemoryRegistry(config)
        self.manager = LeaseManager(self.registry, clock=clock)
        self.fail = 0
        self.calls: list[str] = []
        self.acquired: list[dict[str, Any]] = []
        self.watch_timeouts: list[float] = []

    @property
    def config(self) -> NetworkConfig | None:
        """The stored network config (not a store call)."""
        try:
            return self.registry.read_config()
        except NetworkConfigNotFound:
            return None

    def _enter(self, name: str) -> None:
        self.calls.append(name)
        if self.fail:
            self.fail -= 1
            raise StoreUnavailable("etcd: connection refused")

    def get_network_config(self) -> NetworkConfig:
        self._enter("get_network_config")
        return self.manager.get_network_config()

    def set_network_config(self, config: NetworkConfig) -> None:
        self._enter("set_network_config")
        self.manager.set_network_config(config)

    def acquire(self, public_ip: str, *, backend_data: Mapping[str, Any], node: str = "",
                ttl: float | None = None, **kw: Any) -> Lease:
        self._enter("acquire")
        self.acquired.append({"node": node, "public_ip": public_ip,
                              "backend_data": dict(backend_data), "ttl": ttl})
        return self.manager.acquire(public_ip, backend_data=backend_data, node=node, ttl=ttl, **kw)

    def renew(self, lease: Lease, ttl: float | None = None) -> Lease:
        self._enter("renew")
        return self.manager.renew(lease, ttl)

    def release(self, public_ip: str) -> None:
        self._enter("release")
        self.manager.release(public_ip)

    def leases(self) -> list[Lease]:
        self._enter("leases")
        return self.manager.leases()

    def watch(self, timeout: float) -> Iterator[LeaseEvent]:
        self._enter("watch")
        self.watch_timeouts.append(timeout)
        return self.manager.watch(0)

    # -- test helpers: another node's doing --------------------------------------------

    def put(self, lease: Lease) -> None:
        """Store *lease* under its subnet, replacing what is there."""
        key = record_key(lease.subnet, lease.ipv6_subnet)
        for record in self.registry.list_subnets()[1]:
            if record.key == key:
                self.registry.update_subnet(lease, mod_revision=record.mod_revision)
                return
        self.registry.create_subnet(lease)

    def remove(self, node: str) -> None:
        """Delete the leases labelled *node*."""
        for record in self.registry.list_subnets()[1]:
            if record.lease.node == node:
                self.registry.delete_subnet(record)


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
