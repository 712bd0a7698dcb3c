"""The sandbox manager: a pod sandbox's life, from RunPodSandbox to RemovePodSandbox.

It owns the in-memory index of sandboxes, the on-disk store, the pinned network
namespaces and the CNI attachments; it knows nothing of gRPC or protobuf.

Locking contract: ``self._lock`` guards ``self._sandboxes`` and ``self._names`` and is
held only for dictionary work, never across a plugin exec or a netns operation. Each
sandbox has its own lock (``_Entry.lock``), taken only by the public methods that change
that sandbox and held across its netns/CNI work; private methods never take an entry
lock. So two pods are networked in parallel, and Stop/Remove of one pod serialise only
with each other.

A record whose ``networks`` is non-empty still owes a teardown: the field is cleared
only when every DEL has worked and the netns is unpinned, so a failed stop (or a
failed undo, or a failed repair at start-up) is retried by the next stop or remove.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import libcni

from . import netns as netns_mod
from .config import Config
from . import conftemplate
from .errors import (NETWORK_NOT_READY_MESSAGE, NETWORK_NOT_READY_REASON, AlreadyExists,
                     FailedPrecondition, InvalidArgument, NetworkError, NetworkNotReady, NotFound,
                     StoreError)
from .podconfig import SandboxSpec, parse_pod_config
from .podenv import PidInit, PodEnvironment, PodPlan
from .podnet import PodNetwork, PodNetworkSpec, pod_ips, result_json
from .store import CREATING, NOTREADY, READY, SandboxRecord, Store
from .trace import Recorder, Trace, conf_dir_files

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class SandboxFilter:
    id: str = ""
    state: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass
class _Entry:
    record: SandboxRecord
    lock: threading.Lock = field(default_factory=threading.Lock)
    removed: bool = False


class SandboxManager:
    def __init__(self, config: Config, network: PodNetwork, store: Store, *,
                 clock: Callable[[], int] = time.time_ns, netns: Any = netns_mod,
                 pod_env: PodEnvironment | None = None) -> None:
        """*netns* provides ``new_path``, ``pin``, ``unpin`` and ``is_pinned`` (the
        ``cri_shim.netns`` module; tests pass a fake that makes plain files).
        *pod_env* makes each pod's IPC/UTS namespaces, files and PID init (None: pods
        get a network only, as in the manager's unit tests)."""
        self.config = config
        self.network = network
        self.store = store
        self._clock = clock
        self._netns = netns
        self.pod_env = pod_env
        # The container side's hooks: stop (then remove) a pod's containers before its
        # namespaces go. Called with the sandbox's lock held.
        self.stop_containers: Callable[[str, float | None], None] = lambda sandbox_id, deadline: None
        self.remove_containers: Callable[[str], None] = lambda sandbox_id: None
        self._lock = threading.Lock()
        self._sandboxes: dict[str, _Entry] = {}
        self._names: dict[str, str] = {}   # reserved sandbox name -> id
        self.pod_cidrs: list[str] = []     # the node's, from UpdateRuntimeConfig
        self._ips: dict[str, tuple[SandboxRecord, list[str]]] = {}   # see ips()
        self.recorder = Recorder()         # each sandbox's trace (ctl explain)

    # -- start-up -----------------------------------------------------------------

    def recover(self) -> None:
        """Load the store and repair what the last run could not finish.

        A sandbox still ``creating`` (the server died mid-RunPodSandbox) is torn down
        and forgotten. A READY sandbox whose netns is gone (the machine rebooted, or
        someone unmounted it) is torn down and marked NOTREADY, so host-local's IP
        files, which survive a reboot, are released; kubelet then recreates the pod.
        """
        for rec in self.store.load_all():
            if rec.state == CREATING:
                log.warning("sandbox %s (%s/%s) was being created when the last run stopped; "
                            "tearing it down", rec.id[:12], rec.namespace, rec.name)
                if self._repair(rec, forget=True):
                    continue
                rec = rec.replace(state=NOTREADY)
            elif rec.state == READY and rec.netns_path and not self._netns.is_pinned(rec.netns_path):
                log.warning("sandbox %s (%s/%s): its netns %s is gone; tearing down its "
                            "networks", rec.id[:12], rec.namespace, rec.name, rec.netns_path)
                repaired = self._repair(rec, forget=False)
                rec = rec.replace(state=NOTREADY, **({"networks": (), "results": {}} if repaired else {}))
            with self._lock:
                self._sandboxes[rec.id] = _Entry(rec)
                self._names[_name_key(rec)] = rec.id
        log.info("recovered %d sandboxes from %s", len(self._sandboxes), getattr(self.store, "directory", "store"))

    def _repair(self, rec: SandboxRecord, *, forget: bool) -> bool:
        """Teardown at start-up; True when it worked. On failure the record stays
        NOTREADY with its networks (a teardown still owed), so a later stop or remove
        retries it. Nothing one record does can keep the server from starting."""
        try:
            self._teardown(rec)
        except Exception as exc:
            log.error("sandbox %s: teardown failed (%s); kept as NOTREADY so a stop or "
                      "remove can retry it", rec.id[:12], exc)
            self.store.put(rec.replace(state=NOTREADY))
            return False
        if forget:
            self._forget_pod_env(rec)
            self.store.delete(rec.id)
        else:
            self.store.put(rec.replace(state=NOTREADY, networks=(), results={}))
        return True

    def gc(self) -> None:
        """CNI GC: attachments in libcni's cache that no known READY sandbox owns are
        deleted (containerd 2.x does the same through libcni's GCNetworkList)."""
        with self._lock:
            records = [e.record for e in self._sandboxes.values()]
        valid = [(n.name, r.id, n.ifname) for r in records if r.state in (READY, CREATING)
                 for n in r.networks]
        self.network.gc(valid)

    # -- node network -------------------------------------------------------------

    def network_condition(self) -> tuple[bool, str, str]:
        """(ready, reason, message) for Status' NetworkReady condition: a config must
        be loaded, and CNI 1.1.0 plugins must not answer STATUS with an error."""
        if not self.network.status().ready:
            return False, NETWORK_NOT_READY_REASON, NETWORK_NOT_READY_MESSAGE
        problem = self.network.plugin_status()
        if problem:
            return False, NETWORK_NOT_READY_REASON, f"Network plugin returns error: {problem}"
        return True, "", ""

    def cni_info(self) -> dict[str, Any]:
        """The loaded CNI configuration, as ``Status(verbose)`` shows it."""
        net = self.network.status()
        settings = self.config.cni
        return {
            "pluginDirs": list(settings.bin_dirs),
            "pluginConfDir": settings.conf_dir,
            "pluginMaxConfNum": settings.max_conf_num,
            "podCIDRs": self.pod_cidrs,
            "networks": [{"name": n.name, "source": n.source, "config": json.loads(n.raw)}
                         for n in net.networks],
            "skipped": [{"path": s.path, "reason": s.reason} for s in net.skipped],
        }

    def update_pod_cidrs(self, pod_cidr: str) -> None:
        """kubelet's UpdateRuntimeConfig: render ``conf_template`` for the node's pod
        CIDR(s) ("a,b" for dual stack) when no network config is loaded yet."""
        cidrs = [c.strip() for c in pod_cidr.split(",") if c.strip()]
        if not cidrs or cidrs == self.pod_cidrs:
            return
        for c in cidrs:
            try:
                ipaddress.ip_network(c, strict=False)
            except ValueError as exc:
                raise InvalidArgument(f"pod CIDR {c!r}: {exc}") from exc
        log.info("node pod CIDRs are now %s", ",".join(cidrs))
        self.pod_cidrs = cidrs
        template = self.config.cni.conf_template
        if not template:
            return
        if self.network.status().ready:
            log.info("network config already loaded; not rendering conf_template")
            return
        try:
            path = conftemplate.write_conf(self.config.cni.conf_dir, template, cidrs)
        except (OSError, conftemplate.TemplateError) as exc:
            raise FailedPrecondition(f"cannot render conf_template {template}: {exc}") from exc
        log.info("rendered %s for pod CIDRs %s into %s", template, ",".join(cidrs), path)

    # -- RunPodSandbox ------------------------------------------------------------

    def run(self, spec: SandboxSpec, *, deadline: float | None = None,
            runtime_handler: str = "") -> str:
        """Create a sandbox and network it; return its 64-hex-char id.

        *deadline* (``time.monotonic()``) is the caller's: plugin execs still running
        at it are killed. On any failure, the deadline included, everything done so
        far is undone (DEL, unpin, drop the record) before the error is raised; the
        undo itself runs under the per-exec timeout only, as containerd's deferred
        clean-up gets a context of its own.
        """
        handlers = self.config.containers.runtimes
        if runtime_handler and runtime_handler not in handlers:
            raise InvalidArgument(f'no runtime for "{runtime_handler}" is configured '
                                  f"(configured: {', '.join(sorted(handlers))})")
        sandbox_id = secrets.token_hex(32)
        rec = SandboxRecord(id=sandbox_id, name=spec.name, namespace=spec.namespace,
                            uid=spec.uid, attempt=spec.attempt, state=CREATING,
                            created_at=self._clock(), host_network=spec.host_network,
                            runtime_handler=runtime_handler,
                            config=spec.config)
        entry = _Entry(rec)
        key = _name_key(rec)
        with entry.lock:
            with self._lock:
                if key in self._names:
                    raise AlreadyExists(
                        f'sandbox name "{key}" is reserved for sandbox {self._names[key]}')
                self._names[key] = sandbox_id
                self._sandboxes[sandbox_id] = entry
            try:
                self._create(entry, spec, deadline)
            except BaseException:
                if entry.record.state == CREATING:   # fully undone: forget it
                    with self._lock:
                        self._sandboxes.pop(sandbox_id, None)
                        self._names.pop(key, None)
                    entry.removed = True
                # else the undo failed: it stays listed as NOTREADY, name reserved,
                # so kubelet's stop/remove (or the next start) finishes the teardown.
                raise
        log.info("sandbox %s ready: %s/%s ips=%s", sandbox_id[:12], spec.namespace, spec.name,
                 self.ips(entry.record) or "-")
        return sandbox_id

    def _create(self, entry: _Entry, spec: SandboxSpec, deadline: float | None) -> None:
        rec = entry.record
        plan = PodPlan.of(spec.config)   # InvalidArgument before anything is made
        planned: tuple = ()
        if not rec.host_network:
            try:
                planned = self.network.plan()
            except libcni.CNIError as exc:
                raise NetworkError(f'failed to set up network for sandbox "{rec.id}"', exc) from exc
            if not planned:
                raise NetworkNotReady(self.network.not_ready_detail())
            rec = rec.replace(netns_path=self._netns.new_path(self.config.cni.netns_dir),
                              networks=planned)
        rec = entry.record = rec.replace(pod_env=self.pod_env is not None)
        self.store.put(rec)   # the intent, before anything is made
        trace = Trace("RunPodSandbox", networks={n.ifname: n.name for n in planned})
        ips: list[str] = []
        try:
            trace.data["config"] = self._config_seen(rec)
            self.recorder.begin(rec.id, trace)
            if not rec.host_network:
                started = time.monotonic()
                self._netns.pin(rec.netns_path, loopback_up=self.config.cni.use_internal_loopback)
                trace.step("netns", started, time.monotonic() - started, action="pin",
                           path=rec.netns_path, loopback_up=self.config.cni.use_internal_loopback)
            if self.pod_env is not None:
                init = self.pod_env.set_up(rec.id, plan)
                if init is not None:
                    rec = entry.record = rec.replace(pid_init=init.to_json())
                    self.store.put(rec)
            results_json: dict = {}
            if not rec.host_network:
                results = self.network.setup(planned, spec.network, rec.id, rec.netns_path,
                                             deadline=deadline)
                results_json = {ifname: result_json(r) for ifname, r in results.items()}
                ips = pod_ips(results_json, self.config.cni.ip_pref)
                if not ips:
                    # containerd: "failed to find network info for sandbox"; kubelet
                    # would recreate an IP-less sandbox forever.
                    raise libcni.CNIError(libcni.ERR_UNKNOWN, "no IP address on eth0 in the CNI result",
                                          json.dumps(results_json.get("eth0", {})))
            if self.pod_env is not None:
                self.pod_env.after_network(rec.id, plan, rec.netns_path, ips[0] if ips else "")
            self.recorder.end(rec.id)
            ready = rec.replace(state=READY, results=results_json,
                                trace={"run": trace.finish(ips=ips)})
            self.store.put(ready)   # a sandbox not on disk must not exist: undone below
        except BaseException as exc:
            # Kept only if the undo fails too (the sandbox then stays, NOTREADY); the
            # undo's own DELs are recorded into it as they run.
            entry.record = entry.record.replace(trace={"run": trace.finish(error=str(exc) or type(exc).__name__)})
            try:
                self._undo(entry, entry.record)
            finally:
                self.recorder.end(rec.id)
            if isinstance(exc, libcni.CNIError):
                raise NetworkError(f'failed to set up network for sandbox "{rec.id}"', exc) from exc
            raise
        entry.record = ready
        if not rec.host_network:
            self._ips[rec.id] = (ready, ips)   # parsed once, here (see ips())

    def _config_seen(self, rec: SandboxRecord) -> dict[str, Any]:
        """What RunPodSandbox read to network this pod, for its trace."""
        cni = self.config.cni
        seen: dict[str, Any] = {"file": self.config.source, "host_network": rec.host_network}
        if not rec.host_network:
            seen.update(conf_dir=cni.conf_dir, max_conf_num=cni.max_conf_num,
                        bin_dirs=list(cni.bin_dirs), netns_dir=cni.netns_dir,
                        use_internal_loopback=cni.use_internal_loopback,
                        files=conf_dir_files(self.network.status(), cni.max_conf_num))
        return seen

    def _undo(self, entry: _Entry, rec: SandboxRecord) -> None:
        """Undo a half-made sandbox. When the teardown fails it stays NOTREADY with its
        networks (a teardown still owed); when the record cannot be written either,
        the intent on disk still says ``creating``, which the next start repairs."""
        try:
            self._teardown(rec)
        except Exception as undo:
            log.error("sandbox %s: undoing a failed set-up failed too: %s", rec.id[:12], undo)
            entry.record = rec.replace(state=NOTREADY)
            try:
                self.store.put(entry.record)
            except StoreError as exc:
                log.error("sandbox %s: %s; the next start repairs it", rec.id[:12], exc)
            return
        self._forget_pod_env(rec)
        try:
            self.store.delete(rec.id)
        except StoreError as exc:
            log.error("sandbox %s: %s; the next start removes it", rec.id[:12], exc)

    def _forget_pod_env(self, rec: SandboxRecord) -> None:
        if self.pod_env is not None and rec.pod_env:
            try:
                self.pod_env.remove(rec.id)
            except Exception as exc:   # a directory left is no reason to keep a record
                log.error("sandbox %s: cannot remove the pod's directory: %s", rec.id[:12], exc)

    # -- StopPodSandbox / RemovePodSandbox ---------------------------------------

    def stop(self, sandbox_id: str, *, deadline: float | None = None) -> None:
        """Tear the network down and unpin the netns; idempotent, OK for an unknown id.
        A DEL cut short by *deadline* leaves the teardown owed (the next stop retries)."""
        entry = self._find(sandbox_id, missing_ok=True)
        if entry is None:
            return
        with entry.lock:
            if entry.removed:
                return
            self._stop(entry, deadline)

    def remove(self, sandbox_id: str, *, deadline: float | None = None) -> None:
        """Stop if needed, then forget the sandbox; OK for an unknown id."""
        entry = self._find(sandbox_id, missing_ok=True)
        if entry is None:
            return
        with entry.lock:
            if entry.removed:
                return
            self._stop(entry, deadline)
            self.remove_containers(entry.record.id)
            self._forget_pod_env(entry.record)
            self.store.delete(entry.record.id)
            entry.removed = True
            self._ips.pop(entry.record.id, None)
            with self._lock:
                self._sandboxes.pop(entry.record.id, None)
                if self._names.get(_name_key(entry.record)) == entry.record.id:
                    del self._names[_name_key(entry.record)]
        log.info("sandbox %s removed", entry.record.id[:12])

    def _stop(self, entry: _Entry, deadline: float | None = None) -> None:
        rec = entry.record
        self.stop_containers(rec.id, deadline)
        if rec.state == NOTREADY and not rec.networks and not rec.pid_init:
            return
        repeated = rec.teardown_started   # a stop (or the undo) began before and did not end
        if not repeated and rec.networks:
            rec = entry.record = rec.replace(teardown_started=True)
            self.store.put(rec)
        trace = self.recorder.begin(rec.id, Trace("StopPodSandbox",
                                                  networks={n.ifname: n.name for n in rec.networks}))
        try:
            self._teardown(rec, deadline, trace, repeated=repeated)
        except BaseException as exc:
            entry.record = rec.replace(trace={**rec.trace, "stop": trace.finish(
                error=str(exc) or type(exc).__name__)})
            raise
        finally:
            self.recorder.end(rec.id)
        entry.record = rec.replace(state=NOTREADY, networks=(), results={}, pid_init=None,
                                   teardown_started=False, trace={**rec.trace, "stop": trace.finish()})
        self.store.put(entry.record)
        log.info("sandbox %s stopped", rec.id[:12])

    def _teardown(self, rec: SandboxRecord, deadline: float | None = None,
                  trace: Trace | None = None, *, repeated: bool = False) -> None:
        """Kill the PID namespace's init, DEL the planned networks (best effort), then
        unpin the netns and release the pod's other namespaces and /dev/shm.

        The netns is unpinned only when every DEL worked: like containerd, a failed DEL
        keeps the sandbox as it is, so a retried stop can finish the job.
        """
        if self.pod_env is not None and rec.pid_init:
            self.pod_env.stop_init(PidInit.from_json(rec.pid_init))
        if rec.networks:
            spec = _network_spec_from_record(rec)
            netns = rec.netns_path if self._netns.is_pinned(rec.netns_path) else ""
            try:
                self.network.teardown(rec.networks, spec, rec.id, netns, deadline=deadline,
                                      repeated=repeated)
            except libcni.CNIError as exc:
                raise NetworkError(f'failed to destroy network for sandbox "{rec.id}"', exc) from exc
        if rec.netns_path:
            started = time.monotonic()
            self._netns.unpin(rec.netns_path)
            if trace is not None:
                trace.step("netns", started, time.monotonic() - started, action="unpin",
                           path=rec.netns_path)
        if self.pod_env is not None and rec.pod_env:
            self.pod_env.release(rec.id)

    # -- queries ------------------------------------------------------------------

    def get(self, sandbox_id: str) -> SandboxRecord:
        """A sandbox by id or unique prefix. One still being created is NOT_FOUND,
        as in containerd, whose store only gets a sandbox once it is set up."""
        entry = self._find(sandbox_id)
        assert entry is not None
        if entry.record.state == CREATING:
            raise NotFound(f'an error occurred when try to find sandbox: not found: "{sandbox_id}"')
        return entry.record

    def list(self, flt: SandboxFilter | None = None) -> list[SandboxRecord]:
        flt = flt or SandboxFilter()
        with self._lock:
            records = [e.record for e in self._sandboxes.values() if e.record.state != CREATING]
        if flt.id:
            # containerd resolves a unique id prefix, then matches exactly.
            matches = [r for r in records if r.id.startswith(flt.id)]
            wanted = matches[0].id if len(matches) == 1 else flt.id
            records = [r for r in records if r.id == wanted]
        if flt.state is not None:
            records = [r for r in records if r.state == flt.state]
        if flt.labels:
            records = [r for r in records
                       if all(r.labels.get(k) == v for k, v in flt.labels.items())]
        return sorted(records, key=lambda r: r.created_at)

    def ips(self, rec: SandboxRecord) -> list[str]:
        """The pod's IPs, eth0's primary first (empty for host network or when stopped)."""
        if rec.host_network or rec.state != READY:
            return []
        cached = self._ips.get(rec.id)
        if cached is None or cached[0] is not rec:   # parsing results costs ~0.2 ms
            cached = self._ips[rec.id] = (rec, pod_ips(rec.results, self.config.cni.ip_pref))
        return list(cached[1])

    def _find(self, sandbox_id: str, *, missing_ok: bool = False) -> _Entry | None:
        """Look up by full id or unique prefix (as containerd's id index does)."""
        if not sandbox_id:
            raise InvalidArgument("sandbox id is required")
        with self._lock:
            entry = self._sandboxes.get(sandbox_id)
            if entry is None:
                matches = [e for i, e in self._sandboxes.items() if i.startswith(sandbox_id)]
                if len(matches) > 1:
                    raise InvalidArgument(f'sandbox id prefix "{sandbox_id}" is ambiguous: '
                                          f"{len(matches)} sandboxes match")
                entry = matches[0] if matches else None
        if entry is None and not missing_ok:
            raise NotFound(f'an error occurred when try to find sandbox: not found: "{sandbox_id}"')
        return entry


def _name_key(rec: SandboxRecord) -> str:
    # containerd's sandbox name: <name>_<namespace>_<uid>_<attempt>
    return f"{rec.name}_{rec.namespace}_{rec.uid}_{rec.attempt}"


def _network_spec_from_record(rec: SandboxRecord) -> PodNetworkSpec:
    # Teardown must work from the record alone (also after a restart).
    return parse_pod_config(rec.config).network
