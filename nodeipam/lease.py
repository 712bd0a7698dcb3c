"""The contract between node podCIDR allocation and the node agent.

A *lease* is one node's podCIDR (per family), held by that node, carrying what its
peers need to reach it (flannel's subnet lease: PublicIP, BackendType, BackendData).

A lease is identified by its **PublicIP**, as flannel identifies it in etcd
(``findLeaseByIP``; flannel's ``LeaseAttrs`` carry no node name): ``acquire`` finds the
node's lease by the PublicIP it is given, ``release`` takes that PublicIP, and a node
recognises its own lease by it. ``Lease.node`` is only a label for logs, kept where the
backend can store one (the file, the memory registry) and equal to the PublicIP where it
cannot (etcd).

``nodeipam.manager.LeaseManager`` implements ``LeaseStore`` once, over a small
``nodeipam.registry.Registry``; the file and etcd backends only store.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Protocol

IPv4Network = ipaddress.IPv4Network
IPv6Network = ipaddress.IPv6Network


@dataclass(frozen=True, kw_only=True)
class NetworkConfig:
    """The cluster network: flannel's ``/coreos.com/network/config`` document.

    JSON keys as flannel writes them: ``Network``, ``SubnetLen``, ``IPv6Network``,
    ``IPv6SubnetLen``, ``EnableIPv4``, ``EnableIPv6``, ``Backend`` ({"Type": "vxlan",
    "VNI": 1, "Port": 8472}).
    """

    network: IPv4Network | None
    subnet_len: int = 24
    ipv6_network: IPv6Network | None = None
    ipv6_subnet_len: int = 64
    backend: Mapping[str, Any] = field(default_factory=lambda: {"Type": "vxlan"})


@dataclass(frozen=True, kw_only=True)
class Lease:
    """One node's podCIDR(s) and how to reach it.

    ``public_ip`` is the lease's identity; ``node`` a label (see the module docstring).
    ``backend_data`` for vxlan is ``{"VNI": 1, "VtepMAC": "aa:bb:..."}`` (flannel's
    ``vxlanLeaseAttrs``); ``backend_v6_data`` is the same for the IPv6 VTEP of a
    dual-stack node (flannel's ``BackendV6Data``, empty when there is none);
    ``expires_at`` is seconds since the epoch, None = no TTL.
    """

    node: str
    subnet: IPv4Network | None
    ipv6_subnet: IPv6Network | None = None
    public_ip: str = ""
    public_ipv6: str = ""
    backend_type: str = "vxlan"
    backend_data: Mapping[str, Any] = field(default_factory=dict)
    expires_at: float | None = None
    backend_v6_data: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class LeaseEvent:
    """A change seen by ``LeaseStore.watch``."""

    kind: str          # "added" (new or changed) or "removed"
    lease: Lease


class LeaseStore(Protocol):
    """The network config and the leases, as the node agent uses them.

    Every method may raise ``StoreUnavailable`` (etcd down): callers retry with
    backoff and keep the data path as it is.
    """

    def get_network_config(self) -> NetworkConfig: ...

    def set_network_config(self, config: NetworkConfig) -> None: ...

    def acquire(self, public_ip: str, *, backend_data: Mapping[str, Any], node: str = "",
                ttl: float | None = None, backend_type: str = "vxlan",
                public_ipv6: str = "",
                backend_v6_data: Mapping[str, Any] | None = None) -> Lease:
        """The lease of the node with *public_ip*: its existing one renewed (same
        subnet across restarts), or a new subnet picked by the allocator. Two nodes
        racing for the same subnet never both win. Raises ``CIDRExhausted`` with
        kube-controller-manager's text when no subnet is left."""
        ...

    def renew(self, lease: Lease, ttl: float | None = None) -> Lease: ...

    def release(self, public_ip: str) -> None:
        """Drop the lease of the node with *public_ip* (node removal); releasing a
        missing one is fine."""
        ...

    def leases(self) -> list[Lease]:
        """Every current (unexpired) lease."""
        ...

    def watch(self, timeout: float) -> Iterator[LeaseEvent]:
        """Changes since the last call (the first call yields every lease as "added"),
        waiting up to *timeout* seconds for at least one."""
        ...
