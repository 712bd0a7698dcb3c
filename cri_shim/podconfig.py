"""A PodSandboxConfig, checked and turned into what the sandbox manager needs.

The input is the config as proto-JSON with the proto's own (snake_case) field names,
the same shape ``crictl runp`` files have and the same shape the store keeps, so a
restarted server rebuilds exactly what it started from.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Mapping

from .errors import InvalidArgument
from .podnet import DNSConfig, PodNetworkSpec, PortMapping

# CRI's Protocol enum (TCP = 0, UDP = 1, SCTP = 2), by number or name.
_PROTOCOLS = {0: "tcp", 1: "udp", 2: "sctp", "TCP": "tcp", "UDP": "udp", "SCTP": "sctp"}


@dataclass(frozen=True, kw_only=True)
class SandboxSpec:
    """A RunPodSandbox request after validation."""

    name: str
    namespace: str
    uid: str
    attempt: int
    host_network: bool
    network: PodNetworkSpec
    config: dict[str, Any]   # the whole config, kept for status round-trips


def reject_nul(message: Any, path: str) -> None:
    """Raise InvalidArgument naming the first string field of the proto *message* (at
    *path*, e.g. ``ContainerConfig``) that holds a NUL byte: no path, name, argument
    or environment entry can carry one to the kernel, and saying so beats an error
    from deep inside."""
    for field, value in message.ListFields():
        where = f"{path}.{field.name}"
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            for key, item in value.items():
                if "\0" in str(key):
                    raise InvalidArgument(f"{where} has a key with a NUL byte: {str(key)!r}")
                if isinstance(item, str) and "\0" in item:
                    raise InvalidArgument(f"{where}[{key!r}] contains a NUL byte")
                if hasattr(item, "ListFields"):
                    reject_nul(item, f"{where}[{key!r}]")
            continue
        items = value if field.is_repeated else [value]
        for i, item in enumerate(items):
            at = f"{where}[{i}]" if field.is_repeated else where
            if isinstance(item, str) and "\0" in item:
                raise InvalidArgument(f"{at} contains a NUL byte")
            if hasattr(item, "ListFields"):
                reject_nul(item, at)


def parse_pod_config(config: Mapping[str, Any]) -> SandboxSpec:
    """Validate *config*; raise InvalidArgument naming the first field that is wrong."""
    meta = config.get("metadata")
    if not meta:
        raise InvalidArgument("PodSandboxConfig.metadata is required")
    name, namespace = meta.get("name", ""), meta.get("namespace", "")
    if not name:
        raise InvalidArgument("PodSandboxConfig.metadata.name is required")
    if not namespace:
        raise InvalidArgument("PodSandboxConfig.metadata.namespace is required")
    for key in ("name", "namespace", "uid"):
        if "/" in str(meta.get(key, "")) or "\x00" in str(meta.get(key, "")):
            raise InvalidArgument(f"PodSandboxConfig.metadata.{key} {meta[key]!r} must not contain '/'")
    linux = config.get("linux") or {}
    ns_opts = ((linux.get("security_context") or {}).get("namespace_options") or {})
    network_mode = ns_opts.get("network", 0)
    host_network = network_mode in (2, "NODE")
    if network_mode not in (0, 2, "POD", "NODE"):
        raise InvalidArgument(
            f"PodSandboxConfig.linux.security_context.namespace_options.network {network_mode!r}: "
            "a sandbox's network namespace must be POD or NODE")
    dns = config.get("dns_config")
    return SandboxSpec(
        name=name,
        namespace=namespace,
        uid=meta.get("uid", ""),
        attempt=int(meta.get("attempt", 0)),
        host_network=host_network,
        network=PodNetworkSpec(
            name=name,
            namespace=namespace,
            uid=meta.get("uid", ""),
            annotations=dict(config.get("annotations") or {}),
            port_mappings=tuple(_port(i, p) for i, p in enumerate(config.get("port_mappings") or ())),
            dns=DNSConfig(servers=tuple(dns.get("servers", ())),
                          searches=tuple(dns.get("searches", ())),
                          options=tuple(dns.get("options", ()))) if dns else None,
            cgroup_parent=linux.get("cgroup_parent", ""),
            bandwidth=_bandwidth(config.get("annotations") or {}),
        ),
        config=dict(config),
    )


def _port(i: int, p: Mapping[str, Any]) -> PortMapping:
    where = f"PodSandboxConfig.port_mappings[{i}]"
    proto = p.get("protocol", 0)
    if proto not in _PROTOCOLS:
        raise InvalidArgument(f"{where}.protocol {proto!r}: want TCP, UDP or SCTP")
    try:
        container_port, host_port = int(p.get("container_port", 0)), int(p.get("host_port", 0))
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(f"{where}: ports must be integers") from exc
    if not 0 < container_port < 65536:
        raise InvalidArgument(f"{where}.container_port {container_port} is not a port (1-65535)")
    if not 0 <= host_port < 65536:
        raise InvalidArgument(f"{where}.host_port {host_port} is not a port (0-65535)")
    return PortMapping(protocol=_PROTOCOLS[proto], container_port=container_port,
                       host_port=host_port, host_ip=p.get("host_ip", ""))


# Kubernetes' pod bandwidth annotations (pkg/util/bandwidth), turned into go-cni's
# BandWidth capability the way containerd's toCNIBandWidth does: rates in bits/s,
# bursts at the uint32 maximum.
INGRESS_ANNOTATION = "kubernetes.io/ingress-bandwidth"
EGRESS_ANNOTATION = "kubernetes.io/egress-bandwidth"
_UNLIMITED_BURST = 2**32 - 1
_QUANTITY = re.compile(r"([+-]?(?:\d+\.?\d*|\.\d+))(Ki|Mi|Gi|Ti|Pi|Ei|[mkMGTPE]|[eE][+-]?\d+)?")
_SUFFIX = {"": 1, "m": Decimal("0.001"), "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
           "P": 10**15, "E": 10**18, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40,
           "Pi": 2**50, "Ei": 2**60}


def parse_quantity(text: str) -> int:
    """A Kubernetes resource quantity ("10M", "1Gi", "1e6") as an integer, rounded up."""
    m = _QUANTITY.fullmatch(text.strip())
    if not m:
        raise ValueError(f"{text!r} is not a quantity")
    suffix = m.group(2) or ""
    try:
        number = Decimal(m.group(1))
    except InvalidOperation as exc:
        raise ValueError(f"{text!r} is not a quantity") from exc
    scale = Decimal(10) ** int(suffix[1:]) if suffix[:1] in ("e", "E") else Decimal(_SUFFIX[suffix])
    return math.ceil(number * scale)


def _bandwidth(annotations: Mapping[str, str]) -> dict[str, int] | None:
    out: dict[str, int] = {}
    for key, direction in ((INGRESS_ANNOTATION, "ingress"), (EGRESS_ANNOTATION, "egress")):
        if key not in annotations:
            continue
        try:
            rate = parse_quantity(annotations[key])
        except ValueError as exc:
            raise InvalidArgument(f"annotation {key}: {exc}") from exc
        if rate < 1000:
            raise InvalidArgument(f"annotation {key}: resource is unreasonably small (< 1kbit)")
        if rate > 10**15:
            raise InvalidArgument(f"annotation {key}: resource is unreasonably large (> 1Pbit)")
        out[f"{direction}Rate"], out[f"{direction}Burst"] = rate, _UNLIMITED_BURST
    return out or None
