"""A pod's networks, the way containerd's go-cni attaches them.

The networks of a pod are containerd's: the loopback network ``cni-loopback``
(plugin ``loopback``, ifname ``lo``; skipped with ``use_internal_loopback``, where the
netns is pinned with ``lo`` already up), then each conflist loaded from the conf dir
with ifnames ``eth0``, ``eth1``, ... Every exec gets containerd's CNI_ARGS and the
capability arguments built from the pod config (REFERENCE.md, "libcni behaviour").

The conf dir is re-read whenever its listing or a file's (mtime, size, inode) changes,
checked with a few ``stat`` calls per use, so a config that appears, changes,
disappears, is written by rename, or whose directory is deleted and recreated, takes
effect for the next pod without a restart.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import cni

from .config import CNISettings
from .store import PlannedNetwork

log = logging.getLogger(__name__)

# go-cni's built-in loopback network, byte for byte (plugins see these bytes' fields).
LOOPBACK_CONFLIST = b"""{
"cniVersion": "0.3.1",
"name": "cni-loopback",
"plugins": [{
  "type": "loopback"
}]
}"""
LOOPBACK_IFNAME = "lo"


@dataclass(frozen=True, kw_only=True)
class PortMapping:
    protocol: str          # "tcp", "udp" or "sctp" (CONVENTIONS.md spelling)
    container_port: int
    host_port: int = 0
    host_ip: str = ""


@dataclass(frozen=True, kw_only=True)
class DNSConfig:
    servers: tuple[str, ...] = ()
    searches: tuple[str, ...] = ()
    options: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class PodNetworkSpec:
    """What the network set-up needs to know about a pod."""

    name: str
    namespace: str
    uid: str
    annotations: Mapping[str, str]
    port_mappings: tuple[PortMapping, ...] = ()
    dns: DNSConfig | None = None
    cgroup_parent: str = ""


@dataclass(frozen=True)
class NetworkStatus:
    ready: bool
    networks: tuple[cni.NetworkConfigList, ...]
    skipped: tuple[cni.SkippedFile, ...]
    conf_dir: str


def cni_args(spec: PodNetworkSpec, sandbox_id: str) -> tuple[tuple[str, str], ...]:
    """containerd's CNI_ARGS for a pod, in a fixed order."""
    return (
        ("IgnoreUnknown", "1"),
        ("K8S_POD_NAMESPACE", spec.namespace),
        ("K8S_POD_NAME", spec.name),
        ("K8S_POD_INFRA_CONTAINER_ID", sandbox_id),
        ("K8S_POD_UID", spec.uid),
    )


def capability_args(spec: PodNetworkSpec) -> dict[str, Any]:
    """The capability arguments containerd offers; libcni passes each plugin only the
    ones it declares in ``capabilities``."""
    caps: dict[str, Any] = {
        # Only ports published on the host go to portmap (containerd: toCNIPortMappings).
        "portMappings": [
            {"hostPort": p.host_port, "containerPort": p.container_port,
             "protocol": p.protocol, "hostIP": p.host_ip}
            for p in spec.port_mappings if p.host_port > 0
        ],
        "io.kubernetes.cri.pod-annotations": dict(spec.annotations),
    }
    if spec.dns is not None:
        caps["dns"] = {"servers": list(spec.dns.servers), "searches": list(spec.dns.searches),
                       "options": list(spec.dns.options)}
    if spec.cgroup_parent:
        caps["cgroupPath"] = spec.cgroup_parent
    return caps


class PodNetwork:
    """Attaches and detaches a pod's networks; safe to use from many threads."""

    def __init__(self, settings: CNISettings, exec: cni.Exec | None = None) -> None:
        self.settings = settings
        self._cni = cni.CNIConfig(list(settings.bin_dirs), exec=exec,
                                  cache_dir=settings.cache_dir, timeout=settings.plugin_timeout)
        self._lock = threading.Lock()   # guards the two fields below only
        self._signature: tuple | None = None
        self._status = NetworkStatus(False, (), (), settings.conf_dir)

    # -- configuration ------------------------------------------------------------

    def status(self) -> NetworkStatus:
        """The conf dir as it is now (re-read only if it changed)."""
        sig = _dir_signature(self.settings.conf_dir)
        with self._lock:
            if sig == self._signature:
                return self._status
        load = cni.load_conf_dir(self.settings.conf_dir, self.settings.max_conf_num)
        for skipped in load.skipped:
            log.warning("CNI config %s skipped: %s", skipped.path, skipped.reason)
        status = NetworkStatus(bool(load.networks), tuple(load.networks), tuple(load.skipped),
                               self.settings.conf_dir)
        with self._lock:
            if status != self._status:
                log.info("CNI config reloaded from %s: networks=%s", self.settings.conf_dir,
                         [n.name for n in status.networks] or "none")
            self._signature, self._status = sig, status
        return status

    def plan(self) -> tuple[PlannedNetwork, ...]:
        """The networks a new pod gets now; empty when no CNI config is loaded.

        Raises ``cni.PluginNotFound`` when a plugin binary is in no bin dir."""
        status = self.status()
        if not status.ready:
            return ()
        planned = [] if self.settings.use_internal_loopback else [
            PlannedNetwork(name="cni-loopback", ifname=LOOPBACK_IFNAME, conflist=LOOPBACK_CONFLIST)]
        for i, net in enumerate(status.networks):
            planned.append(PlannedNetwork(name=net.name, ifname=f"eth{i}", conflist=net.raw))
        # Refuse up front (a stat per plugin) rather than fail halfway through a chain
        # whose DEL could then not run either.
        for net in planned:
            for plugin in _parse(net).plugins:
                try:
                    self._cni.exec.find_plugin(plugin.type, self.settings.bin_dirs)
                except cni.CNIError as exc:
                    raise exc.with_context(plugin=plugin.type, command="ADD")
        return tuple(planned)

    def not_ready_detail(self) -> str:
        """Why no network is loaded, naming every file that was skipped and why."""
        status = self.status()
        detail = f"no network config found in {status.conf_dir}"
        if status.skipped:
            detail += "; skipped: " + "; ".join(f"{s.path}: {s.reason}" for s in status.skipped)
        return detail

    # -- attach / detach ----------------------------------------------------------

    def setup(self, planned: Sequence[PlannedNetwork], spec: PodNetworkSpec,
              sandbox_id: str, netns: str) -> dict[str, cni.Result]:
        """ADD every planned network in order; returns ifname -> result.

        On failure nothing is undone here: the caller owns teardown of the whole plan.
        """
        results: dict[str, cni.Result] = {}
        args, caps = cni_args(spec, sandbox_id), capability_args(spec)
        for net in planned:
            conflist = _parse(net)
            rt = cni.RuntimeConf(container_id=sandbox_id, netns=netns, ifname=net.ifname,
                                 args=args, capability_args=caps)
            results[net.ifname] = self._cni.add_network_list(conflist, rt)
        return results

    def teardown(self, planned: Sequence[PlannedNetwork], spec: PodNetworkSpec,
                 sandbox_id: str, netns: str) -> None:
        """DEL every planned network, best effort: all are tried, the first error raised.

        go-cni removes networks in the order it added them; within a network libcni
        runs the plugins in reverse. The config comes from libcni's cache when there is
        one, else from the plan, never from the (possibly edited) conf dir.
        """
        first: cni.CNIError | None = None
        args, caps = cni_args(spec, sandbox_id), capability_args(spec)
        for net in planned:
            rt = cni.RuntimeConf(container_id=sandbox_id, netns=netns, ifname=net.ifname,
                                 args=args, capability_args=caps)
            try:
                self._cni.del_network_list(_parse(net), rt)
            except cni.CNIError as exc:
                log.error("sandbox %s: DEL of network %s (%s) failed: %s",
                          sandbox_id[:12], net.name, net.ifname, exc)
                first = first or exc
        if first is not None:
            raise first


def _parse(net: PlannedNetwork) -> cni.NetworkConfigList:
    return cni.conflist_from_bytes(net.conflist, source=f"network {net.name}")


def _dir_signature(conf_dir: str) -> tuple:
    try:
        entries = sorted(os.scandir(conf_dir), key=lambda e: e.name)
    except OSError:
        return ("missing",)
    sig = []
    for e in entries:
        try:
            st = e.stat()
        except OSError:
            continue
        sig.append((e.name, st.st_ino, st.st_mtime_ns, st.st_size))
    return tuple(sig)


def pod_ips(results: Mapping[str, Mapping[str, Any]], ifname: str, ip_pref: str) -> list[str]:
    """The IPs on *ifname* in the sandbox, primary first, ordered by containerd's
    ``ip_pref`` rule: ``ipv4`` (default) or ``ipv6`` puts that family first, ``cni``
    keeps the order the plugins returned."""
    raw = results.get(ifname)
    if not raw:
        return []
    result = cni.parse_result(raw)
    chosen = result.sandbox_ips(ifname)
    if ip_pref == "cni":
        chosen = tuple(sorted(chosen, key=result.ips.index))
    elif ip_pref == "ipv6":
        chosen = tuple(sorted(chosen, key=lambda ip: ip.version != 6))
    return [str(ip.address.ip) for ip in chosen]


def result_json(result: cni.Result) -> dict[str, Any]:
    """A result as the plugins returned it (for the store and verbose status)."""
    return json.loads(json.dumps(result.raw))
