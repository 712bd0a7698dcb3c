"""The gRPC side: a thin CRI servicer over the sandbox manager, and the unix-socket server.

The servicer only translates: protobuf in, a call on the manager, protobuf out. Every
error goes through ``errors.grpc_status`` (the one mapping), and every call logs one
line with the method, the sandbox id, the outcome and the time it took.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import threading
from concurrent import futures
from typing import Any

import grpc
from google.protobuf import json_format

from images.service import ImageService

from . import __version__, sdnotify
from .api import api_pb2 as pb
from .api import api_pb2_grpc as pb_grpc
from .containers import ContainerManager
from .containerserver import ContainerMethods
from .rpc import RUNTIME_NAME, answer_unimplemented, deadline, rpc
from .manager import SandboxFilter, SandboxManager
from .podconfig import parse_pod_config, reject_nul
from .store import NOTREADY, READY, SandboxRecord
from .streams import Streams

log = logging.getLogger(__name__)

KUBE_API_VERSION = "0.1.0"   # what every runtime answers in VersionResponse.version
RUNTIME_API_VERSION = "v1"

_STATE_TO_PB = {READY: pb.SANDBOX_READY, NOTREADY: pb.SANDBOX_NOTREADY}
_PB_TO_STATE = {pb.SANDBOX_READY: READY, pb.SANDBOX_NOTREADY: NOTREADY}


class CRIServicer(ContainerMethods, pb_grpc.RuntimeServiceServicer):
    def __init__(self, manager: SandboxManager, images: ImageService | None = None,
                 containers: ContainerManager | None = None, streams: Streams | None = None) -> None:
        self.manager = manager
        self.images = images
        self.containers = containers   # type: ignore[assignment]
        self.streams = streams
        self._frames: dict[str, tuple[SandboxRecord, bytes]] = {}   # see ListPodSandbox
        self._cpu_samples: dict[str, tuple[int, int]] = {}          # see ContainerStats

    # -- runtime ------------------------------------------------------------------

    @rpc
    def Version(self, request: pb.VersionRequest, context: Any) -> pb.VersionResponse:
        return pb.VersionResponse(version=KUBE_API_VERSION, runtime_name=RUNTIME_NAME,
                                  runtime_version=__version__,
                                  runtime_api_version=RUNTIME_API_VERSION)

    @rpc
    def Status(self, request: pb.StatusRequest, context: Any) -> pb.StatusResponse:
        ready, reason, message = self.manager.network_condition()
        network_ready = pb.RuntimeCondition(type="NetworkReady", status=ready, reason=reason,
                                            message=message)
        reply = pb.StatusResponse(status=pb.RuntimeStatus(conditions=[
            pb.RuntimeCondition(type="RuntimeReady", status=True), network_ready]))
        reply.features.supplemental_groups_policy = True
        if self.containers is not None:
            default = self.containers.default_runtime
            for name in ["", *sorted(self.containers.runtimes)]:
                runtime = self.containers.runtimes[name or default]
                features = runtime_features(runtime)
                reply.runtime_handlers.append(pb.RuntimeHandler(
                    name=name, features=pb.RuntimeHandlerFeatures(**features)))
        if request.verbose:
            reply.info["cniconfig"] = json.dumps(self.manager.cni_info())
            reply.info["lastCNILoadStatus"] = "OK" if ready else message
        return reply

    @rpc
    def RuntimeConfig(self, request: Any, context: Any) -> pb.RuntimeConfigResponse:
        driver = pb.SYSTEMD if self.manager.config.cgroup_driver == "systemd" else pb.CGROUPFS
        return pb.RuntimeConfigResponse(linux=pb.LinuxRuntimeConfiguration(cgroup_driver=driver))

    @rpc
    def UpdateRuntimeConfig(self, request: pb.UpdateRuntimeConfigRequest, context: Any) -> Any:
        self.manager.update_pod_cidrs(request.runtime_config.network_config.pod_cidr)
        return pb.UpdateRuntimeConfigResponse()

    # -- sandboxes ----------------------------------------------------------------

    @rpc
    def RunPodSandbox(self, request: pb.RunPodSandboxRequest, context: Any) -> pb.RunPodSandboxResponse:
        reject_nul(request.config, "PodSandboxConfig")
        config = json_format.MessageToDict(request.config, preserving_proto_field_name=True)
        sandbox_id = self.manager.run(parse_pod_config(config), deadline=deadline(context),
                                      runtime_handler=request.runtime_handler)
        if not context.is_active():
            # The client cancelled or went while the chain ran and will never learn
            # this id: undo it now (containerd's cancelled context rolls back too).
            log.info("sandbox %s: the client went away before RunPodSandbox returned; "
                     "undoing it", sandbox_id[:12])
            self.manager.remove(sandbox_id)
        return pb.RunPodSandboxResponse(pod_sandbox_id=sandbox_id)

    @rpc
    def StopPodSandbox(self, request: pb.StopPodSandboxRequest, context: Any) -> pb.StopPodSandboxResponse:
        self.manager.stop(request.pod_sandbox_id, deadline=deadline(context))
        return pb.StopPodSandboxResponse()

    @rpc
    def RemovePodSandbox(self, request: pb.RemovePodSandboxRequest, context: Any) -> pb.RemovePodSandboxResponse:
        self.manager.remove(request.pod_sandbox_id, deadline=deadline(context))
        return pb.RemovePodSandboxResponse()

    @rpc
    def PodSandboxStatus(self, request: pb.PodSandboxStatusRequest, context: Any) -> pb.PodSandboxStatusResponse:
        rec = self.manager.get(request.pod_sandbox_id)
        reply = pb.PodSandboxStatusResponse(status=self.sandbox_status(rec.id))
        if request.verbose:
            reply.info["info"] = json.dumps(verbose_info(rec))
        return reply

    def sandbox_status(self, sandbox_id: str) -> pb.PodSandboxStatus:
        rec = self.manager.get(sandbox_id)
        ips = self.manager.ips(rec)
        status = pb.PodSandboxStatus(
            id=rec.id, state=_STATE_TO_PB[_cri_state(rec)], created_at=rec.created_at,
            network=pb.PodSandboxNetworkStatus(
                ip=ips[0] if ips else "", additional_ips=[pb.PodIP(ip=ip) for ip in ips[1:]]),
            labels=rec.config.get("labels", {}), annotations=rec.config.get("annotations", {}),
            runtime_handler=rec.runtime_handler)
        _fill_metadata(status.metadata, rec)
        ns_opts = (rec.config.get("linux", {}).get("security_context", {})
                   .get("namespace_options", {}))
        json_format.ParseDict(ns_opts, status.linux.namespaces.options)
        return status

    @rpc
    def ListPodSandbox(self, request: pb.ListPodSandboxRequest, context: Any) -> pb.ListPodSandboxResponse:
        f = request.filter
        flt = SandboxFilter(
            id=f.id,
            state=_PB_TO_STATE.get(f.state.state, "unknown") if f.HasField("state") else None,
            labels=dict(f.label_selector))
        # Each item is encoded once per record version and the response parsed from
        # the concatenation (C speed): kubelet lists every second, and building 1,000
        # PodSandbox messages with label maps in Python costs ~15 ms.
        records = self.manager.list(flt)
        frames = [self._list_frame(rec) for rec in records]
        if len(self._frames) > 2 * len(records) + 64:   # forget removed sandboxes
            live = {r.id for r in self.manager.list()}
            self._frames = {k: v for k, v in self._frames.items() if k in live}
        return pb.ListPodSandboxResponse.FromString(b"".join(frames))

    def _list_frame(self, rec: SandboxRecord) -> bytes:
        """``items`` field bytes (tag, length, PodSandbox) for *rec*, cached while the
        record object is the same (records are immutable; a change makes a new one)."""
        cached = self._frames.get(rec.id)
        if cached is not None and cached[0] is rec:
            return cached[1]
        item = pb.PodSandbox(id=rec.id, state=_STATE_TO_PB[_cri_state(rec)],
                             created_at=rec.created_at,
                             labels=rec.config.get("labels", {}),
                             annotations=rec.config.get("annotations", {}))
        _fill_metadata(item.metadata, rec)
        frame = pb.ListPodSandboxResponse(items=[item]).SerializeToString()
        self._frames[rec.id] = (rec, frame)
        return frame

def runtime_features(runtime: Any) -> dict[str, bool]:
    """What a runtime handler can do, as containerd 2.0 finds out: recursive read-only
    mounts when ``<runtime> features`` lists ``rro`` and the kernel is 5.12 or newer;
    user namespaces when it lists ``user`` and idmapped mounts (runc 1.2+)."""
    features = runtime.features()
    release = os.uname().release.split("-")[0].split(".")
    kernel = tuple(int(p) for p in release[:2] if p.isdigit())
    linux = features.get("linux") or {}
    idmap = ((linux.get("mountExtensions") or {}).get("idmap") or {}).get("enabled") is True
    return {"recursive_read_only_mounts": "rro" in (features.get("mountOptions") or []) and
            kernel >= (5, 12),
            "user_namespaces": "user" in (linux.get("namespaces") or []) and idmap}


def _cri_state(rec: SandboxRecord) -> str:
    # A sandbox still being created is not READY to anyone outside.
    return READY if rec.state == READY else NOTREADY


def _fill_metadata(meta: pb.PodSandboxMetadata, rec: SandboxRecord) -> None:
    meta.name, meta.namespace, meta.uid, meta.attempt = rec.name, rec.namespace, rec.uid, rec.attempt


def verbose_info(rec: SandboxRecord) -> dict[str, Any]:
    """What ``crictl inspectp`` shows under ``info``."""
    return {
        "netNamespacePath": rec.netns_path,
        "netNamespaceClosed": rec.state != READY,
        "hostNetwork": rec.host_network,
        "state": rec.state,
        "networks": [{"name": n.name, "ifname": n.ifname} for n in rec.networks],
        "cniResult": rec.results,
        "config": rec.config,
        "trace": rec.trace,   # how it got (and gave back) its IP: cri-shim ctl explain
    }


# Every CRI method the servicer does not implement answers UNIMPLEMENTED naming itself.
answer_unimplemented(CRIServicer, "RuntimeService")


class SocketInUse(OSError):
    pass


def prepare_socket(path: str) -> None:
    """Make the socket's directory (0700 if we create it) and clear a stale socket.

    A socket another server still answers on is an error, not something to steal.
    """
    directory = os.path.dirname(path) or "."
    if not os.path.isdir(directory):
        os.makedirs(directory, mode=0o700)
    if not os.path.lexists(path):
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError as exc:
        if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT, errno.ENOTSOCK):
            raise
        log.info("removing stale socket %s", path)
        os.unlink(path)
    else:
        raise SocketInUse(errno.EADDRINUSE, f"another server is listening on {path}")
    finally:
        probe.close()


def build_server(runtime: CRIServicer, images: Any, admin: Any, address: str, *,
                 max_workers: int = 64) -> grpc.Server:
    from .api import admin_pb2_grpc
    prepare_socket(address)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="cri"),
                         options=[("grpc.so_reuseport", 0)])
    pb_grpc.add_RuntimeServiceServicer_to_server(runtime, server)
    pb_grpc.add_ImageServiceServicer_to_server(images, server)
    admin_pb2_grpc.add_AdminServicer_to_server(admin, server)
    server.add_insecure_port(f"unix://{address}")
    return server


def serve(manager: SandboxManager, image_service: ImageService, address: str,
          stop: threading.Event, containers: ContainerManager | None = None,
          streams: Streams | None = None) -> None:
    """Serve until *stop* is set; pods and containers are left as they are."""
    from .imageserver import AdminServicer, ImageServicer
    server = build_server(CRIServicer(manager, image_service, containers, streams),
                          ImageServicer(image_service), AdminServicer(image_service), address)
    server.start()
    os.chmod(address, 0o660)
    log.info("cri-shim %s serving CRI on unix://%s", __version__, address)
    sdnotify.notify("READY=1")   # Type=notify: the socket serves
    try:
        stop.wait()
    finally:
        log.info("shutting down")
        sdnotify.notify("STOPPING=1")
        if containers is not None:
            containers.events.close()   # ends GetContainerEvents streams
        if streams is not None:
            streams.server.stop()
        server.stop(grace=5).wait()
        try:
            os.unlink(address)
        except FileNotFoundError:
            pass
