"""Pods with containers on a cri-shim under test: a node namespace with the bridge
chain (bridge + host-local + portmap), cri-shim in it, images imported from archives
the rig builds, and the calls kubelet makes, in kubelet's order.

``PodWorld`` is what tests, the demo and the bench use; ``close()`` stops and removes
every pod and container through the server, then force-cleans what is left (conmon
processes, runtime state, mounts), so a failing test leaves nothing either.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterable

import grpc

from cri_shim.api import api_pb2 as pb

from . import imagebuild
from .netns import Namespace
from .pods import bridge_conflist, pod_config
from .server import Server

__all__ = ["PodWorld", "SUBNET", "BUSYBOX", "container_config"]

SUBNET = "10.88.7.0/24"
BUSYBOX = "registry.k8s.io/e2e-test-images/busybox:1.29-2"


def container_config(name: str, image: str = BUSYBOX, *, command: Iterable[str] | None = None,
                     **fields: Any) -> pb.ContainerConfig:
    """A ContainerConfig as kubelet sends it: labels naming the container, PID
    namespace per container unless *fields* give ``linux``."""
    labels = {"io.kubernetes.container.name": name, **fields.pop("labels", {})}
    fields.setdefault("linux", pb.LinuxContainerConfig(
        security_context=pb.LinuxContainerSecurityContext(
            namespace_options=pb.NamespaceOption(pid=pb.CONTAINER))))
    return pb.ContainerConfig(metadata=pb.ContainerMetadata(name=name, attempt=0),
                              image=pb.ImageSpec(image=image), command=list(command or ()),
                              labels=labels, **fields)


class PodWorld:
    """A node with cri-shim and the busybox test image (and any image archive given)."""

    def __init__(self, work: Path, *, prefix: str = "crishim-ctr", extra_toml: str = "",
                 node: Namespace | None = None) -> None:
        self.work = work
        self.node = node or Namespace(prefix)
        self.server = Server(self.node, work / "shim", extra_toml=extra_toml)
        self.server.write_conf("10-pods.conflist",
                               bridge_conflist("podnet", SUBNET, work / "ipam"))
        self.pods: list[str] = []
        self.configs: dict[str, pb.PodSandboxConfig] = {}

    def start(self) -> "PodWorld":
        self.server.start()
        self.rt = self.server.runtime
        self.img = self.server.image
        return self

    # -- images -----------------------------------------------------------------------

    def import_image(self, layout: imagebuild.ImageLayout, name: str) -> str:
        """Import *layout* as docker.io-less *name* (``registry/path:tag``); its id."""
        repo, _, tag = name.rpartition(":")
        archive = imagebuild.archive(layout, self.work / f"image-{abs(hash(name))}.tar",
                                     "docker", name=repo)
        self.server.ctl("import", str(archive))
        return layout.config_digest

    def busybox(self, **kw: Any) -> str:
        layout = imagebuild.busybox_image(self.work / "busybox-layout", tag="1.29-2", **kw)
        return self.import_image(layout, BUSYBOX)

    # -- pods and containers ----------------------------------------------------------

    def run_pod(self, name: str = "pod", *, runtime_handler: str = "", **fields: Any) -> str:
        config = pod_config(name, log_directory=str(self.work / "logs" / name), **fields)
        sandbox_id = self.rt.RunPodSandbox(pb.RunPodSandboxRequest(
            config=config, runtime_handler=runtime_handler), timeout=60).pod_sandbox_id
        self.pods.append(sandbox_id)
        self.configs[sandbox_id] = config
        return sandbox_id

    def pod_ip(self, sandbox_id: str) -> str:
        return self.rt.PodSandboxStatus(pb.PodSandboxStatusRequest(
            pod_sandbox_id=sandbox_id), timeout=30).status.network.ip

    def create(self, sandbox_id: str, config: pb.ContainerConfig) -> str:
        return self.rt.CreateContainer(pb.CreateContainerRequest(
            pod_sandbox_id=sandbox_id, config=config,
            sandbox_config=self.configs.get(sandbox_id, pb.PodSandboxConfig())),
            timeout=60).container_id

    def start_container(self, container_id: str) -> None:
        self.rt.StartContainer(pb.StartContainerRequest(container_id=container_id), timeout=60)

    def run(self, sandbox_id: str, config: pb.ContainerConfig) -> str:
        """Create and start; the container's id."""
        container_id = self.create(sandbox_id, config)
        self.start_container(container_id)
        return container_id

    def status(self, container_id: str, verbose: bool = False) -> pb.ContainerStatusResponse:
        return self.rt.ContainerStatus(pb.ContainerStatusRequest(
            container_id=container_id, verbose=verbose), timeout=30)

    def state(self, container_id: str) -> str:
        return pb.ContainerState.Name(self.status(container_id).status.state)

    def wait_state(self, container_id: str, state: str, timeout: float = 30) -> pb.ContainerStatus:
        deadline = time.monotonic() + timeout
        while True:
            st = self.status(container_id).status
            if pb.ContainerState.Name(st.state) == state:
                return st
            if time.monotonic() > deadline:
                raise AssertionError(f"container {container_id[:12]} is "
                                     f"{pb.ContainerState.Name(st.state)}, not {state}\n"
                                     f"{self.server.log_tail(40)}")
            time.sleep(0.05)

    def exec(self, container_id: str, *cmd: str, timeout: int = 30) -> pb.ExecSyncResponse:
        return self.rt.ExecSync(pb.ExecSyncRequest(container_id=container_id, cmd=list(cmd),
                                                   timeout=timeout), timeout=timeout + 30)

    def stop(self, container_id: str, timeout: int = 10) -> None:
        self.rt.StopContainer(pb.StopContainerRequest(container_id=container_id, timeout=timeout),
                              timeout=timeout + 60)

    def remove(self, container_id: str) -> None:
        self.rt.RemoveContainer(pb.RemoveContainerRequest(container_id=container_id), timeout=60)

    def remove_pod(self, sandbox_id: str) -> None:
        """kubelet's way: StopPodSandbox, then RemovePodSandbox."""
        self.rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=120)
        self.rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=120)
        if sandbox_id in self.pods:
            self.pods.remove(sandbox_id)

    def leftovers(self) -> dict[str, list]:
        return self.server.leftovers("podnet")

    def close(self) -> None:
        try:
            if self.server.channel is not None:
                for sandbox_id in list(self.pods):
                    try:
                        self.remove_pod(sandbox_id)
                    except grpc.RpcError:
                        pass
        finally:
            try:
                self.server.stop()
            finally:
                self.server.force_clean()
                self.node.delete()
