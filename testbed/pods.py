"""Pod configs as kubelet sends them, and the conflists tests, demos and benches use."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cri_shim.api import api_pb2 as pb

__all__ = ["pod_config", "bridge_plugin", "bridge_conflist"]


def pod_config(name: str = "pod", namespace: str = "default", uid: str | None = None, *,
               labels: dict[str, str] | None = None, cgroup_parent: str = "",
               **extra: Any) -> pb.PodSandboxConfig:
    """A kubelet-shaped ``PodSandboxConfig``: its labels, ``kubernetes.io/config.source``,
    ``log_directory`` ``/var/log/pods/<ns>_<name>_<uid>``, PID namespace per container;
    *extra* are more fields (``linux`` replaces the namespaces and cgroup parent)."""
    uid = uid or f"uid-{name}"
    extra.setdefault("log_directory", f"/var/log/pods/{namespace}_{name}_{uid}")
    extra.setdefault("hostname", name)
    # kubelet's namespaces for a pod without shareProcessNamespace: PID per container.
    extra.setdefault("linux", pb.LinuxPodSandboxConfig(
        cgroup_parent=cgroup_parent, security_context=pb.LinuxSandboxSecurityContext(
            namespace_options=pb.NamespaceOption(pid=pb.CONTAINER))))
    return pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name=name, namespace=namespace, uid=uid, attempt=0),
        labels={"io.kubernetes.pod.name": name, "io.kubernetes.pod.namespace": namespace,
                "io.kubernetes.pod.uid": uid, **(labels or {})},
        annotations={"kubernetes.io/config.source": "api"}, **extra)


def bridge_plugin(subnet: str, data_dir: Path, *, bridge: str = "cni0",
                  **options: Any) -> dict[str, Any]:
    """bridge (``isGateway``, ``ipMasq``) + host-local on *subnet* with a default route,
    its store in *data_dir*; *options* are more bridge keys (``hairpinMode``, ``mtu``)."""
    return {"type": "bridge", "bridge": bridge, "isGateway": True, "ipMasq": True, **options,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]],
                     "routes": [{"dst": "0.0.0.0/0"}], "dataDir": str(data_dir)}}


def bridge_conflist(name: str, subnet: str, data_dir: Path, *, version: str = "1.0.0",
                    portmap: bool = True, extra: list[dict[str, Any]] | None = None,
                    **bridge_options: Any) -> dict[str, Any]:
    """A conflist: ``bridge_plugin``, then portmap (unless *portmap* is false), then
    *extra* plugins."""
    plugins: list[dict[str, Any]] = [bridge_plugin(subnet, data_dir, **bridge_options)]
    if portmap:
        plugins.append({"type": "portmap", "capabilities": {"portMappings": True}})
    plugins += extra or []
    return {"cniVersion": version, "name": name, "plugins": plugins}
