"""The CRI's container calls: a thin translation over the container manager.

As containerd's CRI plugin answers them: ContainerStatus' ``image`` is the image's
first repo tag (the name the client used when the image has none) and ``image_ref``
its first repo digest (else its id); verbose ``info`` holds ``{"sandboxID", "pid",
"runtimeType", "runtimeOptions", "config", "runtimeSpec"}``; stats carry CPU (with
nano-cores from the previous sample), memory working set and the writable layer;
StopContainer and RemoveContainer of an unknown container are OK.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import time
from typing import Any, Iterator

from google.protobuf import json_format

from .api import api_pb2 as pb
from .containers import ContainerFilter, ContainerManager
from .containerstore import CREATED, EXITED, RUNNING, ContainerRecord
from .events import CREATED as EV_CREATED
from .events import DELETED, STARTED, STOPPED
from .manager import SandboxFilter, SandboxManager
from .errors import FailedPrecondition
from .podconfig import reject_nul
from .rpc import rpc
from .streams import Streams

__all__ = ["ContainerMethods"]

log = logging.getLogger(__name__)

_STATE = {CREATED: pb.CONTAINER_CREATED, RUNNING: pb.CONTAINER_RUNNING, EXITED: pb.CONTAINER_EXITED}
_PB_STATE = {v: k for k, v in _STATE.items()}
_EVENT = {EV_CREATED: pb.CONTAINER_CREATED_EVENT, STARTED: pb.CONTAINER_STARTED_EVENT,
          STOPPED: pb.CONTAINER_STOPPED_EVENT, DELETED: pb.CONTAINER_DELETED_EVENT}


class ContainerMethods:
    """Mixed into the CRI servicer; needs ``self.containers``, ``self.manager``,
    ``self.streams`` and ``self.sandbox_status``."""

    containers: ContainerManager
    manager: SandboxManager
    streams: Streams | None
    _cpu_samples: dict[str, tuple[int, int]]

    def sandbox_status(self, sandbox_id: str) -> pb.PodSandboxStatus:   # the servicer's
        raise NotImplementedError

    # -- lifecycle --------------------------------------------------------------------

    @rpc
    def CreateContainer(self, request: pb.CreateContainerRequest, context: Any) -> pb.CreateContainerResponse:
        reject_nul(request.config, "ContainerConfig")
        container_id = self.containers.create(request.pod_sandbox_id, request.config)
        return pb.CreateContainerResponse(container_id=container_id)

    @rpc
    def StartContainer(self, request: pb.StartContainerRequest, context: Any) -> pb.StartContainerResponse:
        self.containers.start(request.container_id)
        return pb.StartContainerResponse()

    @rpc
    def StopContainer(self, request: pb.StopContainerRequest, context: Any) -> pb.StopContainerResponse:
        self.containers.stop(request.container_id, float(request.timeout))
        return pb.StopContainerResponse()

    @rpc
    def RemoveContainer(self, request: pb.RemoveContainerRequest, context: Any) -> pb.RemoveContainerResponse:
        self.containers.remove(request.container_id)
        return pb.RemoveContainerResponse()

    # -- queries ----------------------------------------------------------------------

    @rpc
    def ListContainers(self, request: pb.ListContainersRequest, context: Any) -> pb.ListContainersResponse:
        f = request.filter
        flt = ContainerFilter(id=f.id, sandbox_id=f.pod_sandbox_id, labels=dict(f.label_selector),
                              state=_PB_STATE.get(f.state.state, "unknown") if f.HasField("state") else None)
        items = []
        for rec in self.containers.list(flt):
            image, image_ref = self._image_names(rec)
            c = pb.Container(id=rec.id, pod_sandbox_id=rec.sandbox_id, state=_STATE[rec.state],
                             created_at=rec.created_at, image=pb.ImageSpec(image=image),
                             image_ref=image_ref, image_id=rec.image_id, labels=rec.labels,
                             annotations=rec.annotations)
            c.metadata.name, c.metadata.attempt = rec.name, rec.attempt
            items.append(c)
        return pb.ListContainersResponse(containers=items)

    @rpc
    def ContainerStatus(self, request: pb.ContainerStatusRequest, context: Any) -> pb.ContainerStatusResponse:
        rec = self.containers.get(request.container_id)
        reply = pb.ContainerStatusResponse(status=self.container_status(rec))
        if request.verbose:
            reply.info["info"] = json.dumps(self._verbose(rec))
        return reply

    def container_status(self, rec: ContainerRecord) -> pb.ContainerStatus:
        image, image_ref = self._image_names(rec)
        config = json_format.ParseDict(rec.config, pb.ContainerConfig(), ignore_unknown_fields=True)
        st = pb.ContainerStatus(
            id=rec.id, state=_STATE[rec.state], created_at=rec.created_at,
            started_at=rec.started_at, finished_at=rec.finished_at, exit_code=rec.exit_code,
            image=pb.ImageSpec(image=image), image_ref=image_ref, image_id=rec.image_id,
            reason=rec.reason, message=rec.message, labels=rec.labels,
            annotations=rec.annotations, mounts=list(config.mounts), log_path=rec.log_path,
            stop_signal=config.stop_signal)
        st.metadata.name, st.metadata.attempt = rec.name, rec.attempt
        if config.linux.HasField("resources"):
            st.resources.linux.CopyFrom(config.linux.resources)
        user = (self.containers.spec(rec).get("process") or {}).get("user") or {}
        if user:
            st.user.linux.uid, st.user.linux.gid = int(user.get("uid", 0)), int(user.get("gid", 0))
            st.user.linux.supplemental_groups.extend(int(g) for g in user.get("additionalGids") or [])
        return st

    def _image_names(self, rec: ContainerRecord) -> tuple[str, str]:
        image = self.containers.images.find(rec.image_id) if rec.image_id else None
        if image is None:
            return rec.image, rec.image_ref or rec.image_id
        name = image.repo_tags[0] if image.repo_tags else rec.image
        return name, image.repo_digests[0] if image.repo_digests else image.id

    def _verbose(self, rec: ContainerRecord) -> dict[str, Any]:
        runtime = self.containers.runtimes.get(rec.runtime)
        return {"sandboxID": rec.sandbox_id, "pid": rec.pid, "removing": False,
                "runtimeType": "io.containerd.runc.v2",
                "runtimeOptions": {"binary_name": runtime.binary if runtime else "",
                                   "systemd_cgroup": bool(runtime and runtime.systemd_cgroup)},
                "bundle": rec.bundle, "conmonPid": rec.conmon_pid,
                "config": rec.config, "runtimeSpec": self.containers.spec(rec)}

    # -- exec, resources, logs --------------------------------------------------------

    @rpc
    def ExecSync(self, request: pb.ExecSyncRequest, context: Any) -> pb.ExecSyncResponse:
        result = self.containers.exec_sync(request.container_id, list(request.cmd),
                                           float(request.timeout))
        return pb.ExecSyncResponse(stdout=result.stdout, stderr=result.stderr,
                                   exit_code=result.exit_code)

    # -- streaming (the URL; the streaming server does the rest) ----------------------

    @rpc
    def Exec(self, request: pb.ExecRequest, context: Any) -> pb.ExecResponse:
        return pb.ExecResponse(url=self._streams().exec(
            request.container_id, list(request.cmd), request.stdin, request.stdout,
            request.stderr, request.tty))

    @rpc
    def Attach(self, request: pb.AttachRequest, context: Any) -> pb.AttachResponse:
        return pb.AttachResponse(url=self._streams().attach(
            request.container_id, request.stdin, request.stdout, request.stderr, request.tty))

    @rpc
    def PortForward(self, request: pb.PortForwardRequest, context: Any) -> pb.PortForwardResponse:
        return pb.PortForwardResponse(url=self._streams().port_forward(
            request.pod_sandbox_id, list(request.port)))

    def _streams(self) -> Streams:
        if self.streams is None:
            raise FailedPrecondition("the streaming server is not running")
        return self.streams

    @rpc
    def UpdateContainerResources(self, request: pb.UpdateContainerResourcesRequest,
                                 context: Any) -> pb.UpdateContainerResourcesResponse:
        self.containers.update_resources(request.container_id, request.linux)
        return pb.UpdateContainerResourcesResponse()

    @rpc
    def ReopenContainerLog(self, request: pb.ReopenContainerLogRequest, context: Any) -> pb.ReopenContainerLogResponse:
        self.containers.reopen_log(request.container_id)
        return pb.ReopenContainerLogResponse()

    # -- stats ------------------------------------------------------------------------

    @rpc
    def ContainerStats(self, request: pb.ContainerStatsRequest, context: Any) -> pb.ContainerStatsResponse:
        return pb.ContainerStatsResponse(stats=self._stats(self.containers.get(request.container_id)))

    @rpc
    def ListContainerStats(self, request: pb.ListContainerStatsRequest, context: Any) -> pb.ListContainerStatsResponse:
        f = request.filter
        flt = ContainerFilter(id=f.id, sandbox_id=f.pod_sandbox_id, labels=dict(f.label_selector))
        records = [r for r in self.containers.list(flt) if r.state in (CREATED, RUNNING)]
        return pb.ListContainerStatsResponse(stats=[self._stats(r) for r in records])

    def _stats(self, rec: ContainerRecord) -> pb.ContainerStats:
        now = time.time_ns()
        usage = self.containers.stats(rec)
        out = pb.ContainerStats()
        a = out.attributes
        a.id, a.metadata.name, a.metadata.attempt = rec.id, rec.name, rec.attempt
        a.labels.update(rec.labels)
        a.annotations.update(rec.annotations)
        out.cpu.timestamp = now
        out.cpu.usage_core_nano_seconds.value = usage.cpu_usage_ns
        last = self._cpu_samples.get(rec.id)
        if last is not None and now > last[0] and usage.cpu_usage_ns >= last[1]:
            out.cpu.usage_nano_cores.value = int((usage.cpu_usage_ns - last[1]) * 1e9 / (now - last[0]))
        self._cpu_samples[rec.id] = (now, usage.cpu_usage_ns)
        m = out.memory
        m.timestamp = now
        m.working_set_bytes.value = usage.memory_working_set
        m.usage_bytes.value = usage.memory_usage
        m.rss_bytes.value = usage.memory_rss
        m.page_faults.value = usage.page_faults
        m.major_page_faults.value = usage.major_page_faults
        used, inodes = self.containers.writable_layer(rec)
        w = out.writable_layer
        w.timestamp = now
        w.fs_id.mountpoint = self.containers.layers_dir
        w.used_bytes.value, w.inodes_used.value = used, inodes
        return out

    @rpc
    def PodSandboxStats(self, request: pb.PodSandboxStatsRequest, context: Any) -> pb.PodSandboxStatsResponse:
        rec = self.manager.get(request.pod_sandbox_id)
        return pb.PodSandboxStatsResponse(stats=self._pod_stats(rec))

    @rpc
    def ListPodSandboxStats(self, request: pb.ListPodSandboxStatsRequest, context: Any) -> pb.ListPodSandboxStatsResponse:
        f = request.filter
        records = self.manager.list(SandboxFilter(id=f.id, labels=dict(f.label_selector)))
        return pb.ListPodSandboxStatsResponse(stats=[self._pod_stats(r) for r in records])

    def _pod_stats(self, rec: Any) -> pb.PodSandboxStats:
        out = pb.PodSandboxStats()
        a = out.attributes
        a.id = rec.id
        a.metadata.name, a.metadata.namespace, a.metadata.uid, a.metadata.attempt = \
            rec.name, rec.namespace, rec.uid, rec.attempt
        a.labels.update(rec.config.get("labels", {}))
        a.annotations.update(rec.config.get("annotations", {}))
        now = time.time_ns()
        linux = out.linux
        running = [r for r in self.containers.list(ContainerFilter(sandbox_id=rec.id))
                   if r.state == RUNNING]
        stats = [self._stats(r) for r in running]
        linux.containers.extend(stats)
        linux.cpu.timestamp = linux.memory.timestamp = now
        linux.cpu.usage_core_nano_seconds.value = sum(s.cpu.usage_core_nano_seconds.value for s in stats)
        linux.cpu.usage_nano_cores.value = sum(s.cpu.usage_nano_cores.value for s in stats)
        linux.memory.working_set_bytes.value = sum(s.memory.working_set_bytes.value for s in stats)
        linux.memory.usage_bytes.value = sum(s.memory.usage_bytes.value for s in stats)
        linux.network.timestamp = now
        if running and not rec.host_network:
            for name, rx, rx_err, tx, tx_err in _net_dev(running[0].pid):
                iface = pb.NetworkInterfaceUsage(name=name)
                iface.rx_bytes.value, iface.rx_errors.value = rx, rx_err
                iface.tx_bytes.value, iface.tx_errors.value = tx, tx_err
                if name == "eth0":
                    linux.network.default_interface.CopyFrom(iface)
                else:
                    linux.network.interfaces.append(iface)
        linux.process.timestamp = now
        linux.process.process_count.value = sum(_pids(r.pid) for r in running)
        return out

    # -- events -----------------------------------------------------------------------

    def GetContainerEvents(self, request: pb.GetEventsRequest, context: Any) -> Iterator[pb.ContainerEventResponse]:
        subscription = self.containers.events.subscribe()
        log.info("cri GetContainerEvents: a subscriber")
        try:
            while context.is_active():
                try:
                    event = subscription.get(timeout=1)
                except queue.Empty:
                    continue
                if event is None:
                    return
                reply = pb.ContainerEventResponse(
                    container_id=event.container_id, container_event_type=_EVENT[event.kind],
                    created_at=event.at)
                try:
                    reply.pod_sandbox_status.CopyFrom(self.sandbox_status(event.sandbox_id))
                except Exception:   # the sandbox went meanwhile
                    pass
                if event.kind != DELETED and event.record is not None:
                    reply.containers_statuses.append(self.container_status(event.record))
                yield reply
        finally:
            self.containers.events.unsubscribe(subscription)


def _net_dev(pid: int) -> list[tuple[str, int, int, int, int]]:
    """Interfaces of the netns *pid* is in, from ``/proc/<pid>/net/dev``."""
    out = []
    try:
        with open(f"/proc/{pid}/net/dev") as f:
            lines = f.read().splitlines()[2:]
    except OSError:
        return out
    for line in lines:
        name, _, rest = line.partition(":")
        fields = rest.split()
        if name.strip() == "lo" or len(fields) < 11:
            continue
        out.append((name.strip(), int(fields[0]), int(fields[2]), int(fields[8]), int(fields[10])))
    return out


def _pids(pid: int) -> int:
    """How many processes are in *pid*'s cgroup (the pids controller's count)."""
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            for line in f:
                _, controllers, path = line.rstrip("\n").split(":", 2)
                if "pids" in controllers.split(","):
                    with open(os.path.join("/sys/fs/cgroup/pids", path.lstrip("/"), "pids.current")) as c:
                        return int(c.read().strip())
    except (OSError, ValueError):
        pass
    return 1 if pid else 0
