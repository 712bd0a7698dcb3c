"""``subnet.env`` as the flannel CNI plugin reads it (flannel cni-plugin's
``loadFlannelSubnetEnv``, flannel.go), with its error texts.

The node agent writes the file (``flannel.subnetenv``, flanneld's ``WriteSubnetFile``):
``FLANNEL_NETWORK``, ``FLANNEL_SUBNET`` (the podCIDR with its first host address), the
IPv6 pair when IPv6 is on, then ``FLANNEL_MTU`` and ``FLANNEL_IPMASQ``.

Plugin side: standard library only, read at every ADD.
"""

from __future__ import annotations

import errno as errno_mod
import ipaddress
import os
import re

from cni.frozen import Frozen

__all__ = ["SUBNET_FILE", "SubnetEnv", "SubnetEnvError", "read_subnet_env"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

SUBNET_FILE = "/run/flannel/subnet.env"


class SubnetEnvError(ValueError):
    """subnet.env cannot be read or is incomplete; the text is the Go plugin's."""


class SubnetEnv(Frozen):
    """A parsed subnet.env. ``subnet`` is the podCIDR as Go's ``net.ParseCIDR`` returns
    it (``10.244.1.1/24`` -> ``10.244.1.0/24``); ``networks`` keeps every comma-separated
    ``FLANNEL_NETWORK`` entry, without duplicates, in file order. A frozen value
    (``cni.frozen``)."""

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
