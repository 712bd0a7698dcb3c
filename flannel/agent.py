"""The node agent: flanneld's job, against a ``nodeipam`` lease store.

Start-up, in flanneld's order: read the network config (or store ``--network`` when the
store has none), create or keep ``flannel.<VNI>`` (its MAC goes into the lease), acquire
the node's lease, give the device its /32, write ``subnet.env`` and
``10-flannel.conflist``, install the masquerade rules, program every peer. Then follow
``store.watch()``: peers added, changed and removed; the lease renewed before it expires,
with a full resync after each renewal and after the store comes back.

A store outage (``StoreUnavailable``) is retried with exponential backoff and never
touches the data path: pods keep talking while etcd is down. SIGTERM ends the loop and
removes the masquerade rules; the device, neighbours, FDB entries and routes stay
(flanneld keeps them too), so a restart disrupts nothing.

The agent must run inside the node's network namespace (``nsenter --net=...``).
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Protocol

from nodeipam.errors import (LeaseConflict, NetworkConfigNotFound, NodeIPAMError,
                             StoreUnavailable)
from nodeipam.lease import Lease, LeaseEvent, LeaseStore, NetworkConfig

from .subnetenv import SUBNET_FILE, write_conflist, write_subnet_env
from .vxlan import (DEFAULT_PORT, DEFAULT_VNI, VTEP, BackendDataError, DataPathError, Peer,
                    peer_from_lease)

log = logging.getLogger(__name__)

__all__ = ["AgentConfig", "AgentError", "Agent", "Backoff", "DataPath", "Masquerade",
           "open_store", "main"]

CONF_DIR = "/etc/cni/net.d"
RENEW_MARGIN = 3600.0        # flanneld --subnet-lease-renew-margin (60 minutes)
RESYNC_INTERVAL = 600.0      # full reconcile even when no renewal is due
WATCH_TIMEOUT = 2.0          # bounds how long SIGTERM waits


class AgentError(Exception):
    """A configuration problem retrying cannot fix; the agent exits 1."""


@dataclass(frozen=True, kw_only=True)
class AgentConfig:
    """What the command line decides (see ``main``)."""

    node_name: str
    network: ipaddress.IPv4Network | None = None
    subnet_file: str = SUBNET_FILE
    conf_dir: str = CONF_DIR
    ip_masq: bool = False
    lease_ttl: float | None = 86400.0
    plugin_data_dir: str = ""   # the flannel plugin's dataDir in the conflist ("" = its default)
    ipam_data_dir: str = ""     # host-local's dataDir, through flannel's ipam section

    def conflist_extra(self) -> dict:
        """Keys the flannel plugin must be told because they are not its defaults
        (several nodes on one machine each need their own)."""
        extra: dict = {}
        if self.subnet_file != SUBNET_FILE:
            extra["subnetFile"] = self.subnet_file
        if self.plugin_data_dir:
            extra["dataDir"] = self.plugin_data_dir
        if self.ipam_data_dir:
            extra["ipam"] = {"dataDir": self.ipam_data_dir}
        return extra


class DataPath(Protocol):
    """The VXLAN programming the agent drives (``flannel.vxlan.VXLANDevice``)."""

    def ensure(self, *, vni: int, port: int) -> VTEP: ...
    def configure(self, subnet: ipaddress.IPv4Network, network: ipaddress.IPv4Network | None) -> None: ...
    def add_peer(self, peer: Peer) -> None: ...
    def remove_peer(self, peer: Peer) -> None: ...
    def sync_peers(self, peers: Iterable[Peer]) -> None: ...


class Masquerade(Protocol):
    """``flannel.masq.IPMasq``."""

    def ensure(self, network: ipaddress.IPv4Network, subnet: ipaddress.IPv4Network) -> bool: ...
    def teardown(self) -> None: ...


class Backoff:
    """Exponential backoff: 1, 2, 4, ... seconds, capped; ``reset`` after a success."""

    def __init__(self, initial: float = 1.0, maximum: float = 30.0) -> None:
        self.initial, self.maximum = initial, maximum
        self._next = initial

    def next(self) -> float:
        """The delay to wait now; doubles the following one."""
        delay, self._next = self._next, min(self._next * 2, self.maximum)
        return delay

    def reset(self) -> None:
        """Start again from the initial delay."""
        self._next = self.initial


def vxlan_backend(backend: object) -> tuple[int, int]:
    """(VNI, port) from the network config's ``Backend``; ``AgentError`` unless vxlan."""
    if not hasattr(backend, "get") or str(backend.get("Type", "")).lower() != "vxlan":
        raise AgentError(f"backend {backend!r}: only the vxlan backend is supported")
    vni, port = backend.get("VNI", DEFAULT_VNI), backend.get("Port", 0)
    if not isinstance(vni, int) or not isinstance(port, int) or isinstance(vni, bool):
        raise AgentError(f"backend {backend!r}: VNI and Port must be integers")
    return vni, port or DEFAULT_PORT


class Agent:
    """One node's agent loop. Single threaded: ``stop`` (an Event) may be set from a
    signal handler or another thread; everything else runs in ``run``'s thread."""

    def __init__(self, config: AgentConfig, store: LeaseStore, datapath: DataPath, *,
                 masq: Masquerade | None = None, stop: threading.Event | None = None,
                 clock: Callable[[], float] = time.time,
                 wait: Callable[[float], object] | None = None) -> None:
        self.config, self.store, self.datapath, self.masq = config, store, datapath, masq
        self.stop = stop or threading.Event()
        self.clock = clock
        self.wait = wait or self.stop.wait     # tests inject a recorder
        self.lease: Lease | None = None
        self.network: NetworkConfig | None = None
        self.peers: dict[str, Peer] = {}        # by PublicIP, the lease identity
        self.renewals = 0                       # leases renewed (flannel.metrics reads these)
        self.renewal_failures = 0               # renewals refused (the lease was lost) or failed
        self._stale = False
        self._last_sync = 0.0

    # -- start-up ----------------------------------------------------------------------

    def setup(self) -> Lease:
        """One start-up attempt (store errors propagate to ``run``, which retries)."""
        net = self._network_config()
        if net.network is None:
            raise AgentError("the network config has no IPv4 Network (IPv6-only is not supported)")
        vni, port = vxlan_backend(net.backend)
        try:
            vtep = self.datapath.ensure(vni=vni, port=port)
        except (DataPathError, ValueError) as exc:
            raise AgentError(f"cannot set up flannel.{vni}: {exc}") from exc
        lease = self.store.acquire(str(vtep.public_ip), node=self.config.node_name,
                                   backend_data={"VNI": vni, "VtepMAC": vtep.mac},
                                   ttl=self.config.lease_ttl)
        if lease.subnet is None:
            raise AgentError(f"lease of {lease.node} has no IPv4 subnet")
        log.info("lease acquired: %s for node %s (public IP %s, VtepMAC %s)", lease.subnet,
                 lease.node, vtep.public_ip, vtep.mac)
        self.datapath.configure(lease.subnet, net.network)
        write_subnet_env(self.config.subnet_file, network=net.network, subnet=lease.subnet,
                         mtu=vtep.mtu, ipmasq=self.config.ip_masq,
                         ipv6_network=net.ipv6_network if lease.ipv6_subnet else None,
                         ipv6_subnet=lease.ipv6_subnet if net.ipv6_network else None)
        conflist = write_conflist(self.config.conf_dir, plugin_extra=self.config.conflist_extra())
        log.info("wrote %s and %s", self.config.subnet_file, conflist)
        self.network, self.lease = net, lease
        self.resync()
        return lease

    def _network_config(self) -> NetworkConfig:
        try:
            net = self.store.get_network_config()
        except NetworkConfigNotFound:
            if self.config.network is None:
                raise AgentError("the store holds no network config; pass --network") from None
            net = NetworkConfig(network=self.config.network, backend={"Type": "vxlan"})
            log.info("storing network config: Network %s, backend vxlan", self.config.network)
            self.store.set_network_config(net)
            return net
        if self.config.network is not None and net.network != self.config.network:
            log.warning("--network %s ignored: the store says %s", self.config.network, net.network)
        return net

    # -- peers -------------------------------------------------------------------------

    def _is_own(self, lease: Lease) -> bool:
        # A lease is identified by its PublicIP (nodeipam.lease), as flannel's are.
        return self.lease is not None and lease.public_ip == self.lease.public_ip

    def _peer(self, lease: Lease) -> Peer | None:
        if self._is_own(lease):
            return None
        try:
            return peer_from_lease(lease)
        except BackendDataError as exc:
            log.warning("skipping lease of node %s (%s): %s", lease.node, lease.subnet, exc)
            return None

    def resync(self) -> None:
        """Reconcile the data path with every lease in the store, and make sure the
        masquerade rules are still there (flanneld re-checks them periodically too)."""
        if self.config.ip_masq and self.masq is not None and self.lease and self.network:
            try:
                self.masq.ensure(self.network.network, self.lease.subnet)
            except OSError as exc:     # flanneld logs a failed bootstrap and goes on
                log.error("masquerade rules: %s", exc)
        peers = {}
        for lease in self.store.leases():
            peer = self._peer(lease)
            if peer is not None:
                peers[lease.public_ip] = peer
        self._stale = True
        self.datapath.sync_peers(peers.values())
        self.peers = peers
        self._stale = False
        self._last_sync = self.clock()
        log.info("in sync with %d peer(s): %s", len(peers),
                 ", ".join(sorted(p.node for p in peers.values())) or "-")

    def handle(self, event: LeaseEvent) -> None:
        """Apply one watch event; a bad lease or a netlink error affects that peer only."""
        lease = event.lease
        if self._is_own(lease):
            if event.kind == "removed":
                log.warning("own lease %s was removed; acquiring again", lease.subnet)
                self.lease = None
            return
        try:
            if event.kind == "removed":
                peer = self.peers.pop(lease.public_ip, None) or self._peer(lease)
                if peer is not None:
                    self.datapath.remove_peer(peer)
                return
            peer = self._peer(lease)
            if peer is None or self.peers.get(lease.public_ip) == peer:
                return
            old = self.peers.pop(lease.public_ip, None)
            if old is not None:
                self.datapath.remove_peer(old)
            self.datapath.add_peer(peer)
            self.peers[lease.public_ip] = peer
        except DataPathError as exc:
            log.error("node %s (%s): %s", lease.node, event.kind, exc)
            self._stale = True   # the next resync reprograms this peer

    # -- the loop ----------------------------------------------------------------------

    def _renew_at(self) -> float | None:
        if self.lease is None or self.lease.expires_at is None:
            return None
        ttl = self.config.lease_ttl or RENEW_MARGIN * 2
        return self.lease.expires_at - min(RENEW_MARGIN, ttl / 2)

    def step(self) -> None:
        """Renew the lease if due (then resync), else wait for watch events once."""
        now = self.clock()
        renew_at = self._renew_at()
        if renew_at is not None and now >= renew_at:
            try:
                self.lease = self.store.renew(self.lease, ttl=self.config.lease_ttl)
            except LeaseConflict:
                self.renewal_failures += 1
                log.error("lease %s was lost; acquiring a new one", self.lease.subnet)
                self.lease = None
                return
            except StoreUnavailable:
                self.renewal_failures += 1
                raise
            self.renewals += 1
            log.info("lease %s renewed until %s", self.lease.subnet, self.lease.expires_at)
            self.resync()
            return
        if self._stale or now - self._last_sync >= RESYNC_INTERVAL:
            self.resync()
            return
        timeout = WATCH_TIMEOUT if renew_at is None else max(0.0, min(WATCH_TIMEOUT, renew_at - now))
        for event in self.store.watch(timeout):
            self.handle(event)

    def run(self, *, once: bool = False) -> int:
        """Set up (retrying), then follow the store until ``stop`` is set. Returns the
        exit status: 0, or 1 after an ``AgentError`` or a store error retrying can't fix."""
        backoff = Backoff()
        while not self.stop.is_set():
            try:
                if self.lease is None:
                    self.setup()
                    if once:
                        return 0
                else:
                    self.step()
                backoff.reset()
            except (StoreUnavailable, LeaseConflict, DataPathError, *_netlink_errors()) as exc:
                # (a netlink error that escaped vxlan's wrapping, e.g. "dump
                # interrupted", is a data-path hiccup too: retry, do not crash)
                self._stale = True
                delay = backoff.next()
                log.warning("%s: %s; data path left as it is, retrying in %.0fs",
                            type(exc).__name__, exc, delay)
                self.wait(delay)
            except (AgentError, NodeIPAMError, OSError) as exc:
                # CIDRExhausted, InvalidCIDR, StoreCorrupt, a bad backend config, an
                # unwritable subnet file, iptables-restore failing: say so and exit.
                log.error("%s", exc)
                return 1
        return 0


def open_store(spec: str) -> LeaseStore:
    """``file:/path`` -> ``FileLeaseStore``; ``etcd:http://h:2379[,...]`` -> ``EtcdLeaseStore``
    (both the one lease policy, ``nodeipam.manager.LeaseManager``, over their registry)."""
    kind, _, rest = spec.partition(":")
    if kind == "file" and rest:
        from nodeipam.filestore import FileLeaseStore
        return FileLeaseStore(rest)
    if kind == "etcd" and rest:
        from nodeipam.etcdstore import EtcdLeaseStore
        return EtcdLeaseStore([e for e in rest.split(",") if e])
    raise ValueError(f"--store {spec!r}: want file:/path or etcd:http://host:2379[,...]")


def _netlink_errors() -> tuple[type[BaseException], ...]:
    """pyroute2's NetlinkError (not an OSError), if pyroute2 is loaded."""
    module = sys.modules.get("pyroute2.netlink.exceptions")
    return (module.NetlinkError,) if module is not None else ()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cri-shim agent", description=(
        "flannel's node agent: lease a podCIDR, write subnet.env and the flannel conflist, "
        "and keep a VXLAN overlay to every peer. Run it inside the node's network namespace."))
    p.add_argument("--node-name", required=True, help="this node's name (its lease's label; "
                   "the lease itself is identified by --public-ip, as flannel's are)")
    p.add_argument("--public-ip", help="underlay address peers reach us on "
                   "(default: the first IPv4 address of --iface or of the default route's interface)")
    p.add_argument("--iface", help="underlay interface (default: the one holding --public-ip)")
    p.add_argument("--store", required=True, metavar="SPEC",
                   help="file:/path or etcd:http://127.0.0.1:2379[,...]")
    p.add_argument("--network", type=ipaddress.IPv4Network, metavar="CIDR",
                   help="cluster network to store when the store has no network config")
    p.add_argument("--subnet-file", default=SUBNET_FILE, help=f"default {SUBNET_FILE}")
    p.add_argument("--conf-dir", default=CONF_DIR, help=f"where 10-flannel.conflist goes (default {CONF_DIR})")
    p.add_argument("--plugin-data-dir", default="", help="the flannel CNI plugin's dataDir, "
                   "written into the conflist (default: the plugin's /var/lib/cni/flannel)")
    p.add_argument("--ipam-data-dir", default="", help="host-local's dataDir, written into the "
                   "conflist's flannel ipam section (default: host-local's /var/lib/cni/networks)")
    p.add_argument("--ip-masq", action="store_true", help="install flannel's masquerade rules")
    p.add_argument("--mtu", type=int, help="overlay MTU (default: the underlay's minus 50)")
    p.add_argument("--lease-ttl", type=float, default=86400.0,
                   help="lease lifetime in seconds, 0 for none (default 86400)")
    p.add_argument("--once", action="store_true", help="set up, program the current peers, exit")
    p.add_argument("--metrics-address", default="", metavar="HOST:PORT",
                   help="serve Prometheus metrics (lease renewals, peers) at http://HOST:PORT/metrics")
    p.add_argument("--log-level", default=os.environ.get("CRI_SHIM_LOG_LEVEL", "info"),
                   choices=["debug", "info", "warning", "error"])
    return p


def main(argv: list[str] | None = None) -> int:
    """``cri-shim agent``: parse flags, run the agent until SIGTERM (or once)."""
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import pyroute2  # noqa: F401  (it resets its logger's level on import: import it first)

    from .masq import IPMasq
    from .vxlan import VXLANDevice
    for chatty in ("pyroute2", "asyncio"):     # debug output per netlink message
        logging.getLogger(chatty).setLevel(max(logging.INFO, logging.getLogger().level))
    try:
        store = open_store(args.store)
        datapath = VXLANDevice(node=args.node_name, public_ip=args.public_ip, iface=args.iface,
                               mtu=args.mtu)
    except (ValueError, NodeIPAMError, OSError) as exc:
        print(f"cri-shim agent: {exc}", file=sys.stderr)
        return 2
    config = AgentConfig(node_name=args.node_name, network=args.network,
                         subnet_file=args.subnet_file, conf_dir=args.conf_dir,
                         ip_masq=args.ip_masq, lease_ttl=args.lease_ttl or None,
                         plugin_data_dir=args.plugin_data_dir, ipam_data_dir=args.ipam_data_dir)
    masq = IPMasq() if args.ip_masq else None
    agent = Agent(config, store, datapath, masq=masq)
    if args.metrics_address:
        from .metrics import serve_metrics
        try:
            serve_metrics(agent, args.metrics_address)
        except (ValueError, OSError) as exc:
            print(f"cri-shim agent: --metrics-address: {exc}", file=sys.stderr)
            return 2
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: agent.stop.set())
    try:
        status = agent.run(once=args.once)
        if agent.stop.is_set() and masq is not None:
            masq.teardown()   # flanneld's clean exit; the data path stays
        log.info("exiting (%d)", status)
        return status
    finally:
        datapath.close()


if __name__ == "__main__":
    # `python -m flannel.agent`: run the importable module so loggers say flannel.agent.
    from flannel.agent import main as _main
    raise SystemExit(_main())
