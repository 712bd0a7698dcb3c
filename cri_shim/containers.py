"""The container manager: a container's life, from CreateContainer to RemoveContainer.

It owns the in-memory index of containers and their records on disk, and drives the
runtime (``runtime``: conmon, runc/crun, the overlay rootfs); it knows nothing of gRPC.

Per container, on disk: the writable layer under ``<root>/containers/<id>/``
(``upper``, ``work``, image ``volumes``) and the OCI bundle under
``<state>/containers/<id>/`` (``config.json``, the ``rootfs`` mount, conmon's files).
The record is written before anything is made (state ``creating``), so a crash
mid-create leaves enough to undo it at the next start.

Exits are known from conmon: it writes the exit code, then exits, and the
``ExitMonitor`` calls back at once. A container keeps running across a restart of
cri-shim; at start the index is rebuilt from the records, each live conmon watched
again, and one that exited meanwhile read from its exit file.

Locking contract: ``self._lock`` guards ``self._containers`` and ``self._names``, held
only for dictionary work. Each container has its own lock (``_Entry.lock``), taken by
the public methods that change it and by the exit callback; never two entry locks at
once, and never an entry lock while calling into the sandbox manager (which calls
``stop_sandbox``/``remove_sandbox`` with its own sandbox lock held).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import signal as signal_mod
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

from google.protobuf import json_format

from images.service import ImageService
from oci.spec import linux_resources
from runtime import cgroups, rootfs
from runtime.conmon import CTL_REOPEN, Conmon
from runtime.errors import ContainerNotFound, RootfsError, RuntimeDriverError, RuntimeFailed
from runtime.monitor import ExitMonitor, start_time
from runtime.ocicli import ExecResult, OCIRuntime

from .api import api_pb2 as pb
from .containerspec import SpecInputs, build_spec, resources_of, swap_controller
from .containerstore import CREATED, CREATING, EXITED, RUNNING, ContainerRecord, ContainerStore
from .errors import (AlreadyExists, DeadlineExceeded, FailedPrecondition, HostError,
                     InvalidArgument, NotFound)
from .events import DELETED, STARTED, STOPPED, ContainerEvent, EventBroker
from .events import CREATED as EV_CREATED
from .manager import SandboxManager
from .store import READY, SandboxRecord

__all__ = ["ContainerManager", "ContainerFilter"]

log = logging.getLogger(__name__)

KILL_WAIT = 120.0          # seconds to wait for a container to die after SIGKILL
START_ERROR_CODE = 128     # containerd's exit code for a container that failed to start


@dataclass(frozen=True, kw_only=True)
class ContainerFilter:
    id: str = ""
    sandbox_id: str = ""
    state: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass
class _Entry:
    record: ContainerRecord
    lock: threading.Lock = field(default_factory=threading.Lock)
    exited: threading.Event = field(default_factory=threading.Event)
    removed: bool = False


class ContainerManager:
    def __init__(self, *, root: str, state: str, sandboxes: SandboxManager, images: ImageService,
                 store: ContainerStore, conmon: Conmon, runtimes: Mapping[str, OCIRuntime],
                 default_runtime: str, clock: Callable[[], int] = time.time_ns) -> None:
        self.layers_dir = os.path.join(root, "containers")
        self.bundles_dir = os.path.join(state, "containers")
        for d in (self.layers_dir, self.bundles_dir):
            os.makedirs(d, mode=0o711, exist_ok=True)
        self.sandboxes, self.images, self.store = sandboxes, images, store
        self.conmon, self.runtimes, self.default_runtime = conmon, runtimes, default_runtime
        self.events = EventBroker()
        self.monitor = ExitMonitor()
        self.hierarchies = cgroups.Hierarchies.of_this_machine()
        self._clock = clock
        self._lock = threading.Lock()
        self._containers: dict[str, _Entry] = {}
        self._names: dict[str, str] = {}
        sandboxes.stop_containers = self.stop_sandbox
        sandboxes.remove_containers = self.remove_sandbox
        images.in_use = self.chain_ids

    # -- paths ------------------------------------------------------------------------

    def bundle(self, container_id: str) -> str:
        return os.path.join(self.bundles_dir, container_id)

    def layer(self, container_id: str) -> str:
        return os.path.join(self.layers_dir, container_id)

    def _runtime(self, rec: ContainerRecord) -> OCIRuntime:
        return self.runtimes[rec.runtime or self.default_runtime]

    def runtime_of(self, rec: ContainerRecord) -> OCIRuntime:
        """The OCI runtime the container runs under (for exec and attach)."""
        return self._runtime(rec)

    # -- start-up ---------------------------------------------------------------------

    def recover(self) -> None:
        """Rebuild the index from the records; watch live conmons again; undo what a
        crash left half made."""
        known = set()
        for rec in self.store.load_all():
            if rec.state == CREATING:
                log.warning("container %s was being created when the last run stopped; "
                            "removing it", rec.id[:12])
                self._destroy(rec)
                self.store.delete(rec.id)
                continue
            entry = _Entry(rec)
            with self._lock:
                self._containers[rec.id] = entry
                self._names[_name_key(rec, self._sandbox_config(rec.sandbox_id))] = rec.id
            known.add(rec.id)
            if rec.state in (CREATED, RUNNING):
                self.monitor.watch(rec.id, rec.conmon_pid, rec.conmon_start, self._on_exit)
            else:
                entry.exited.set()
        for runtime in self.runtimes.values():
            try:
                states = runtime.list()
            except RuntimeDriverError as exc:
                log.warning("cannot list %s containers: %s", runtime.name, exc)
                continue
            for st in states:
                if st.id not in known:   # runc state without a record: a crash's leftover
                    log.warning("removing %s container %s, which has no record", runtime.name, st.id[:12])
                    runtime.delete(st.id, force=True)
                    continue
                entry = self._containers[st.id]
                if entry.record.state == CREATED and st.status in ("running", "paused"):
                    # The last run died inside StartContainer after runc started the
                    # process but before the record said so: it runs, so say that (its
                    # start time is not known better than now).
                    log.warning("container %s was started when the last run stopped; "
                                "it is running", st.id[:12])
                    with entry.lock:
                        self._save(entry, entry.record.replace(state=RUNNING, started_at=self._clock()))
        log.info("recovered %d containers", len(known))

    def _sandbox_config(self, sandbox_id: str) -> Mapping[str, Any]:
        try:
            return self.sandboxes.get(sandbox_id).config
        except NotFound:
            return {}

    # -- CreateContainer --------------------------------------------------------------

    def create(self, sandbox_id: str, config: pb.ContainerConfig) -> str:
        """Create a container in a READY sandbox; returns its id. On failure nothing
        of it is left: no mount, no runc state, no conmon, no record."""
        if not config.HasField("metadata") or not config.metadata.name:
            raise InvalidArgument("ContainerConfig.metadata.name is required")
        if not config.image.image:
            raise InvalidArgument("ContainerConfig.image.image is required")
        sandbox = self.sandboxes.get(sandbox_id)
        if sandbox.state != READY:
            raise FailedPrecondition(f'sandbox "{sandbox.id}" is not ready (state {sandbox.state})')
        image = self.images.find(config.image.image)
        if image is None:
            raise NotFound(f'failed to resolve image "{config.image.image}": not found')
        container_id = secrets.token_hex(32)
        log_path = ""
        log_dir = sandbox.config.get("log_directory", "")
        if log_dir and config.log_path:
            log_path = os.path.join(log_dir, config.log_path)
        rec = ContainerRecord(
            id=container_id, sandbox_id=sandbox.id, name=config.metadata.name,
            attempt=config.metadata.attempt, state=CREATING, created_at=self._clock(),
            image=config.image.image, image_id=image.id,
            image_ref=(image.repo_digests[0] if image.repo_digests else image.id),
            runtime=sandbox.runtime_handler or self.default_runtime,
            bundle=self.bundle(container_id), log_path=log_path, chain_id=image.chain_id,
            config=json_format.MessageToDict(config, preserving_proto_field_name=True))
        key = _name_key(rec, sandbox.config)
        entry = _Entry(rec)
        with entry.lock:
            with self._lock:
                if key in self._names:
                    raise AlreadyExists(f'failed to reserve container name "{key}": name "{key}" '
                                        f'is reserved for "{self._names[key]}"')
                self._names[key] = container_id
                self._containers[container_id] = entry
            try:
                self.store.put(rec)
                entry.record = self._make(rec, config, sandbox, image)
            except BaseException:
                self._destroy(entry.record)
                try:
                    self.store.delete(container_id)
                finally:
                    with self._lock:
                        self._containers.pop(container_id, None)
                        self._names.pop(key, None)
                    entry.removed = True
                raise
        self.monitor.watch(container_id, entry.record.conmon_pid, entry.record.conmon_start,
                           self._on_exit)
        self._publish(EV_CREATED, entry.record)
        log.info("container %s created in sandbox %s: %s (%s)", container_id[:12], sandbox.id[:12],
                 rec.name, config.image.image)
        return container_id

    def _make(self, rec: ContainerRecord, config: pb.ContainerConfig, sandbox: SandboxRecord,
              image: Any) -> ContainerRecord:
        bundle, layer = rec.bundle, self.layer(rec.id)
        t0 = time.perf_counter()
        try:
            os.makedirs(bundle, mode=0o700)
            os.makedirs(os.path.join(layer, "volumes"), mode=0o700)
        except OSError as exc:
            raise HostError(f"cannot make the directories of container {rec.id}", exc.errno) from exc
        root = os.path.join(bundle, "rootfs")
        try:
            rootfs.mount_overlay(self.images.rootfs(image), os.path.join(layer, "upper"),
                                 os.path.join(layer, "work"), root)
        except RootfsError as exc:
            raise HostError(str(exc), exc.errno) from exc
        pod = self.sandboxes.pod_env.files(sandbox.id) if self.sandboxes.pod_env else None
        target_pid = 0
        opts = config.linux.security_context.namespace_options
        if opts.pid == pb.TARGET:
            target_pid = self._target_pid(opts.target_id, sandbox.id)
        runtime = self._runtime(rec)
        t1 = time.perf_counter()
        spec = build_spec(SpecInputs(
            container_id=rec.id, config=config, sandbox_id=sandbox.id,
            sandbox_config=sandbox.config, image=self.images.config(image),
            image_name=(image.repo_tags[0] if image.repo_tags else rec.image), rootfs=root,
            pod_files=pod, netns_path=sandbox.netns_path,
            pid_init=int((sandbox.pid_init or {}).get("pid", 0)), target_pid=target_pid,
            volumes_dir=os.path.join(layer, "volumes"), systemd_cgroup=runtime.systemd_cgroup))
        try:
            with open(os.path.join(bundle, "config.json"), "w") as f:
                json.dump(spec, f)
        except OSError as exc:
            raise HostError(f"cannot write the spec of container {rec.id}", exc.errno) from exc
        t2 = time.perf_counter()
        created = self.conmon.create(runtime, rec.id, rec.name, bundle, log_path=rec.log_path,
                                     tty=config.tty, stdin=config.stdin, stdin_once=config.stdin_once)
        t3 = time.perf_counter()
        log.debug("container %s: rootfs %.1f ms, spec %.1f ms, conmon+runc create %.1f ms",
                  rec.id[:12], (t1 - t0) * 1e3, (t2 - t1) * 1e3, (t3 - t2) * 1e3)
        rec = rec.replace(state=CREATED, pid=created.pid, conmon_pid=created.conmon_pid,
                          conmon_start=start_time(created.conmon_pid),
                          cgroups_path=spec["linux"].get("cgroupsPath", ""),
                          resources=spec["linux"].get("resources", {}))
        self.store.put(rec)
        return rec

    def _target_pid(self, target_id: str, sandbox_id: str) -> int:
        entry = self._find(target_id, missing_ok=True)
        if entry is None:
            raise NotFound(f'container "{target_id}" does not exist')
        target = entry.record
        if target.sandbox_id != sandbox_id:
            raise InvalidArgument(f'container "{target_id}" does not belong to sandbox "{sandbox_id}"')
        if target.state != RUNNING:
            raise FailedPrecondition(f'container "{target_id}" is not running - in state {target.state}')
        return target.pid

    def _destroy(self, rec: ContainerRecord) -> None:
        """Remove everything of a container but its record (best effort, idempotent)."""
        runtime = self.runtimes.get(rec.runtime or self.default_runtime)
        if runtime is not None:
            try:
                runtime.delete(rec.id, force=True)
            except RuntimeDriverError as exc:
                log.warning("container %s: %s", rec.id[:12], exc)
        if rec.conmon_pid and start_time(rec.conmon_pid) == rec.conmon_start:
            try:
                os.kill(rec.conmon_pid, signal_mod.SIGKILL)
            except ProcessLookupError:
                pass
        bundle = rec.bundle or self.bundle(rec.id)
        try:
            rootfs.unmount(os.path.join(bundle, "rootfs"))
        except RootfsError as exc:
            log.error("container %s: %s", rec.id[:12], exc)
            raise HostError(str(exc), exc.errno) from exc
        if rec.cgroups_path:
            cgroups.remove(self.hierarchies, cgroups.cgroup_relpath(
                rec.cgroups_path, runtime.systemd_cgroup if runtime else False))
        self.conmon.forget(rec.id)
        shutil.rmtree(bundle, ignore_errors=True)
        shutil.rmtree(self.layer(rec.id), ignore_errors=True)

    # -- exits ------------------------------------------------------------------------

    def _on_exit(self, container_id: str) -> None:
        """conmon exited: record the exit (on the monitor's thread)."""
        entry = self._find(container_id, missing_ok=True)
        if entry is None:
            return
        with entry.lock:
            rec = entry.record
            if entry.removed or rec.state == EXITED:
                entry.exited.set()
                return
            code = self.conmon.exit_code(rec.id, rec.bundle)
            if code is None:
                exit_code, finished, reason, message = 255, self._clock(), "Unknown", \
                    "the container's monitor exited without an exit code"
            else:
                exit_code, finished = code[0], int(code[1] * 1e9)
                reason = "Completed" if exit_code == 0 else "Error"
                message = ""
                if self.conmon.oom_killed(rec.bundle):
                    reason = "OOMKilled"
            if rec.state == CREATED and rec.reason == "StartError":
                exit_code, reason, message = rec.exit_code, rec.reason, rec.message
            rec = rec.replace(state=EXITED, exit_code=exit_code, finished_at=finished,
                              reason=reason, message=message, pid=0)
            self._save(entry, rec)
            entry.exited.set()
        self._publish(STOPPED, rec)
        log.info("container %s exited: code %d (%s)", rec.id[:12], exit_code, reason)

    def _save(self, entry: _Entry, rec: ContainerRecord) -> None:
        try:
            self.store.put(rec)
        finally:
            entry.record = rec

    # -- StartContainer / StopContainer / RemoveContainer -------------------------------

    def start(self, container_id: str) -> None:
        entry = self._find(container_id)
        assert entry is not None
        with entry.lock:
            rec = entry.record
            if entry.removed:
                raise NotFound(f'container "{container_id}" not found')
            if rec.state != CREATED:
                raise FailedPrecondition(f'container "{rec.id}" is in {rec.state} state; only a '
                                         "created container can be started")
            sandbox = self.sandboxes.get(rec.sandbox_id)
            if sandbox.state != READY:
                raise FailedPrecondition(f'sandbox "{sandbox.id}" is not ready')
            try:
                self._runtime(rec).start(rec.id)
            except RuntimeDriverError as exc:
                failed = rec.replace(exit_code=START_ERROR_CODE, reason="StartError",
                                     message=str(exc), finished_at=self._clock())
                self._save(entry, failed)
                self._runtime(rec).delete(rec.id, force=True)   # conmon then exits: EXITED
                raise
            if rec.log_path and not os.path.exists(rec.log_path):
                open(rec.log_path, "a").close()   # crictl logs / critest read it at once
            rec = rec.replace(state=RUNNING, started_at=self._clock())
            self._save(entry, rec)
        self._publish(STARTED, rec)
        log.info("container %s started", rec.id[:12])

    def stop(self, container_id: str, timeout: float) -> None:
        """The stop signal, SIGKILL after *timeout* seconds; OK for an unknown or
        stopped container."""
        entry = self._find(container_id, missing_ok=True)
        if entry is None:
            return
        with entry.lock:
            rec = entry.record
            if entry.removed or rec.state != RUNNING:
                return
            runtime = self._runtime(rec)
            if timeout > 0:
                self._signal(runtime, rec, self._stop_signal(rec))
                if self._wait_exit(entry, timeout):
                    return
            # SIGKILL goes to every process of a container that shares a PID namespace
            # (its init's death would not take the others along).
            self._signal(runtime, rec, signal_mod.SIGKILL, everyone=not _has_own_pid_ns(rec))
            if not self._wait_exit(entry, KILL_WAIT):
                raise DeadlineExceeded(f'container "{rec.id}" did not die {KILL_WAIT:.0f}s after SIGKILL')

    def _wait_exit(self, entry: _Entry, timeout: float) -> bool:
        # The exit callback takes the entry lock, which the caller holds: let it run.
        entry.lock.release()
        try:
            return entry.exited.wait(timeout)
        finally:
            entry.lock.acquire()

    def _signal(self, runtime: OCIRuntime, rec: ContainerRecord, sig: int, *,
                everyone: bool = False) -> None:
        try:
            runtime.kill(rec.id, int(sig), all_processes=everyone)
        except ContainerNotFound:
            pass
        except RuntimeFailed as exc:
            if "not running" not in exc.message and "no such process" not in exc.message:
                raise

    def _stop_signal(self, rec: ContainerRecord) -> int:
        wanted = rec.config.get("stop_signal")
        if wanted and wanted != "RUNTIME_DEFAULT":
            sig = _signal_number(str(wanted))
            if sig:
                return sig
        image = self.images.find(rec.image_id)
        text = self.images.config(image).stop_signal if image is not None else ""
        return _signal_number(text) or signal_mod.SIGTERM

    def remove(self, container_id: str) -> None:
        """Stop (kill) if running, then remove everything; OK for an unknown id."""
        entry = self._find(container_id, missing_ok=True)
        if entry is None:
            return
        self.stop(container_id, 0)
        with entry.lock:
            if entry.removed:
                return
            rec = entry.record
            self._destroy(rec)
            self.store.delete(rec.id)
            entry.removed = True
            with self._lock:
                self._containers.pop(rec.id, None)
                key = next((k for k, v in self._names.items() if v == rec.id), None)
                if key is not None:
                    del self._names[key]
        self._publish(DELETED, rec)
        log.info("container %s removed", rec.id[:12])

    def stop_sandbox(self, sandbox_id: str, deadline: float | None) -> None:
        """Stop a pod's containers (StopPodSandbox) as containerd does: killed at once,
        all together (kubelet has stopped them with their grace periods before; this is
        for what is still running then)."""
        running = [r for r in self.list(ContainerFilter(sandbox_id=sandbox_id)) if r.state == RUNNING]
        threads = [threading.Thread(target=self.stop, args=(r.id, 0), daemon=True) for r in running]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for rec in running:   # a stop that failed in its thread: once more, here, to see why
            entry = self._find(rec.id, missing_ok=True)
            if entry is not None and entry.record.state == RUNNING:
                self.stop(rec.id, 0)

    def remove_sandbox(self, sandbox_id: str) -> None:
        for rec in self.list(ContainerFilter(sandbox_id=sandbox_id)):
            self.remove(rec.id)

    # -- queries ----------------------------------------------------------------------

    def get(self, container_id: str) -> ContainerRecord:
        entry = self._find(container_id)
        assert entry is not None
        return entry.record

    def list(self, flt: ContainerFilter | None = None) -> list[ContainerRecord]:
        flt = flt or ContainerFilter()
        with self._lock:
            records = [e.record for e in self._containers.values() if e.record.state != CREATING]
        if flt.id:
            matches = [r for r in records if r.id.startswith(flt.id)]
            wanted = matches[0].id if len(matches) == 1 else flt.id
            records = [r for r in records if r.id == wanted]
        if flt.sandbox_id:
            matches = {r.sandbox_id for r in records if r.sandbox_id.startswith(flt.sandbox_id)}
            wanted = next(iter(matches)) if len(matches) == 1 else flt.sandbox_id
            records = [r for r in records if r.sandbox_id == wanted]
        if flt.state is not None:
            records = [r for r in records if r.state == flt.state]
        if flt.labels:
            records = [r for r in records if all(r.labels.get(k) == v for k, v in flt.labels.items())]
        return sorted(records, key=lambda r: r.created_at)

    def chain_ids(self) -> Iterable[str]:
        """The image chains containers use (kept from image garbage collection)."""
        with self._lock:
            return [e.record.chain_id for e in self._containers.values() if e.record.chain_id]

    def spec(self, rec: ContainerRecord) -> dict[str, Any]:
        try:
            with open(os.path.join(rec.bundle, "config.json")) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    def _find(self, container_id: str, *, missing_ok: bool = False) -> _Entry | None:
        if not container_id:
            raise InvalidArgument("container id is required")
        with self._lock:
            entry = self._containers.get(container_id)
            if entry is None:
                matches = [e for i, e in self._containers.items() if i.startswith(container_id)]
                if len(matches) > 1:
                    raise InvalidArgument(f'container id prefix "{container_id}" is ambiguous')
                entry = matches[0] if matches else None
        if entry is not None and entry.record.state == CREATING:
            entry = None
        if entry is None and not missing_ok:
            raise NotFound(f'an error occurred when try to find container "{container_id}": not found')
        return entry

    # -- exec, update, logs -----------------------------------------------------------

    def running(self, container_id: str) -> ContainerRecord:
        """The record of a running container; FailedPrecondition for one that is not."""
        rec = self.get(container_id)
        if rec.state != RUNNING:
            raise FailedPrecondition(f'container "{rec.id}" is not running (state {rec.state})')
        return rec

    def exec_sync(self, container_id: str, cmd: list[str], timeout: float) -> ExecResult:
        rec = self.running(container_id)
        if not cmd:
            raise InvalidArgument("ExecSyncRequest.cmd is required")
        process = dict(self.spec(rec).get("process") or {})
        process.update(args=list(cmd), terminal=False)
        process.pop("consoleSize", None)
        result = self._runtime(rec).exec_sync(rec.id, process, timeout, work_dir=rec.bundle)
        if result.timed_out:
            raise DeadlineExceeded(f"command {' '.join(cmd)!r} timed out after {timeout:g}s")
        return result

    def update_resources(self, container_id: str, resources: pb.LinuxContainerResources) -> None:
        entry = self._find(container_id)
        assert entry is not None
        with entry.lock:
            rec = entry.record
            if rec.state not in (CREATED, RUNNING):
                raise FailedPrecondition(f'container "{rec.id}" is not running (state {rec.state})')
            wanted = linux_resources(resources_of(resources), swap_controller=swap_controller())
            self._runtime(rec).update(rec.id, wanted)
            merged = dict(rec.resources)
            for key, value in wanted.items():
                merged[key] = {**merged.get(key, {}), **value} if isinstance(value, dict) else value
            config = dict(rec.config)
            linux = dict(config.get("linux") or {})
            linux["resources"] = json_format.MessageToDict(resources, preserving_proto_field_name=True)
            config["linux"] = linux
            self._save(entry, rec.replace(resources=merged, config=config))

    def reopen_log(self, container_id: str) -> None:
        rec = self.get(container_id)
        if rec.state != RUNNING:
            raise FailedPrecondition(f'container "{rec.id}" is not running')
        if not rec.log_path:
            return
        try:
            Conmon.control(rec.bundle, CTL_REOPEN)
        except OSError as exc:
            raise FailedPrecondition(f"cannot reach the monitor of container {rec.id}: {exc.strerror}") from exc
        deadline = time.monotonic() + 5
        while not os.path.exists(rec.log_path) and time.monotonic() < deadline:
            time.sleep(0.005)
        if not os.path.exists(rec.log_path):
            raise DeadlineExceeded(f"container {rec.id}: the log {rec.log_path} was not reopened")

    # -- stats ------------------------------------------------------------------------

    def stats(self, rec: ContainerRecord) -> cgroups.CgroupStats:
        if rec.state != RUNNING or not rec.cgroups_path:
            return cgroups.CgroupStats()
        runtime = self.runtimes.get(rec.runtime or self.default_runtime)
        rel = cgroups.cgroup_relpath(rec.cgroups_path, runtime.systemd_cgroup if runtime else False)
        return cgroups.read_stats(self.hierarchies, rel)

    def writable_layer(self, rec: ContainerRecord) -> tuple[int, int]:
        """(bytes, inodes) the container's upper dir uses."""
        used = inodes = 0
        for dirpath, dirnames, filenames in os.walk(os.path.join(self.layer(rec.id), "upper")):
            for name in [*dirnames, *filenames]:
                try:
                    st = os.lstat(os.path.join(dirpath, name))
                except OSError:
                    continue
                used += st.st_blocks * 512
                inodes += 1
        return used, inodes

    # -- events -----------------------------------------------------------------------

    def _publish(self, kind: str, rec: ContainerRecord) -> None:
        self.events.publish(ContainerEvent(kind, rec.id, rec.sandbox_id, self._clock(), rec))

    def close(self) -> None:
        self.events.close()
        self.monitor.close()


def _name_key(rec: ContainerRecord, sandbox_config: Mapping[str, Any]) -> str:
    # containerd's container name: <name>_<pod name>_<pod namespace>_<pod uid>_<attempt>
    meta = sandbox_config.get("metadata") or {}
    return "_".join([rec.name, str(meta.get("name", "")), str(meta.get("namespace", "")),
                     str(meta.get("uid", "")), str(rec.attempt)])


def _has_own_pid_ns(rec: ContainerRecord) -> bool:
    opts = (((rec.config.get("linux") or {}).get("security_context") or {})
            .get("namespace_options") or {})
    return opts.get("pid", "POD") in ("CONTAINER", 1)


def _signal_number(text: str) -> int:
    """``SIGTERM``, ``TERM``, ``15`` (an image's StopSignal; CRI's Signal names)."""
    text = text.strip().upper()
    if not text:
        return 0
    if text.isdigit():
        return int(text)
    name = text if text.startswith("SIG") else f"SIG{text}"
    if name.startswith("SIGRTMINPLUS"):
        return int(signal_mod.SIGRTMIN) + int(name[len("SIGRTMINPLUS"):])
    if name.startswith("SIGRTMAXMINUS"):
        return int(signal_mod.SIGRTMAX) - int(name[len("SIGRTMAXMINUS"):])
    sig = getattr(signal_mod, name, None)
    return int(sig) if sig is not None else 0
