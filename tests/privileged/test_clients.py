"""What the clients do against a real server: cri-shim ctl (crictl's pod commands),
the independently generated CRI stubs, and kubelet's calls over one pod's life."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from cri_shim.api import api_pb2 as pb

from .harness import REPO, Shim, bridge_conflist, pod_config

pytestmark = pytest.mark.privileged

SUBNET = "10.88.0.0/24"
COMPAT_PYTHON = os.environ.get("CRI_SHIM_COMPAT_PYTHON", str(REPO / ".venv-compat" / "bin" / "python"))

CRICTL_POD_YAML = """\
metadata:
  name: nginx-sandbox
  namespace: default
  attempt: 1
  uid: hdishd83djaidwnduwk28bcsb
log_directory: /tmp
linux: {}
labels:
  app: nginx
port_mappings:
  - protocol: 0
    container_port: 80
    host_port: 8081
"""


def test_ctl_pod_commands(shim: Shim, tmp_path: Path) -> None:
    shim.write_conf("10-test.conflist", bridge_conflist("testnet", SUBNET, shim.ipam_dir))
    shim.start()
    out = shim.ctl("version").stdout
    assert "RuntimeName:  cri-shim" in out and "RuntimeApiVersion:  v1" in out
    info = json.loads(shim.ctl("info").stdout)
    assert {c["type"]: c["status"] for c in info["status"]["conditions"]} == \
        {"RuntimeReady": True, "NetworkReady": True}

    pod = tmp_path / "pod.yaml"
    pod.write_text(CRICTL_POD_YAML)
    sandbox_id = shim.ctl("runp", str(pod)).stdout.strip()
    assert len(sandbox_id) == 64

    inspect = json.loads(shim.ctl("inspectp", sandbox_id[:12]).stdout)
    assert ipaddress.ip_address(inspect["status"]["network"]["ip"]) in ipaddress.ip_network(SUBNET)
    assert inspect["status"]["state"] == "SANDBOX_READY"
    assert inspect["info"]["netNamespacePath"]

    # portmap got the published port: its DNAT chain exists in the node.
    rules = shim.node.run("iptables", "-t", "nat", "-S")
    assert "8081" in rules

    table = shim.ctl("pods").stdout
    assert "nginx-sandbox" in table and "Ready" in table
    assert shim.ctl("pods", "--label", "app=nginx", "-q").stdout.split() == [sandbox_id]
    assert shim.ctl("pods", "--label", "app=other", "-q").stdout.split() == []

    refused = shim.ctl("rmp", sandbox_id, check=False)
    assert refused.returncode != 0 and "stop it first" in refused.stderr
    shim.ctl("stopp", sandbox_id)
    assert "8081" not in shim.node.run("iptables", "-t", "nat", "-S")
    assert shim.ctl("pods", "--state", "notready", "-q").stdout.split() == [sandbox_id]
    shim.ctl("rmp", sandbox_id)
    assert shim.ctl("pods", "-q").stdout.strip() == ""
    assert shim.leftovers("testnet") == {}


@pytest.mark.compat
def test_independent_cri_stubs_run_a_pod(shim: Shim, tmp_path: Path) -> None:
    if not os.access(COMPAT_PYTHON, os.X_OK):
        pytest.fail(f"{COMPAT_PYTHON} missing: run `make compat-venv`")
    shim.write_conf("10-test.conflist", bridge_conflist("testnet", SUBNET, shim.ipam_dir))
    shim.start()
    pod = tmp_path / "pod.json"
    pod.write_text(json.dumps({"metadata": {"name": "compat", "namespace": "default", "uid": "c-1"},
                               "labels": {"app": "compat"}}))
    proc = subprocess.run([COMPAT_PYTHON, str(REPO / "tests" / "compat" / "client.py"),
                           "--socket", str(shim.socket), "--pod-config", str(pod)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr + shim.log()
    out = json.loads(proc.stdout)
    assert out["version"]["runtime_name"] == "cri-shim"
    assert ipaddress.ip_address(out["ip"]) in ipaddress.ip_network(SUBNET)
    assert out["state"] == "SANDBOX_READY" and out["state_after_stop"] == "SANDBOX_NOTREADY"
    assert out["listed"] and not out["listed_after_remove"]
    assert shim.leftovers("testnet") == {}


def test_kubelet_pod_lifecycle(shim: Shim) -> None:
    """The calls kubelet makes for one pod, with kubelet's own config shapes."""
    shim.write_conf("10-test.conflist", bridge_conflist("testnet", SUBNET, shim.ipam_dir))
    shim.start()
    rt, img = shim.runtime, shim.image
    # Start-up handshake.
    v = rt.Version(pb.VersionRequest(version=""))
    assert all([v.version, v.runtime_name, v.runtime_version, v.runtime_api_version])
    v = rt.Version(pb.VersionRequest(version="0.1.0"))
    assert v.version == "0.1.0" and v.runtime_api_version == "v1"
    img.ImageFsInfo(pb.ImageFsInfoRequest())
    assert rt.RuntimeConfig(pb.RuntimeConfigRequest()).linux.cgroup_driver == pb.CGROUPFS
    rt.UpdateRuntimeConfig(pb.UpdateRuntimeConfigRequest(runtime_config=pb.RuntimeConfig(
        network_config=pb.NetworkConfig(pod_cidr="10.88.0.0/24"))))
    conds = {c.type: c.status for c in rt.Status(pb.StatusRequest()).status.conditions}
    assert conds == {"RuntimeReady": True, "NetworkReady": True}

    uid = "6b1f1a52-0d5c-4a0f-9c7e-1f3d9f5b2c11"
    cfg = pod_config("web-0", "shop", uid=uid,
                     dns_config=pb.DNSConfig(servers=["10.96.0.10"],
                                             searches=["shop.svc.cluster.local", "svc.cluster.local",
                                                       "cluster.local"], options=["ndots:5"]),
                     port_mappings=[pb.PortMapping(protocol=pb.TCP, container_port=8080)],
                     linux=pb.LinuxPodSandboxConfig(
                         cgroup_parent="/kubepods/besteffort/pod" + uid,
                         security_context=pb.LinuxSandboxSecurityContext(
                             namespace_options=pb.NamespaceOption(network=pb.POD, pid=pb.CONTAINER,
                                                                  ipc=pb.POD))))
    cfg.annotations["kubernetes.io/config.seen"] = "2026-11-28T12:00:00.000000000Z"
    sandbox_id = rt.RunPodSandbox(pb.RunPodSandboxRequest(config=cfg)).pod_sandbox_id

    # PLEG relist.
    assert [i.id for i in rt.ListPodSandbox(pb.ListPodSandboxRequest()).items] == [sandbox_id]
    rt.ListContainers(pb.ListContainersRequest())
    sel = pb.PodSandboxFilter(label_selector={"io.kubernetes.pod.uid": uid})
    assert [i.id for i in rt.ListPodSandbox(pb.ListPodSandboxRequest(filter=sel)).items] == [sandbox_id]
    other = pb.PodSandboxFilter(label_selector={"io.kubernetes.pod.uid": "someone-else"})
    assert rt.ListPodSandbox(pb.ListPodSandboxRequest(filter=other)).items == []
    ready = pb.PodSandboxFilter(state=pb.PodSandboxStateValue(state=pb.SANDBOX_READY))
    assert len(rt.ListPodSandbox(pb.ListPodSandboxRequest(filter=ready)).items) == 1
    st = rt.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id)).status
    assert st.state == pb.SANDBOX_READY and st.network.ip
    assert st.linux.namespaces.options.network == pb.POD    # kubelet recreates on a mismatch
    assert st.linux.namespaces.options.pid == pb.CONTAINER
    assert st.annotations["kubernetes.io/config.seen"] == "2026-11-28T12:00:00.000000000Z"
    ctr = pb.ContainerFilter(label_selector={"io.kubernetes.pod.uid": uid})
    assert rt.ListContainers(pb.ListContainersRequest(filter=ctr)).containers == []
    rt.ListContainerStats(pb.ListContainerStatsRequest())
    with pytest.raises(grpc.RpcError) as exc:
        rt.ContainerStatus(pb.ContainerStatusRequest(container_id="abc"))
    assert exc.value.code() == grpc.StatusCode.NOT_FOUND

    # Teardown: stop, the garbage collector's second stop, remove.
    rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=sandbox_id))
    rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=sandbox_id))
    notready = pb.PodSandboxFilter(state=pb.PodSandboxStateValue(state=pb.SANDBOX_NOTREADY))
    assert len(rt.ListPodSandbox(pb.ListPodSandboxRequest(filter=notready)).items) == 1
    rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id))
    assert shim.leftovers("testnet") == {}


def test_unserved_methods_are_unimplemented_by_name(shim: Shim) -> None:
    shim.start()
    # Checkpointing needs CRIU, which cri-shim does not drive (containerd's is experimental).
    method = shim.channel.unary_unary("/runtime.v1.RuntimeService/CheckpointContainer",
                                      request_serializer=lambda b: b, response_deserializer=lambda b: b)
    with pytest.raises(grpc.RpcError) as exc:
        method(b"")
    assert exc.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "CheckpointContainer" in exc.value.details()


def test_socket_mode_and_live_socket_refused(shim: Shim) -> None:
    shim.start()
    assert (shim.socket.stat().st_mode & 0o777) == 0o660
    second = subprocess.run(
        ["nsenter", f"--net={shim.node.path}", sys.executable, "-m", "cri_shim",
         "serve", "--config", str(shim.config_path), "--root", str(shim.work / "root2")],
        capture_output=True, text=True, timeout=30, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert second.returncode != 0
    assert "another server is listening" in second.stderr
