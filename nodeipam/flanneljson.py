"""flannel's documents, byte for byte: network config, subnet keys, lease attributes.

* Network config (``<prefix>/config``; flannel pkg/subnet/config.go ``ParseConfig`` and
  ``CheckNetworkConfig``): ``Network``, ``SubnetLen``, ``IPv6Network``,
  ``IPv6SubnetLen``, ``EnableIPv4`` (default true), ``EnableIPv6``, ``Backend``. A
  missing ``SubnetLen`` is 24 when the network is /22 or larger, else its prefix + 2
  (IPv6: 64 up to /62); a missing ``Backend`` means ``{"Type": "udp"}``.
* Subnet key (pkg/subnet/subnet.go ``MakeSubnetKey``): ``10.244.1.0-24``, dual-stack
  ``10.244.1.0-24&fc00:0:0:1::-64``.
* Lease value (pkg/lease/lease.go ``LeaseAttrs`` through Go's ``json.Marshal``):
  ``{"PublicIP":"198.18.0.2","PublicIPv6":null,"BackendType":"vxlan",
  "BackendData":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:ff"}}`` -- fields in struct order,
  compact, ``BackendType``/``BackendData``/``BackendV6Data`` left out when empty
  (``omitempty``). The value names no node: flannel finds a node's lease by PublicIP.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
from collections.abc import Mapping
from typing import Any

from .errors import InvalidCIDR, StoreCorrupt
from .lease import Lease, NetworkConfig

__all__ = [
    "config_from_dict",
    "config_to_dict",
    "parse_config",
    "format_config",
    "subnet_key",
    "parse_subnet_key",
    "check_public_ip",
    "attrs_to_dict",
    "attrs_from_dict",
    "format_attrs",
    "parse_attrs",
]

# flannel's subnetRegex, anchored at the end like FindStringSubmatch on the key.
_SUBNET_KEY = re.compile(r"(\d+\.\d+\.\d+\.\d+)-(\d+)(?:&([a-f\d:]+)-(\d+))?$")
# How Go's encoding/json escapes a string: HTML characters and line separators too,
# control characters other than \n \r \t as \u00XX.
_GO_ESCAPES: dict[int, str] = {ord('"'): '\\"', ord("\\"): "\\\\", ord("\n"): "\\n",
                               ord("\r"): "\\r", ord("\t"): "\\t", ord("<"): "\\u003c",
                               ord(">"): "\\u003e", ord("&"): "\\u0026",
                               0x2028: "\\u2028", 0x2029: "\\u2029"}
for _c in range(0x20):
    _GO_ESCAPES.setdefault(_c, f"\\u{_c:04x}")


def _default_len(prefixlen: int, big: int, default: int) -> int:
    return default if prefixlen <= big else prefixlen + 2


def config_from_dict(doc: Mapping[str, Any]) -> NetworkConfig:
    """A ``NetworkConfig`` from flannel's config object; ``InvalidCIDR`` if malformed."""
    try:
        network = ipv6_network = None
        subnet_len, ipv6_subnet_len = 24, 64
        if doc.get("EnableIPv4", True):
            network = ipaddress.IPv4Network(doc["Network"], strict=False)
            subnet_len = int(doc.get("SubnetLen") or _default_len(network.prefixlen, 22, 24))
        if doc.get("EnableIPv6", False):
            ipv6_network = ipaddress.IPv6Network(doc["IPv6Network"], strict=False)
            ipv6_subnet_len = int(doc.get("IPv6SubnetLen")
                                  or _default_len(ipv6_network.prefixlen, 62, 64))
        backend = doc.get("Backend") or {"Type": "udp"}
        if not isinstance(backend, Mapping):
            raise TypeError(f"Backend must be an object, not {type(backend).__name__}")
    except KeyError as exc:
        raise InvalidCIDR(f"network config has no {exc.args[0]}") from exc
    except (TypeError, ValueError) as exc:
        raise InvalidCIDR(f"network config: {exc}") from exc
    if network is None and ipv6_network is None:
        raise InvalidCIDR("network config enables neither IPv4 nor IPv6")
    return NetworkConfig(network=network, subnet_len=subnet_len, ipv6_network=ipv6_network,
                         ipv6_subnet_len=ipv6_subnet_len, backend=dict(backend))


def config_to_dict(config: NetworkConfig) -> dict[str, Any]:
    """flannel's config object for *config* (keys in flannel's documented order)."""
    doc: dict[str, Any] = {}
    if config.network is not None:
        doc["Network"] = str(config.network)
        doc["SubnetLen"] = config.subnet_len
    else:
        doc["EnableIPv4"] = False
    if config.ipv6_network is not None:
        doc["EnableIPv6"] = True
        doc["IPv6Network"] = str(config.ipv6_network)
        doc["IPv6SubnetLen"] = config.ipv6_subnet_len
    doc["Backend"] = dict(config.backend)
    return doc


def parse_config(data: bytes | str, where: str) -> NetworkConfig:
    """Decode the config document stored at *where* (a key or path)."""
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise StoreCorrupt(where, f"network config is not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise StoreCorrupt(where, "network config is not a JSON object")
    return config_from_dict(doc)


def format_config(config: NetworkConfig) -> bytes:
    """The config document as people write it for flannel:
    ``{"Network": "10.244.0.0/16", "SubnetLen": 24, "Backend": {"Type": "vxlan"}}``."""
    return json.dumps(config_to_dict(config)).encode()


def subnet_key(subnet: ipaddress.IPv4Network,
               ipv6_subnet: ipaddress.IPv6Network | None = None) -> str:
    """flannel's ``MakeSubnetKey``: ``10.244.1.0-24`` (``&<v6>-<len>`` if dual-stack)."""
    key = f"{subnet.network_address}-{subnet.prefixlen}"
    if ipv6_subnet is not None:
        key += f"&{ipv6_subnet.network_address}-{ipv6_subnet.prefixlen}"
    return key


def parse_subnet_key(key: str) -> tuple[ipaddress.IPv4Network,
                                        ipaddress.IPv6Network | None] | None:
    """flannel's ``ParseSubnetKey`` on a key or a full path; None if it is no subnet."""
    m = _SUBNET_KEY.search(key)
    if m is None:
        return None
    try:
        subnet = ipaddress.IPv4Network(f"{m[1]}/{m[2]}", strict=False)
        ipv6 = ipaddress.IPv6Network(f"{m[3]}/{m[4]}", strict=False) if m[3] else None
    except ValueError:
        return None
    return subnet, ipv6


def check_public_ip(address: str, version: int) -> str:
    """*address* in canonical form; ``InvalidCIDR`` if it is no IPv*version* address."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        ip = None
    if ip is None or ip.version != version:
        raise InvalidCIDR(f"public IP {address!r} is not an IPv{version} address")
    return str(ip)


def attrs_to_dict(lease: Lease) -> dict[str, Any]:
    """flannel's ``LeaseAttrs`` for *lease*, fields in struct order, omitempty applied."""
    doc: dict[str, Any] = {"PublicIP": lease.public_ip or "0.0.0.0",
                           "PublicIPv6": lease.public_ipv6 or None}
    if lease.backend_type:
        doc["BackendType"] = lease.backend_type
    if lease.backend_data:
        doc["BackendData"] = dict(lease.backend_data)
    if lease.backend_v6_data:
        doc["BackendV6Data"] = dict(lease.backend_v6_data)
    return doc


def attrs_from_dict(doc: Any, where: str) -> dict[str, Any]:
    """``Lease`` keyword arguments from a ``LeaseAttrs`` object found at *where*."""
    if not isinstance(doc, dict) or not isinstance(doc.get("PublicIP"), str):
        raise StoreCorrupt(where, "lease attributes are not a flannel LeaseAttrs object")
    for name in ("BackendData", "BackendV6Data"):
        if not isinstance(doc.get(name) or {}, dict):
            raise StoreCorrupt(where, f"{name} is not a JSON object")
    return {"public_ip": doc["PublicIP"], "public_ipv6": doc.get("PublicIPv6") or "",
            "backend_type": doc.get("BackendType") or "",
            "backend_data": doc.get("BackendData") or {},
            "backend_v6_data": doc.get("BackendV6Data") or {}}


def _go_value(value: Any, out: list[str]) -> None:
    if isinstance(value, Mapping):
        out.append("{")
        for i, (k, v) in enumerate(value.items()):   # a RawMessage keeps its order
            out.append("," if i else "")
            _go_value(str(k), out)
            out.append(":")
            _go_value(v, out)
        out.append("}")
    elif isinstance(value, (list, tuple)):
        out.append("[")
        for i, v in enumerate(value):
            out.append("," if i else "")
            _go_value(v, out)
        out.append("]")
    elif isinstance(value, str):
        out.append('"' + value.translate(_GO_ESCAPES) + '"')
    elif isinstance(value, float) and math.isfinite(value) and value.is_integer() \
            and abs(value) < 1e21:
        out.append(str(int(value)))
    else:
        out.append(json.dumps(value, allow_nan=False))


def format_attrs(lease: Lease) -> bytes:
    """The etcd value flannel writes for *lease* (Go ``json.Marshal(LeaseAttrs)``)."""
    out: list[str] = []
    _go_value(attrs_to_dict(lease), out)
    return "".join(out).encode("utf-8")


def parse_attrs(data: bytes | str, where: str) -> dict[str, Any]:
    """``Lease`` keyword arguments from an etcd lease value stored at *where*."""
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise StoreCorrupt(where, f"lease value is not JSON: {exc}") from exc
    return attrs_from_dict(doc, where)
