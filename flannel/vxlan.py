"""flannel's VXLAN backend (flannel-io/flannel pkg/backend/vxlan), through pyroute2.

One device ``flannel.<VNI>`` per node: VNI 1, UDP port 8472, learning off, MTU = the
underlay's minus 50, ``local`` = the node's public IP on the underlay interface, and the
node's podCIDR network address as a /32 (a source address for host-to-pod traffic, with
no broadcast route). For every peer lease, in flannel's order (vxlan_network.go
handleSubnetEvents): a permanent neighbour ``<peer .0> lladdr <VtepMAC>``, an FDB entry
``<VtepMAC> dst <peer public IP> self permanent``, then the route ``<peer podCIDR> via
<peer .0> dev flannel.1 onlink`` (last: the kernel would ARP for the gateway otherwise).
No L2/L3-miss handling: the entries are static, so the data path outlives the agent.

All netlink work happens in the caller's network namespace: the agent is started inside
the node's namespace (``nsenter --net=...``) and never switches namespaces itself.
"""

from __future__ import annotations

import errno
import hashlib
import ipaddress
import logging
import re
import socket
from dataclasses import dataclass
from typing import Any, Iterable

from nodeipam.lease import Lease

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_VNI", "DEFAULT_PORT", "ENCAP_OVERHEAD", "Peer", "VTEP", "BackendDataError",
           "DataPathError", "peer_from_lease", "vtep_mac", "VXLANDevice"]

DEFAULT_VNI = 1
DEFAULT_PORT = 8472          # the kernel's (pre-IANA) VXLAN port, which flannel keeps
ENCAP_OVERHEAD = 50          # outer Ethernet + IPv4 + UDP + VXLAN headers

_NUD_PERMANENT = 0x80
_NTF_SELF = 0x02
_RTNH_F_ONLINK = 4
_RTPROT_BOOT = 3             # vishvananda/netlink's default: `ip route` prints no "proto"
_MAIN_TABLE = 254
_MAC = re.compile(r"[0-9a-f]{2}([:-])[0-9a-f]{2}(\1[0-9a-f]{2}){4}")


class BackendDataError(ValueError):
    """A peer lease the VXLAN backend cannot use (skipped, the others are unaffected)."""


class DataPathError(OSError):
    """A netlink operation failed; ``errno`` is the kernel's."""


@dataclass(frozen=True, kw_only=True)
class Peer:
    """What a peer lease means for the data path."""

    node: str
    subnet: ipaddress.IPv4Network
    public_ip: ipaddress.IPv4Address
    vtep_mac: str            # lower case, colon separated

    @property
    def gateway(self) -> ipaddress.IPv4Address:
        """The peer's podCIDR network address: its flannel.1 address and our next hop."""
        return self.subnet.network_address


@dataclass(frozen=True, kw_only=True)
class VTEP:
    """This node's end of the overlay, as ``VXLANDevice.ensure`` left it."""

    ifindex: int
    mac: str
    mtu: int
    public_ip: ipaddress.IPv4Address
    vni: int


def peer_from_lease(lease: Lease) -> Peer:
    """The VXLAN view of *lease*; ``BackendDataError`` if it is not usable: another
    backend type, no subnet or public IP, or backend data without a valid ``VtepMAC``
    (flannel's ``vxlanLeaseAttrs`` JSON: ``{"VNI": 1, "VtepMAC": "aa:bb:..."}``)."""
    if lease.backend_type != "vxlan":
        raise BackendDataError(f"backend type {lease.backend_type!r} is not vxlan")
    if lease.subnet is None:
        raise BackendDataError("no IPv4 subnet")
    try:
        public_ip = ipaddress.IPv4Address(lease.public_ip)
    except ValueError:
        raise BackendDataError(f"public IP {lease.public_ip!r} is not an IPv4 address") from None
    data = lease.backend_data
    if not hasattr(data, "get"):
        raise BackendDataError(f"backend data {data!r} is not an object")
    vni = data.get("VNI", 0)
    if isinstance(vni, bool) or not isinstance(vni, int) or not 0 <= vni <= 0xFFFF:
        raise BackendDataError(f"backend data VNI {vni!r} is not a uint16")
    mac = data.get("VtepMAC")
    if not isinstance(mac, str) or not _MAC.fullmatch(mac.lower()):
        raise BackendDataError(f"backend data VtepMAC {mac!r} is not a MAC address")
    return Peer(node=lease.node, subnet=lease.subnet, public_ip=public_ip,
                vtep_mac=mac.lower().replace("-", ":"))


def vtep_mac(node: str) -> str:
    """A locally administered unicast MAC derived from the node name: the same across
    restarts and reboots, so peers' FDB entries stay right even if the device is lost."""
    digest = bytearray(hashlib.sha256(b"flannel-vtep:" + node.encode()).digest()[:6])
    digest[0] = (digest[0] & 0xFE) | 0x02
    return ":".join(f"{b:02x}" for b in digest)


class VXLANDevice:
    """``flannel.<VNI>`` and its per-peer entries in the current network namespace.

    Not thread safe: one agent loop owns it.
    """

    def __init__(self, *, node: str, public_ip: str | None = None, iface: str | None = None,
                 mtu: int | None = None) -> None:
        from pyroute2 import IPRoute   # deferred: importing this module stays cheap
        from pyroute2.netlink.exceptions import NetlinkError
        self._ipr = IPRoute()
        self._nlerror = NetlinkError
        self.node = node
        self._public_ip = public_ip
        self._iface = iface
        self._mtu = mtu
        self.vtep: VTEP | None = None

    def close(self) -> None:
        """Close the netlink socket (the device and its entries stay)."""
        self._ipr.close()

    def _call(self, what: str, fn, *args: Any, missing_ok: bool = False, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except self._nlerror as exc:
            if missing_ok and exc.code in (errno.ENOENT, errno.ESRCH, errno.ENODEV):
                return None
            raise DataPathError(exc.code, f"{what}: {exc.args[1] if len(exc.args) > 1 else exc}") from exc

    # -- the device -------------------------------------------------------------------

    def ensure(self, *, vni: int = DEFAULT_VNI, port: int = DEFAULT_PORT) -> VTEP:
        """Create ``flannel.<vni>`` or keep the existing one if compatible (flannel's
        ``vxlanLinksIncompat``: same VNI, underlay, local IP and port), keeping its MAC so
        established peers' FDB entries stay valid; an incompatible one is recreated."""
        under_index, public_ip, under_mtu = self._underlay()
        mtu = self._mtu or under_mtu - ENCAP_OVERHEAD
        name = f"flannel.{vni}"
        links = self._call("get link", self._ipr.link, "get", ifname=name, missing_ok=True)
        if links:
            link = links[0]
            incompat = _incompat(link, vni=vni, under=under_index, local=str(public_ip), port=port)
            if not incompat:
                if link.get_attr("IFLA_MTU") != mtu:
                    log.info("%s: MTU %s -> %d", name, link.get_attr("IFLA_MTU"), mtu)
                    self._call("set mtu", self._ipr.link, "set", index=link["index"], mtu=mtu)
                log.info("%s: keeping existing device (index %d, %s)", name, link["index"],
                         link.get_attr("IFLA_ADDRESS"))
                return self._done(name, vni, public_ip)
            log.warning("%s already exists with incompatible configuration: %s; recreating "
                        "device", name, incompat)
            self._call("delete link", self._ipr.link, "del", index=link["index"])
        self._call("add vxlan link", self._ipr.link, "add", ifname=name, kind="vxlan",
                   vxlan_id=vni, vxlan_link=under_index, vxlan_local=str(public_ip),
                   vxlan_port=port, vxlan_learning=0, address=vtep_mac(self.node), mtu=mtu)
        log.info("%s: created (vni %d, local %s, port %d, mtu %d)", name, vni, public_ip, port, mtu)
        return self._done(name, vni, public_ip)

    def _done(self, name: str, vni: int, public_ip: ipaddress.IPv4Address) -> VTEP:
        link = self._call("get link", self._ipr.link, "get", ifname=name)[0]
        try:   # flannel sets accept_ra=0, best effort
            with open(f"/proc/sys/net/ipv6/conf/{name}/accept_ra", "w") as f:
                f.write("0")
        except OSError:
            pass
        self.vtep = VTEP(ifindex=link["index"], mac=link.get_attr("IFLA_ADDRESS"),
                         mtu=link.get_attr("IFLA_MTU"), public_ip=public_ip, vni=vni)
        return self.vtep

    def _underlay(self) -> tuple[int, ipaddress.IPv4Address, int]:
        """(ifindex, IPv4 address, MTU) of the underlay: --iface, else the interface
        holding --public-ip, else the one with the default route."""
        ipr = self._ipr
        want = ipaddress.IPv4Address(self._public_ip) if self._public_ip else None
        if self._iface:
            found = ipr.link_lookup(ifname=self._iface)
            if not found:
                raise DataPathError(errno.ENODEV, f"interface {self._iface} not found")
            index = found[0]
        elif want is not None:
            index = next((a["index"] for a in ipr.addr("dump", family=socket.AF_INET)
                          if a.get_attr("IFA_ADDRESS") == str(want)), None)
            if index is None:
                raise DataPathError(errno.EADDRNOTAVAIL, f"no interface holds {want}")
        else:
            defaults = [r for r in ipr.route("dump", family=socket.AF_INET, table=_MAIN_TABLE)
                        if r["dst_len"] == 0 and r.get_attr("RTA_OIF")]
            if not defaults:
                raise DataPathError(errno.ENETUNREACH, "no default route to find the interface")
            index = defaults[0].get_attr("RTA_OIF")
        if want is None:
            addrs = [a.get_attr("IFA_ADDRESS") for a in ipr.addr("dump", family=socket.AF_INET)
                     if a["index"] == index]
            if not addrs:
                raise DataPathError(errno.EADDRNOTAVAIL, f"interface {index} has no IPv4 address")
            want = ipaddress.IPv4Address(addrs[0])
        mtu = ipr.link("get", index=index)[0].get_attr("IFLA_MTU")
        return index, want, mtu

    def configure(self, subnet: ipaddress.IPv4Network, network: ipaddress.IPv4Network | None) -> None:
        """Give the device ``<subnet network address>/32`` (dropping other addresses inside
        the cluster *network*, as after a lease change) and bring it up."""
        vtep = self._require()
        want = str(subnet.network_address)
        have = False
        for a in self._ipr.addr("dump", family=socket.AF_INET, index=vtep.ifindex):
            addr, plen = a.get_attr("IFA_ADDRESS"), a["prefixlen"]
            if addr == want and plen == 32:
                have = True
            elif network is None or ipaddress.IPv4Address(addr) in network:
                log.info("flannel.%d: removing address %s/%d", vtep.vni, addr, plen)
                self._call("delete address", self._ipr.addr, "del", index=vtep.ifindex,
                           address=addr, prefixlen=plen)
        if not have:
            self._call("add address", self._ipr.addr, "add", index=vtep.ifindex,
                       address=want, prefixlen=32)
        self._call("set link up", self._ipr.link, "set", index=vtep.ifindex, state="up")

    def _require(self) -> VTEP:
        if self.vtep is None:
            raise RuntimeError("VXLANDevice.ensure() has not run")
        return self.vtep

    # -- peers --------------------------------------------------------------------------

    def add_peer(self, peer: Peer) -> None:
        """Neighbour, FDB, route, in that order; on failure undo what was added and raise
        ``DataPathError``. Replacing identical entries changes nothing (restart-safe)."""
        idx = self._require().ifindex
        gw = str(peer.gateway)
        self._call("add neighbour", self._ipr.neigh, "replace", ifindex=idx, dst=gw,
                   lladdr=peer.vtep_mac, state=_NUD_PERMANENT)
        try:
            self._call("add fdb", self._ipr.fdb, "replace", ifindex=idx, lladdr=peer.vtep_mac,
                       dst=str(peer.public_ip), state=_NUD_PERMANENT, flags=_NTF_SELF)
        except DataPathError:
            self._del_neigh(idx, gw, peer.vtep_mac)
            raise
        try:
            self._call("add route", self._ipr.route, "replace", dst=str(peer.subnet),
                       gateway=gw, oif=idx, flags=_RTNH_F_ONLINK, proto=_RTPROT_BOOT,
                       table=_MAIN_TABLE)
        except DataPathError:
            self._del_neigh(idx, gw, peer.vtep_mac)
            self._del_fdb(idx, peer.vtep_mac, str(peer.public_ip))
            raise
        log.info("peer %s: %s via %s (VtepMAC %s, public IP %s)", peer.node, peer.subnet, gw,
                 peer.vtep_mac, peer.public_ip)

    def remove_peer(self, peer: Peer) -> None:
        """Delete the peer's neighbour, FDB entry and route; entries already gone are fine,
        and one failure does not stop the others (flannel: "don't bail out")."""
        idx = self._require().ifindex
        errors = []
        for step in (lambda: self._del_neigh(idx, str(peer.gateway), peer.vtep_mac),
                     lambda: self._del_fdb(idx, peer.vtep_mac, str(peer.public_ip)),
                     lambda: self._del_route(idx, str(peer.subnet), str(peer.gateway))):
            try:
                step()
            except DataPathError as exc:
                errors.append(exc)
        log.info("peer %s: removed %s", peer.node, peer.subnet)
        if errors:
            raise errors[0]

    def _del_neigh(self, idx: int, dst: str, mac: str) -> None:
        self._call("delete neighbour", self._ipr.neigh, "del", ifindex=idx, dst=dst,
                   lladdr=mac, missing_ok=True)

    def _del_fdb(self, idx: int, mac: str, dst: str) -> None:
        self._call("delete fdb", self._ipr.fdb, "del", ifindex=idx, lladdr=mac, dst=dst,
                   missing_ok=True)

    def _del_route(self, idx: int, dst: str, gateway: str) -> None:
        self._call("delete route", self._ipr.route, "del", dst=dst, gateway=gateway, oif=idx,
                   table=_MAIN_TABLE, missing_ok=True)

    def sync_peers(self, peers: Iterable[Peer]) -> None:
        """Make the device's entries exactly *peers*: stale neighbours, FDB entries and
        routes (left by removed peers, e.g. while the agent was down) are deleted, missing
        ones added. Entries already right are not touched: traffic keeps flowing."""
        idx = self._require().ifindex
        peers = list(peers)
        neigh = {str(p.gateway): p.vtep_mac for p in peers}
        fdb = {(p.vtep_mac, str(p.public_ip)) for p in peers}
        routes = {f"{p.subnet}": str(p.gateway) for p in peers}
        for n in self._ipr.neigh("dump", ifindex=idx, family=socket.AF_INET):
            dst, mac = n.get_attr("NDA_DST"), n.get_attr("NDA_LLADDR")
            if n["state"] & _NUD_PERMANENT and neigh.get(dst) != mac:
                log.info("removing stale neighbour %s lladdr %s", dst, mac)
                self._del_neigh(idx, dst, mac)
        for n in self._ipr.fdb("dump", ifindex=idx):
            mac, dst = n.get_attr("NDA_LLADDR"), n.get_attr("NDA_DST")
            if dst is not None and (mac, dst) not in fdb:
                log.info("removing stale fdb entry %s dst %s", mac, dst)
                self._del_fdb(idx, mac, dst)
        for r in self._ipr.route("dump", family=socket.AF_INET, table=_MAIN_TABLE, oif=idx):
            gw = r.get_attr("RTA_GATEWAY")
            dst = f"{r.get_attr('RTA_DST')}/{r['dst_len']}"
            if gw is not None and routes.get(dst) != gw:
                log.info("removing stale route %s via %s", dst, gw)
                self._del_route(idx, dst, gw)
        failed = []
        for peer in peers:
            try:
                self.add_peer(peer)
            except DataPathError as exc:
                log.error("peer %s: %s", peer.node, exc)
                failed.append(exc)
        if failed:
            raise failed[0]


def _incompat(dev: Any, *, vni: int, under: int, local: str, port: int) -> str:
    """flannel's vxlanLinksIncompat: why *dev* cannot serve as the wanted device, or ""."""
    info = dev.get_attr("IFLA_LINKINFO")
    kind = info.get_attr("IFLA_INFO_KIND") if info else None
    if kind != "vxlan":
        return f"link type: {kind} vs vxlan"
    data = info.get_attr("IFLA_INFO_DATA")
    have_vni = data.get_attr("IFLA_VXLAN_ID")
    if have_vni != vni:
        return f"vni: {have_vni} vs {vni}"
    have_under = data.get_attr("IFLA_VXLAN_LINK")
    if have_under and under and have_under != under:
        return f"vtep (external) interface: {have_under} vs {under}"
    have_local = data.get_attr("IFLA_VXLAN_LOCAL")
    if have_local and have_local != local:
        return f"vtep (external) IP: {have_local} vs {local}"
    have_port = data.get_attr("IFLA_VXLAN_PORT")
    if have_port and port and have_port != port:
        return f"port: {have_port} vs {port}"
    if data.get_attr("IFLA_VXLAN_L2MISS"):
        return "l2miss: true vs false"
    return ""
