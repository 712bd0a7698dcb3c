"""The two files the node agent leaves for the CNI side: ``subnet.env`` and the conflist.

``/run/flannel/subnet.env`` is what flanneld's ``WriteSubnetFile`` writes
(flannel-io/flannel pkg/subnet/subnetfile_unix.go): ``FLANNEL_NETWORK``,
``FLANNEL_SUBNET`` (the podCIDR with its first host address), the IPv6 pair when IPv6
is on, then ``FLANNEL_MTU`` and ``FLANNEL_IPMASQ``; 0644, replaced atomically.
The CNI plugin reads the file with ``flannelcni.subnetenv``. ``10-flannel.conflist`` is kube-flannel's ``cni-conf.json`` as the
ConfigMap ships it (Documentation/kube-flannel.yml), copied byte for byte.

"""

from __future__ import annotations

import ipaddress
import json
import os

from atomicfile import write_atomic as _write_atomic
from flannelcni.subnetenv import SUBNET_FILE

__all__ = ["SUBNET_FILE", "CONFLIST_NAME", "CONFLIST", "render_subnet_env", "write_subnet_env",
           "write_conflist", "write_atomic"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

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
    and fsync'ed, file and directory (``atomicfile.write_atomic`` with durable)."""
    _write_atomic(path, data, mode=mode, durable=True, keep_mode=keep_mode)
