"""CNI results: one version-independent model, every version's wire form.

The model follows spec 1.1.0 (``interfaces``, ``ips``, ``routes``, ``dns``). Parsing
accepts 0.1.0/0.2.0 (``ip4``/``ip6``), 0.3.x/0.4.0 (``ips`` with ``version``) and 1.x;
``Result.to_dict(version)`` writes any of them the way libcni's converters and Go
types do (``pkg/types/{020,040,100}``): only known fields, Go's ``omitempty`` rules,
and the 1.x -> 0.2.0 down-conversion keeps the first IPv4 and first IPv6 address and
splits routes by family (dropping route fields 0.2.0 has no room for).

Parsing raises ``ValueError``; ``result_from_output`` reads an ADD's result from a
plugin run and turns that into ``InvalidPluginOutput``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from ipaddress import (IPv4Address, IPv4Interface, IPv4Network, IPv6Address, IPv6Interface,
                       IPv6Network)

from . import gojson
from .errors import ERR_DECODING_FAILURE, InvalidPluginOutput
from .frozen import Frozen
from .invoke import ExecOutput, raise_for_failure, stderr_details
from .version import result_family

__all__ = ["Interface", "IPConfig", "Route", "DNS", "Result", "parse_result",
           "result_from_output"]

IPAddress = IPv4Address | IPv6Address
IPInterface = IPv4Interface | IPv6Interface
IPNetwork = IPv4Network | IPv6Network


class Interface(Frozen):
    """An interface a plugin created or configured; ``sandbox`` is the netns path for
    interfaces inside the pod and empty for host-side ones."""

    _fields = ("name", "mac", "sandbox", "mtu", "socket_path", "pci_id")
    name: str
    mac: str
    sandbox: str
    mtu: int | None
    socket_path: str | None
    pci_id: str | None

    def __init__(self, name: str, mac: str = "", sandbox: str = "", mtu: int | None = None,
                 socket_path: str | None = None, pci_id: str | None = None) -> None:
        self._set(name=name, mac=mac, sandbox=sandbox, mtu=mtu, socket_path=socket_path,
                  pci_id=pci_id)


class IPConfig(Frozen):
    """An address; ``interface`` indexes ``Result.interfaces`` (None: not said)."""

    _fields = ("address", "gateway", "interface")
    address: IPInterface
    gateway: IPAddress | None
    interface: int | None

    def __init__(self, address: IPInterface, gateway: IPAddress | None = None,
                 interface: int | None = None) -> None:
        self._set(address=address, gateway=gateway, interface=interface)

    @property
    def version(self) -> int:
        """4 or 6."""
        return self.address.version


class Route(Frozen):
    """A route; the optional fields are spec 1.1.0's (0 / None means not set)."""

    _fields = ("dst", "gw", "mtu", "advmss", "priority", "table", "scope")
    dst: IPNetwork
    gw: IPAddress | None
    mtu: int | None
    advmss: int | None
    priority: int | None
    table: int | None
    scope: int | None

    def __init__(self, dst: IPNetwork, gw: IPAddress | None = None, mtu: int | None = None,
                 advmss: int | None = None, priority: int | None = None,
                 table: int | None = None, scope: int | None = None) -> None:
        self._set(dst=dst, gw=gw, mtu=mtu, advmss=advmss, priority=priority, table=table,
                  scope=scope)


class DNS(Frozen):
    """DNS settings a plugin reports."""

    _fields = ("nameservers", "domain", "search", "options")
    nameservers: tuple[str, ...]
    domain: str
    search: tuple[str, ...]
    options: tuple[str, ...]

    def __init__(self, nameservers: tuple[str, ...] = (), domain: str = "",
                 search: tuple[str, ...] = (), options: tuple[str, ...] = ()) -> None:
        self._set(nameservers=nameservers, domain=domain, search=search, options=options)

    def is_empty(self) -> bool:
        """True when nothing is set (libcni then omits ``dns`` from 1.x results)."""
        return not (self.nameservers or self.domain or self.search or self.options)

    def to_dict(self) -> dict[str, object]:
        """The wire form, omitting empty fields."""
        out: dict[str, object] = {}
        if self.nameservers:
            out["nameservers"] = list(self.nameservers)
        if self.domain:
            out["domain"] = self.domain
        if self.search:
            out["search"] = list(self.search)
        if self.options:
            out["options"] = list(self.options)
        return out


_NO_DNS = DNS()


class Result(Frozen):
    """A plugin's ADD result. ``raw`` is the JSON object exactly as received (for
    display); it is not compared, hashed or shown by ``repr`` and must not be mutated."""

    _fields = ("cni_version", "interfaces", "ips", "routes", "dns")  # not raw
    __match_args__ = (*_fields, "raw")
    cni_version: str
    interfaces: tuple[Interface, ...]
    ips: tuple[IPConfig, ...]
    routes: tuple[Route, ...]
    dns: DNS
    raw: Mapping[str, object] | None

    def __init__(self, cni_version: str, interfaces: tuple[Interface, ...] = (),
                 ips: tuple[IPConfig, ...] = (), routes: tuple[Route, ...] = (),
                 dns: DNS = _NO_DNS, raw: Mapping[str, object] | None = None) -> None:
        self._set(cni_version=cni_version, interfaces=interfaces, ips=ips, routes=routes,
                  dns=dns, raw=raw)

    def to_dict(self, version: str | None = None) -> dict[str, object]:
        """The wire form at *version* (default: the result's own version).

        Raises ``ValueError`` when the version is unsupported or, for 0.1.0/0.2.0,
        when there is no IP address to convert (as libcni does).
        """
        version = self.cni_version if version is None else version
        family = result_family(version)
        if family == "0.2":
            return self._to_020(version)
        out: dict[str, object] = {"cniVersion": version}
        if self.interfaces:
            out["interfaces"] = [_interface_dict(i, full=family == "1.0") for i in self.interfaces]
        if self.ips:
            out["ips"] = [_ip_dict(ip, with_version=family == "0.4") for ip in self.ips]
        if self.routes:
            out["routes"] = [_route_dict(r) for r in self.routes]
        # types100.Result drops an empty dns; the 0.x Go structs always print "dns": {}.
        if family == "0.4" or not self.dns.is_empty():
            out["dns"] = self.dns.to_dict()
        return out

    def _to_020(self, version: str) -> dict[str, object]:
        ip4 = next((ip for ip in self.ips if ip.version == 4), None)
        ip6 = next((ip for ip in self.ips if ip.version == 6), None)
        if ip4 is None and ip6 is None:
            raise ValueError("cannot convert: no valid IP addresses")
        out: dict[str, object] = {"cniVersion": version}
        for key, ip in (("ip4", ip4), ("ip6", ip6)):
            if ip is None:
                continue
            conf: dict[str, object] = {"ip": str(ip.address)}
            if ip.gateway is not None:
                conf["gateway"] = str(ip.gateway)
            routes = [{"dst": str(r.dst), **({"gw": str(r.gw)} if r.gw else {})}
                      for r in self.routes if r.dst.version == ip.version]
            if routes:
                conf["routes"] = routes
            out[key] = conf
        out["dns"] = self.dns.to_dict()
        return out

    def to_go(self, version: str | None = None) -> dict[str, object]:
        """``to_dict(version)`` ordered as libcni's Go result type marshals it: the
        0.x types (``types020``/``types040``) have no ``MarshalJSON``, so every object
        keeps its struct's field order (``gojson.Struct``); ``types100``'s goes through
        a map, so its keys are sorted like any other object's."""
        out = self.to_dict(version)
        family = result_family(self.cni_version if version is None else version)
        return out if family == "1.0" else _structs(out)

    def to_json(self, version: str | None = None) -> bytes:
        """``to_dict(version)`` encoded as libcni would (compact, keys sorted)."""
        return gojson.marshal(self.to_dict(version))

    def convert(self, version: str) -> Result:
        """This result as it reads after conversion to *version* (fields the target
        version cannot carry are lost). Raises ``ValueError`` if it cannot convert."""
        if version == self.cni_version:
            return self
        return parse_result(self.to_dict(version))

    def sandbox_ips(self, ifname: str | None = None) -> tuple[IPConfig, ...]:
        """The addresses on interface *ifname* (any name if None) inside the sandbox:
        the ``ips`` whose ``interface`` points at an interface with that name and a
        non-empty ``sandbox``. IPv4 first, otherwise in result order.

        A result with no interface information at all (0.1.0/0.2.0, or IPAM-style
        output) cannot say where its addresses live; all of them are returned.
        """
        if not self.interfaces and all(ip.interface is None for ip in self.ips):
            chosen = list(self.ips)
        else:
            chosen = []
            for ip in self.ips:
                if ip.interface is None or not 0 <= ip.interface < len(self.interfaces):
                    continue
                iface = self.interfaces[ip.interface]
                if iface.sandbox and (ifname is None or iface.name == ifname):
                    chosen.append(ip)
        return tuple(sorted(chosen, key=lambda ip: ip.version))


def _structs(value: object) -> object:
    if isinstance(value, dict):
        return gojson.Struct((k, _structs(v)) for k, v in value.items())
    if isinstance(value, list):
        return [_structs(v) for v in value]
    return value


def _interface_dict(iface: Interface, *, full: bool) -> dict[str, object]:
    out: dict[str, object] = {"name": iface.name}
    if iface.mac:
        out["mac"] = iface.mac
    if full and iface.mtu:
        out["mtu"] = iface.mtu
    if iface.sandbox:
        out["sandbox"] = iface.sandbox
    if full and iface.socket_path:
        out["socketPath"] = iface.socket_path
    if full and iface.pci_id:
        out["pciID"] = iface.pci_id
    return out


def _ip_dict(ip: IPConfig, *, with_version: bool) -> dict[str, object]:
    out: dict[str, object] = {}
    if with_version:
        out["version"] = str(ip.version)
    if ip.interface is not None:
        out["interface"] = ip.interface
    out["address"] = str(ip.address)
    if ip.gateway is not None:
        out["gateway"] = str(ip.gateway)
    return out


def _route_dict(route: Route) -> dict[str, object]:
    out: dict[str, object] = {"dst": str(route.dst)}
    if route.gw is not None:
        out["gw"] = str(route.gw)
    for key in ("mtu", "advmss", "priority"):
        if getattr(route, key):  # Go int with omitempty: 0 is not printed
            out[key] = getattr(route, key)
    for key in ("table", "scope"):
        if getattr(route, key) is not None:  # Go *int: 0 is printed
            out[key] = getattr(route, key)
    return out


# --- parsing -----------------------------------------------------------------------

def parse_result(data: bytes | str | Mapping[str, object], *,
                 expected_version: str | None = None) -> Result:
    """Parse a result in any supported version's wire form.

    A result without ``cniVersion`` is taken to be in *expected_version* (the
    config's version, as libcni's ``fixupResultVersion`` does), else 0.1.0. Raises
    ``ValueError`` naming what is wrong.
    """
    obj: object = gojson.loads(data) if isinstance(data, (bytes, bytearray, str)) else data
    if obj is None:  # a plugin printing "null" is accepted by libcni
        obj = {}
    if not isinstance(obj, Mapping):
        raise ValueError(f"result is a JSON {type(obj).__name__}, not an object")
    version = obj.get("cniVersion") or expected_version or "0.1.0"
    if not isinstance(version, str):
        raise ValueError("cniVersion: not a string")
    family = result_family(version)  # raises for an unknown version
    raw = dict(obj)
    if not raw.get("cniVersion"):
        raw["cniVersion"] = version  # libcni fixupResultVersion: raw re-parses the same
    dns = _parse_dns(obj.get("dns"))
    if family == "0.2":
        ips: list[IPConfig] = []
        routes: list[Route] = []
        for key in ("ip4", "ip6"):
            conf = obj.get(key)
            if conf is None:
                continue
            conf = _obj(conf, key)
            ips.append(IPConfig(address=_iface_addr(conf.get("ip"), f"{key}.ip"),
                                gateway=_opt_addr(conf.get("gateway"), f"{key}.gateway")))
            routes.extend(_parse_route(r, f"{key}.routes[{i}]")
                          for i, r in enumerate(_list(conf.get("routes"), f"{key}.routes")))
        return Result(version, (), tuple(ips), tuple(routes), dns, raw)
    interfaces = tuple(_parse_interface(v, f"interfaces[{i}]", full=family == "1.0")
                       for i, v in enumerate(_list(obj.get("interfaces"), "interfaces")))
    ips_ = tuple(_parse_ip(v, f"ips[{i}]") for i, v in enumerate(_list(obj.get("ips"), "ips")))
    routes_ = tuple(_parse_route(v, f"routes[{i}]")
                    for i, v in enumerate(_list(obj.get("routes"), "routes")))
    return Result(version, interfaces, ips_, routes_, dns, raw)


def _obj(value: object, where: str) -> Mapping[str, object]:
    if not isinstance(value, Mapping):
        raise ValueError(f"{where}: expected an object")
    return value


def _list(value: object, where: str) -> list[object]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ValueError(f"{where}: expected a list")
    return value


def _str(value: object, where: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValueError(f"{where}: expected a string")
    return value


def _int(value: object, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{where}: expected an integer")
    return value


def _strs(value: object, where: str) -> tuple[str, ...]:
    return tuple(_str(v, f"{where}[{i}]") for i, v in enumerate(_list(value, where)))


def _iface_addr(value: object, where: str) -> IPInterface:
    text = _str(value, where)
    if "/" not in text:
        raise ValueError(f"{where}: {text!r} is not an address in CIDR notation")
    try:
        return ipaddress.ip_interface(text)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None


def _opt_addr(value: object, where: str) -> IPAddress | None:
    text = _str(value, where)
    if not text:
        return None
    try:
        return ipaddress.ip_address(text)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None


def _parse_interface(value: object, where: str, *, full: bool) -> Interface:
    obj = _obj(value, where)
    iface = Interface(name=_str(obj.get("name"), f"{where}.name"),
                      mac=_str(obj.get("mac"), f"{where}.mac"),
                      sandbox=_str(obj.get("sandbox"), f"{where}.sandbox"))
    if not full:  # 0.3.x/0.4.0 interfaces have only name, mac and sandbox
        return iface
    return Interface(iface.name, iface.mac, iface.sandbox,
                     mtu=_int(obj.get("mtu"), f"{where}.mtu") or None,
                     socket_path=_str(obj.get("socketPath"), f"{where}.socketPath") or None,
                     pci_id=_str(obj.get("pciID"), f"{where}.pciID") or None)


def _parse_ip(value: object, where: str) -> IPConfig:
    obj = _obj(value, where)
    # The 0.3.x/0.4.0 "version" field is recomputed from the address on output.
    return IPConfig(address=_iface_addr(obj.get("address"), f"{where}.address"),
                    gateway=_opt_addr(obj.get("gateway"), f"{where}.gateway"),
                    interface=_int(obj.get("interface"), f"{where}.interface"))


def _parse_route(value: object, where: str) -> Route:
    obj = _obj(value, where)
    dst = _str(obj.get("dst"), f"{where}.dst")
    try:
        net = ipaddress.ip_network(dst, strict=False)
    except ValueError as exc:
        raise ValueError(f"{where}.dst: {exc}") from None
    if "/" not in dst:
        raise ValueError(f"{where}.dst: {dst!r} is not in CIDR notation")
    return Route(dst=net, gw=_opt_addr(obj.get("gw"), f"{where}.gw"),
                 mtu=_int(obj.get("mtu"), f"{where}.mtu") or None,
                 advmss=_int(obj.get("advmss"), f"{where}.advmss") or None,
                 priority=_int(obj.get("priority"), f"{where}.priority") or None,
                 table=_int(obj.get("table"), f"{where}.table"),
                 scope=_int(obj.get("scope"), f"{where}.scope"))


def _parse_dns(value: object) -> DNS:
    if value is None:
        return DNS()
    obj = _obj(value, "dns")
    return DNS(nameservers=_strs(obj.get("nameservers"), "dns.nameservers"),
               domain=_str(obj.get("domain"), "dns.domain"),
               search=_strs(obj.get("search"), "dns.search"),
               options=_strs(obj.get("options"), "dns.options"))


def result_from_output(output: ExecOutput, *, plugin: str, cni_version: str = "",
                       command: str = "ADD") -> Result:
    """The result of a plugin's ADD run: its failure raised (``raise_for_failure``),
    else its stdout parsed. A result without ``cniVersion`` is in *cni_version*, the
    config's (libcni ``fixupResultVersion``). Empty or unparsable stdout raises
    ``InvalidPluginOutput`` with the tail of the plugin's stderr."""
    raise_for_failure(output, plugin=plugin, command=command)
    if not output.stdout.strip():
        raise InvalidPluginOutput(ERR_DECODING_FAILURE, "succeeded but printed no result",
                                  stderr_details("", output.stderr),
                                  plugin=plugin, command=command)
    try:
        return parse_result(output.stdout, expected_version=cni_version or "0.1.0")
    except ValueError as exc:
        text = output.stdout.decode("utf-8", "replace").strip()
        snippet = text if len(text) <= 200 else text[:200] + "..."
        raise InvalidPluginOutput(
            ERR_DECODING_FAILURE, f"invalid result: {exc}",
            stderr_details(f"stdout: {snippet}", output.stderr),
            plugin=plugin, command=command) from None
