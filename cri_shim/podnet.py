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

import functools
import hashlib
import ipaddress
import json
import logging
import os
import shlex
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import libcni

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
    bandwidth: Mapping[str, int] | None = None   # go-cni's BandWidth, from annotations


@dataclass(frozen=True)
class NetworkStatus:
    ready: bool
    networks: tuple[libcni.NetworkConfigList, ...]
    skipped: tuple[libcni.SkippedFile, ...]
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
    if spec.bandwidth:
        caps["bandwidth"] = dict(spec.bandwidth)
    return caps


class PodNetwork:
    """Attaches and detaches a pod's networks; safe to use from many threads."""

    def __init__(self, settings: CNISettings, exec: libcni.Exec | None = None) -> None:
        self.settings = settings
        self._cni = libcni.CNIConfig(list(settings.bin_dirs), exec=exec,
                                  cache_dir=settings.cache_dir, timeout=settings.plugin_timeout)
        # Attaches a pod's second and later networks beside its first (see _each);
        # its tasks never wait for each other, so a full pool only queues them.
        self._pool = ThreadPoolExecutor(max_workers=64, thread_name_prefix="cni")
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
        load = libcni.load_conf_dir(self.settings.conf_dir, self.settings.max_conf_num)
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

        Raises ``libcni.PluginNotFound`` when a plugin binary is in no bin dir."""
        status = self.status()
        if not status.ready:
            return ()
        planned = [] if self.settings.use_internal_loopback else [
            PlannedNetwork(name="cni-loopback", ifname=LOOPBACK_IFNAME, conflist=LOOPBACK_CONFLIST)]
        for i, net in enumerate(status.networks):
            planned.append(PlannedNetwork(name=net.name, ifname=f"eth{i}", conflist=_self_contained(net)))
        # Refuse up front (a stat per plugin) rather than fail halfway through a chain
        # whose DEL could then not run either.
        for net in planned:
            for plugin in _parse(net).plugins:
                try:
                    self._cni.exec.find_plugin(plugin.type, self.settings.bin_dirs)
                except libcni.CNIError as exc:
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
              sandbox_id: str, netns: str, *, deadline: float | None = None
              ) -> dict[str, libcni.Result]:
        """ADD every planned network; returns ifname -> result.

        Like go-cni's ``Setup``, the networks are attached concurrently, unless
        ``setup_serially`` asks for one after another; within a network the plugins
        run in order, as libcni does. The first failure (in plan order) is raised; on
        failure nothing is undone here: the caller owns the teardown of the whole plan.
        *deadline* (``time.monotonic()``) is the caller's: plugins still running at it
        are killed (``libcni.DeadlineExceeded``).
        """
        args, caps = cni_args(spec, sandbox_id), capability_args(spec)

        def add(net: PlannedNetwork) -> libcni.Result:
            rt = libcni.RuntimeConf(container_id=sandbox_id, netns=netns, ifname=net.ifname,
                                 args=args, capability_args=caps)
            return self._cni.add_network_list(_parse(net), rt, deadline=deadline)

        outcomes = self._each(planned, add)
        for outcome in outcomes.values():
            if isinstance(outcome, BaseException):
                raise outcome
        return outcomes  # type: ignore[return-value]

    def teardown(self, planned: Sequence[PlannedNetwork], spec: PodNetworkSpec,
                 sandbox_id: str, netns: str, *, deadline: float | None = None,
                 repeated: bool = False) -> None:
        """DEL every planned network, best effort: all are tried, the first error raised.

        Networks are independent, so they are detached concurrently as they were
        attached (go-cni's Remove goes one by one); within a network libcni runs the
        plugins in reverse. The config comes from libcni's cache when there is one,
        else from the plan, never from the (possibly edited) conf dir. A plugin that
        answers that what it should remove is already gone has done its DEL
        (``already_gone``), as in go-cni.
        """
        args, caps = cni_args(spec, sandbox_id), capability_args(spec)
        gone = functools.partial(already_gone, netns=netns)

        def delete(net: PlannedNetwork) -> None:
            rt = libcni.RuntimeConf(container_id=sandbox_id, netns=netns, ifname=net.ifname,
                                 args=args, capability_args=caps)
            conflist = _parse(net)
            self._cni.del_network_list(conflist, rt, deadline=deadline, ignore=gone)
            if repeated:
                remove_masq_chain(conflist, sandbox_id)

        first: BaseException | None = None
        for net, outcome in zip(planned, self._each(planned, delete).values()):
            if isinstance(outcome, BaseException):
                log.error("sandbox %s: DEL of network %s (%s) failed: %s",
                          sandbox_id[:12], net.name, net.ifname, outcome)
                first = first or outcome
        if first is not None:
            raise first

    def _each(self, planned: Sequence[PlannedNetwork],
              fn: Callable[[PlannedNetwork], Any]) -> dict[str, Any]:
        """ifname -> fn(net) or the exception it raised, for every network, in plan
        order; concurrently (a thread per network after the first) unless
        ``setup_serially``."""
        outcomes: dict[str, Any] = {}

        def one(net: PlannedNetwork) -> None:
            try:
                outcomes[net.ifname] = fn(net)
            except BaseException as exc:  # handed back to the caller's thread
                outcomes[net.ifname] = exc

        if self.settings.setup_serially or len(planned) < 2:
            for net in planned:
                one(net)
        else:
            # Pool threads, not a thread per call: starting and joining one costs
            # about 0.3 ms, a tenth of a RunPodSandbox's own work.
            waits = [self._pool.submit(one, net) for net in planned[1:]]
            one(planned[0])
            for w in waits:
                w.result()
        return {net.ifname: outcomes[net.ifname] for net in planned}

    def plugin_status(self) -> str:
        """Ask the loaded networks' plugins whether they can take ADDs (CNI 1.1.0
        STATUS; lists of older versions are ready by definition). Returns "" when
        ready, else what the failing plugin said."""
        for net in self.status().networks:
            try:
                self._cni.get_status_network_list(net)
            except libcni.CNIError as exc:
                return str(exc)
        return ""

    def gc(self, valid: Sequence[tuple[str, str, str]]) -> None:
        """CNI GC for the loaded networks and cni-loopback: every cached attachment
        not in *valid* (network, sandbox id, ifname) is deleted, and 1.1.0 plugins get
        GC with ``cni.dev/valid-attachments``. Errors are logged, not raised."""
        networks = list(self.status().networks)
        if not self.settings.use_internal_loopback:
            networks.append(libcni.conflist_from_bytes(LOOPBACK_CONFLIST))
        for net in networks:
            keep = [libcni.GCAttachment(container_id=sid, ifname=ifname)
                    for name, sid, ifname in valid if name == net.name]
            try:
                self._cni.gc_network_list(net, keep)
            except libcni.CNIError as exc:
                log.warning("GC of network %s: %s", net.name, exc)


def masq_chain(network: str, sandbox_id: str) -> str:
    """The nat chain the bridge plugin makes for a pod with ``ipMasq`` (the plugins'
    ``utils.FormatChainName``: ``CNI-`` and 24 hex digits of sha512(name + id))."""
    return "CNI-" + hashlib.sha512((network + sandbox_id).encode()).hexdigest()[:24]


def remove_masq_chain(net: libcni.NetworkConfigList, sandbox_id: str) -> None:
    """After a repeated DEL (the first was cut by a crash), remove the ipMasq chain
    of the network's bridge plugin if it is still there: bridge deletes the pod's
    veth before its masquerade rules, and a DEL run again no longer finds the
    addresses those rules are keyed on, so it leaves them. Only what can be named for
    sure from our own record (the network's name and our sandbox id) is removed."""
    if not any(p.type == "bridge" and p.raw.get("ipMasq") for p in net.plugins):
        return
    chain = masq_chain(net.name, sandbox_id)
    for tool in ("iptables", "ip6tables"):
        try:
            dump = subprocess.run([tool, "-t", "nat", "-S"], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if dump.returncode != 0 or f"-N {chain}" not in dump.stdout.split("\n"):
            continue
        jumps = [line for line in dump.stdout.splitlines()
                 if line.startswith("-A ") and line.split()[-2:] == ["-j", chain]]
        for rule in jumps:
            subprocess.run([tool, "-t", "nat", "-D", *shlex.split(rule)[1:]], capture_output=True, timeout=30)
        for flag in ("-F", "-X"):
            subprocess.run([tool, "-t", "nat", flag, chain], capture_output=True, timeout=30)
        log.warning("sandbox %s: removed %s's masquerade chain %s, which bridge's repeated DEL "
                    "left", sandbox_id[:12], net.name, chain)


def already_gone(err: libcni.CNIError, *, netns: str) -> bool:
    """Whether a DEL error only says that the thing to remove is not there, which
    go-cni's ``Remove`` takes as done: any error whose text says "not found", and,
    when the netns is already gone (passed empty), one saying "no such file or
    directory" (plugins handle an empty netns unevenly: containernetworking/plugins#210).
    Without this a pod whose DEL keeps answering so could never be stopped."""
    text = f"{err.msg}; {err.details}" if err.details else err.msg
    return "not found" in text or (not netns and "no such file or directory" in text)


def _parse(net: PlannedNetwork) -> libcni.NetworkConfigList:
    return _parse_bytes(net.conflist, net.name)


@functools.lru_cache(maxsize=64)
def _parse_bytes(conflist: bytes, name: str) -> libcni.NetworkConfigList:
    # Every ADD/DEL of every pod parses the same few conflists: parse each once.
    return libcni.conflist_from_bytes(conflist, source=f"network {name}")


@functools.lru_cache(maxsize=64)
def _self_contained(net: libcni.NetworkConfigList) -> bytes:
    """The conflist's bytes, with plugins libcni loaded from ``<conf_dir>/<name>/``
    written inline, so the sandbox record (and the DEL that reads it) has them all."""
    if len(_parse_bytes(net.raw, net.name).plugins) == len(net.plugins):
        return net.raw
    doc = json.loads(net.raw)
    doc["plugins"] = [dict(p.raw) for p in net.plugins]
    doc["loadOnlyInlinedPlugins"] = True
    return json.dumps(doc).encode()


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


def pod_ips(results: Mapping[str, Mapping[str, Any]], ip_pref: str) -> list[str]:
    """A pod's IPs, primary first.

    eth0's addresses in the order the plugins returned them, the primary picked as
    containerd's ``selectPodIPs`` does (``ipv4``, the default: the first IPv4 one;
    ``ipv6``: the first IPv6 one; ``cni``: the first one) with the others after it in
    their order. Then, unlike containerd (which reports eth0 only), the addresses of
    eth1, eth2, ... so every attached network shows in ``additional_ips``.
    """
    ips: list[str] = []
    for ifname in sorted((i for i in results if i.startswith("eth")), key=_if_index):
        result = libcni.parse_result(results[ifname])
        chosen = [str(ip.address.ip) for ip in sorted(result.sandbox_ips(ifname), key=result.ips.index)]
        if ifname == "eth0" and ip_pref in ("ipv4", "ipv6"):
            want = 4 if ip_pref == "ipv4" else 6
            first = next((i for i, ip in enumerate(chosen) if ipaddress.ip_address(ip).version == want), 0)
            chosen = chosen[first:first + 1] + chosen[:first] + chosen[first + 1:]
        ips += [ip for ip in chosen if ip not in ips]
    return ips


def _if_index(ifname: str) -> int:
    return int(ifname[3:]) if ifname[3:].isdigit() else 1 << 30


def result_json(result: libcni.Result) -> dict[str, Any]:
    """A result as the plugins returned it (for the store and verbose status)."""
    return json.loads(json.dumps(result.raw))
