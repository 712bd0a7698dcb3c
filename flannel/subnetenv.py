"""The two files the node agent leaves for the CNI side: ``subnet.env`` and the conflist.

``/run/flannel/subnet.env`` is what flanneld's ``WriteSubnetFile`` writes
(flannel-io/flannel pkg/subnet/subnetfile_unix.go): ``FLANNEL_NETWORK``,
``FLANNEL_SUBNET`` (the podCIDR with its first host address), the IPv6 pair when IPv6
is on, then ``FLANNEL_MTU`` and ``FLANNEL_IPMASQ``; 0644, replaced atomically.
``read_subnet_env`` is flannel cni-plugin's ``loadFlannelSubnetEnv`` (flannel.go) with
its error texts. ``10-flannel.conflist`` is kube-flannel's ``cni-conf.json`` as the
ConfigMap ships it (Documentation/kube-flannel.yml), copied byte for byte.

Standard library only, and light: the CNI plugin imports the reader at every start, so
``ipaddress`` is loaded only when an address is parsed, and neither ``tempfile`` nor
``dataclasses`` is used (together about 20 ms per exec).
"""

from __future__ import annotations

import errno as errno_mod
import json
import os
import re

from cni._atomic import write_atomic as _write_atomic
from cni._frozen import Frozen

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    import ipaddress

    Network = ipaddress.IPv4Network | ipaddress.IPv6Network

__all__ = ["SUBNET_FILE", "CONFLIST_NAME", "CONFLIST", "SubnetEnv", "SubnetEnvError",
           "render_subnet_env", "write_subnet_env", "read_subnet_env", "write_conflist",
           "write_atomic"]

SUBNET_FILE = "/run/flannel/subnet.env"
CONFLIST_NAME = "10-flannel.conflist"

# kube-flannel's ConfigMap `cni-conf.json: |` block: two-space JSON, one final newline
# (YAML's clip chomping); the install-cni init container `cp -f`s it unchanged.
CONFLIST = b"""{
  "name": "cbr0",
  "cniVersion": "0.3.1",
  "plugins": [
    {
      "type": "flannel",
      "delegate": {
        "hairpinMode": true,
        "isDefaultGateway": true
      }
    },
    {
      "type": "portmap",
      "capabilities": {
        "portMappings": true
      }
    }
  ]
}
"""


class SubnetEnvError(ValueError):
    """subnet.env cannot be read or is incomplete; the text is the Go plugin's."""


class SubnetEnv(Frozen):
    """A parsed subnet.env. ``subnet`` is the podCIDR as Go's ``net.ParseCIDR`` returns
    it (``10.244.1.1/24`` -> ``10.244.1.0/24``); ``networks`` keeps every comma-separated
    ``FLANNEL_NETWORK`` entry, without duplicates, in file order. A frozen value
    (``cni._frozen``, stdlib-only: the plugin's start-up stays lean)."""

    _fields = ("networks", "subnet", "ipv6_networks", "ipv6_subnet", "mtu", "ipmasq")
    __match_args__ = ()  # keyword-only fields, as the dataclass had
    networks: tuple[Network, ...]
    subnet: Network | None
    ipv6_networks: tuple[Network, ...]
    ipv6_subnet: Network | None
    mtu: int | None
    ipmasq: bool | None

    def __init__(self, *, networks: tuple[Network, ...] = (), subnet: Network | None = None,
                 ipv6_networks: tuple[Network, ...] = (), ipv6_subnet: Network | None = None,
                 mtu: int | None = None, ipmasq: bool | None = None) -> None:
        self._set(networks=networks, subnet=subnet, ipv6_networks=ipv6_networks,
                  ipv6_subnet=ipv6_subnet, mtu=mtu, ipmasq=ipmasq)

    @property
    def network(self) -> Network | None:
        """The first ``FLANNEL_NETWORK`` (the cluster network), or None."""
        return self.networks[0] if self.networks else None


def render_subnet_env(*, network: ipaddress.IPv4Network | None,
                      subnet: ipaddress.IPv4Network | None, mtu: int, ipmasq: bool,
                      ipv6_network: ipaddress.IPv6Network | None = None,
                      ipv6_subnet: ipaddress.IPv6Network | None = None) -> bytes:
    """subnet.env's bytes, in flannel's line order. IPv4 lines are written when both
    *network* and *subnet* are set (flannel's EnableIPv4), likewise for IPv6."""
    lines = []
    if network is not None and subnet is not None:
        lines.append(f"FLANNEL_NETWORK={network}")
        lines.append(f"FLANNEL_SUBNET={_first_host(subnet)}")
    if ipv6_network is not None and ipv6_subnet is not None:
        lines.append(f"FLANNEL_IPV6_NETWORK={ipv6_network}")
        lines.append(f"FLANNEL_IPV6_SUBNET={_first_host(ipv6_subnet)}")
    lines.append(f"FLANNEL_MTU={int(mtu)}")
    lines.append(f"FLANNEL_IPMASQ={'true' if ipmasq else 'false'}")
    return ("\n".join(lines) + "\n").encode()


def _first_host(net: Network) -> str:
    # flannel's IncrementIP: the network address plus one, with the lease's prefix.
    return f"{net.network_address + 1}/{net.prefixlen}"


def write_subnet_env(path: str, *, network: ipaddress.IPv4Network | None,
                     subnet: ipaddress.IPv4Network | None, mtu: int, ipmasq: bool,
                     ipv6_network: ipaddress.IPv6Network | None = None,
                     ipv6_subnet: ipaddress.IPv6Network | None = None) -> None:
    """Render (see ``render_subnet_env``) and replace *path* atomically. Like flannel,
    the directory is made 0755 and an existing file keeps its mode (default 0644)."""
    data = render_subnet_env(network=network, subnet=subnet, mtu=mtu, ipmasq=ipmasq,
                             ipv6_network=ipv6_network, ipv6_subnet=ipv6_subnet)
    write_atomic(path, data, mode=0o644, keep_mode=True)


def render_conflist(plugin_extra: dict | None = None) -> bytes:
    """kube-flannel's conflist; with *plugin_extra* (e.g. ``subnetFile``, ``dataDir``,
    ``ipam``) those keys are added to the flannel plugin's entry, in the same layout.
    Without extras the bytes are exactly kube-flannel's."""
    if not plugin_extra:
        return CONFLIST
    doc = json.loads(CONFLIST)
    doc["plugins"][0] = {"type": "flannel", **plugin_extra, "delegate": doc["plugins"][0]["delegate"]}
    return (json.dumps(doc, indent=2) + "\n").encode()


def write_conflist(conf_dir: str, name: str = CONFLIST_NAME, *,
                   plugin_extra: dict | None = None) -> str:
    """Write kube-flannel's conflist (see ``render_conflist``) into *conf_dir*
    atomically; returns its path."""
    path = os.path.join(conf_dir, name)
    write_atomic(path, render_conflist(plugin_extra), mode=0o644)
    return path


def write_atomic(path: str, data: bytes, *, mode: int = 0o644, keep_mode: bool = False) -> None:
    """flannel's writes (subnet.env, the conflist, the plugin's saved delegate): atomic
    and fsync'ed, file and directory (``cni._atomic.write_atomic`` with durable)."""
    _write_atomic(path, data, mode=mode, durable=True, keep_mode=keep_mode)


# -- reading: flannel cni-plugin's loadFlannelSubnetEnv --------------------------------

_CIDR = re.compile(r"[0-9A-Fa-f.:]+/[0-9]{1,3}")
_UINT = re.compile(r"[0-9]+")


def read_subnet_env(path: str = SUBNET_FILE) -> SubnetEnv:
    """Parse subnet.env as the flannel CNI plugin does. Unknown lines are ignored, the
    last occurrence of a key wins, ``FLANNEL_IPMASQ`` is true only for ``true``.

    Raises ``SubnetEnvError`` with Go's texts: ``open <path>: no such file or
    directory``, ``invalid CIDR address: <text>``, ``strconv.ParseUint: parsing "<text>":
    invalid syntax``, and ``<path> is missing FLANNEL_NETWORK, FLANNEL_IPV6_NETWORK,
    FLANNEL_SUBNET, FLANNEL_IPV6_SUBNET, FLANNEL_MTU, FLANNEL_IPMASQ`` (only the absent
    ones; a family pair counts as present when either key is).
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        # Go opens a directory and fails reading it; Python fails at open.
        op = "read" if exc.errno == errno_mod.EISDIR else "open"
        raise SubnetEnvError(f"{op} {path}: {_go_strerror(exc)}") from exc
    fields: dict = {}
    # bufio.Scanner's ScanLines: split on \n, drop one trailing \r.
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    for raw in lines:
        line = raw[:-1] if raw.endswith(b"\r") else raw
        key, sep, value = line.decode("utf-8", "surrogateescape").partition("=")
        if key in _KEYS and not sep:
            # Go indexes parts[1] and panics here; a plain error is kinder.
            raise SubnetEnvError(f"{path}: {key} has no value")
        if key in ("FLANNEL_NETWORK", "FLANNEL_IPV6_NETWORK"):
            nets: list[Network] = []
            for cidr in value.split(","):
                net = _parse_cidr(cidr)
                if net not in nets:
                    nets.append(net)
            fields["networks" if key == "FLANNEL_NETWORK" else "ipv6_networks"] = tuple(nets)
        elif key == "FLANNEL_SUBNET":
            fields["subnet"] = _parse_cidr(value)
        elif key == "FLANNEL_IPV6_SUBNET":
            fields["ipv6_subnet"] = _parse_cidr(value)
        elif key == "FLANNEL_MTU":
            fields["mtu"] = _parse_uint32(value)
        elif key == "FLANNEL_IPMASQ":
            fields["ipmasq"] = value == "true"
    env = SubnetEnv(**fields)
    missing = []
    if not env.networks and not env.ipv6_networks:
        missing += ["FLANNEL_NETWORK", "FLANNEL_IPV6_NETWORK"]
    if env.subnet is None and env.ipv6_subnet is None:
        missing += ["FLANNEL_SUBNET", "FLANNEL_IPV6_SUBNET"]
    if env.mtu is None:
        missing.append("FLANNEL_MTU")
    if env.ipmasq is None:
        missing.append("FLANNEL_IPMASQ")
    if missing:
        raise SubnetEnvError(f"{path} is missing {', '.join(missing)}")
    return env


_KEYS = frozenset({"FLANNEL_NETWORK", "FLANNEL_SUBNET", "FLANNEL_IPV6_NETWORK",
                   "FLANNEL_IPV6_SUBNET", "FLANNEL_MTU", "FLANNEL_IPMASQ"})


def _parse_cidr(text: str) -> Network:
    # Go's net.ParseCIDR: address/prefix only (no netmask form), host bits allowed.
    if _CIDR.fullmatch(text):
        import ipaddress
        try:
            return ipaddress.ip_network(text, strict=False)
        except ValueError:
            pass
    raise SubnetEnvError(f"invalid CIDR address: {text}")


def _parse_uint32(text: str) -> int:
    # strconv.ParseUint(s, 10, 32): ASCII digits only, no sign, no spaces.
    if not _UINT.fullmatch(text):
        raise SubnetEnvError(f'strconv.ParseUint: parsing "{text}": invalid syntax')
    value = int(text)
    if value > 0xFFFFFFFF:
        raise SubnetEnvError(f'strconv.ParseUint: parsing "{text}": value out of range')
    return value


def _go_strerror(exc: OSError) -> str:
    # Go's syscall.Errno texts are the C library's, lower-cased at the start.
    if exc.errno is None:
        return str(exc)
    text = os.strerror(exc.errno) if exc.errno in errno_mod.errorcode else str(exc)
    return text[:1].lower() + text[1:]
