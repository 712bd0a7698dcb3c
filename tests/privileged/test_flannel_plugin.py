"""The flannel CNI plugin as a real executable, delegating to Debian's real bridge and
host-local, inside a throwaway node namespace and a pinned pod namespace.

Everything lives in the test's temp dir (plugin bin dir, subnet.env, flannel's dataDir,
host-local's store via flannel's ``ipam`` section, libcni's cache) or in namespaces that
die with the test; cleanup runs also when an assertion fails.
"""

from __future__ import annotations

import copy
import json
import os
import re
import stat
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from ipaddress import ip_address, ip_interface
from pathlib import Path
from typing import Any

import pytest

import libcni
from cni import gojson
from cri_shim import netns

from .harness import PLUGIN_DIR, REPO, NodeNamespace, sh

pytestmark = pytest.mark.privileged

SUBNET_ENV = ("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\n"
              "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n")
ARGS = (("IgnoreUnknown", "1"), ("K8S_POD_NAMESPACE", "default"), ("K8S_POD_NAME", "web"))


class NodeExec:
    """``libcni.Exec`` that runs each plugin under ``nsenter --net=<node>``."""

    def __init__(self, node: NodeNamespace) -> None:
        self.node = node

    def find_plugin(self, name: str, bin_dirs: Sequence[str]) -> str:
        return libcni.find_plugin(name, bin_dirs)

    def run(self, plugin_path: str, stdin: bytes, env: Mapping[str, str],
            timeout: float | None) -> libcni.ExecOutput:
        proc = subprocess.run(["nsenter", f"--net={self.node.path}", plugin_path], input=stdin,
                              env=dict(env), capture_output=True, timeout=timeout or 60)
        return libcni.ExecOutput(proc.stdout, proc.stderr, proc.returncode)


class FlannelNode:
    """A node namespace with a CNI bin dir (flannel + Debian's plugins) and a subnet.env."""

    def __init__(self, node: NodeNamespace, work: Path) -> None:
        self.node, self.work = node, work
        self.bin_dir = work / "bin"
        self.data_dir = work / "flannel"
        self.ipam_dir = work / "ipam"
        self.netns_dir = work / "netns"
        self.subnet_file = work / "subnet.env"
        self.bin_dir.mkdir()
        wrapper = self.bin_dir / "flannel"
        wrapper.write_text(f'#!/bin/sh\nPYTHONPATH="{REPO}" exec "{sys.executable}" '
                           f'-m flannelcni.plugin "$@"\n')
        wrapper.chmod(0o755)
        for plugin in ("bridge", "host-local", "loopback", "portmap"):
            (self.bin_dir / plugin).symlink_to(os.path.join(PLUGIN_DIR, plugin))
        self.subnet_file.write_text(SUBNET_ENV)
        self.exec = NodeExec(node)
        self.config = libcni.CNIConfig([str(self.bin_dir)], exec=self.exec,
                                    cache_dir=str(work / "cache"))
        self.pods: list[str] = []

    def conflist(self) -> libcni.NetworkConfigList:
        """kube-flannel's conflist, flannel pointed at the temp dir; host-local's dataDir
        goes in flannel's own ``ipam`` section, which flannel completes for the delegate."""
        flannel = {"type": "flannel", "delegate": {"hairpinMode": True, "isDefaultGateway": True},
                   "subnetFile": str(self.subnet_file), "dataDir": str(self.data_dir),
                   "ipam": {"dataDir": str(self.ipam_dir)}}
        conf = {"name": "cbr0", "cniVersion": "0.3.1", "plugins": [
            flannel, {"type": "portmap", "capabilities": {"portMappings": True}}]}
        return libcni.conflist_from_bytes(json.dumps(conf, indent=2).encode())

    def pod(self) -> str:
        path = netns.new_path(str(self.netns_dir))
        self.pods.append(path)
        netns.pin(path)
        return path

    def in_pod(self, pod: str, *cmd: str) -> str:
        return sh("nsenter", f"--net={pod}", *cmd)

    def run_plugin(self, plugin: str, command: str, container_id: str, pod: str,
                   stdin: bytes) -> libcni.ExecOutput:
        env = libcni.build_env(command, container_id, pod, "eth0", ARGS, [str(self.bin_dir)])
        return self.exec.run(str(self.bin_dir / plugin), stdin, env, 60)

    def ip_files(self) -> list[str]:
        store = self.ipam_dir / "cbr0"
        return sorted(p.name for p in store.iterdir() if re.fullmatch(r"[0-9.]+", p.name)) \
            if store.exists() else []

    def close(self) -> None:
        for pod in self.pods:
            netns.unpin(pod)


@pytest.fixture
def fnode(node: NodeNamespace, tmp_path: Path) -> Iterator[FlannelNode]:
    n = FlannelNode(node, tmp_path)
    try:
        yield n
    finally:
        n.close()


def expected_delegate(fnode: FlannelNode) -> bytes:
    return (b'{"cniVersion":"0.3.1","hairpinMode":true,"ipMasq":false,"ipam":{"dataDir":"'
            + str(fnode.ipam_dir).encode() + b'","ranges":[[{"subnet":"10.244.1.0/24"}]],'
            b'"routes":[{"dst":"10.244.0.0/16"}],"type":"host-local"},"isDefaultGateway":true,'
            b'"isGateway":true,"mtu":1450,"name":"cbr0","type":"bridge"}')


def test_pod_gets_flannel_network_through_real_bridge(fnode: FlannelNode) -> None:
    net, pod, cid = fnode.conflist(), fnode.pod(), "c0ffee01"
    rt = libcni.RuntimeConf(cid, pod, "eth0", ARGS)
    try:
        result = fnode.config.add_network_list(net, rt)

        (ip,) = result.sandbox_ips("eth0")
        assert ip.address == ip_interface("10.244.1.2/24")
        assert ip.gateway == ip_address("10.244.1.1")
        assert "inet 10.244.1.1/24" in fnode.node.run("ip", "-o", "-4", "addr", "show", "dev", "cni0")
        assert " mtu 1450 " in fnode.node.run("ip", "-o", "link", "show", "cni0")
        veths = [n for n in fnode.node.links() if n.startswith("veth")]
        assert len(veths) == 1
        assert "hairpin on" in fnode.node.run("ip", "-d", "link", "show", veths[0])
        # FLANNEL_IPMASQ=true: the agent masquerades, so the bridge must not.
        assert "CNI-" not in fnode.node.run("iptables", "-t", "nat", "-S", "POSTROUTING")

        assert "inet 10.244.1.2/24" in fnode.in_pod(pod, "ip", "-o", "-4", "addr", "show",
                                                    "dev", "eth0")
        assert " mtu 1450 " in fnode.in_pod(pod, "ip", "-o", "link", "show", "eth0")
        routes = fnode.in_pod(pod, "ip", "-4", "route")
        assert "10.244.0.0/16 via 10.244.1.1 dev eth0" in routes
        assert "default via 10.244.1.1 dev eth0" in routes

        saved = fnode.data_dir / cid
        assert saved.read_bytes() == expected_delegate(fnode)
        assert stat.S_IMODE(saved.stat().st_mode) == 0o600
        assert fnode.ip_files() == ["10.244.1.2"]

        fnode.config.del_network_list(net, rt)

        assert not saved.exists()
        assert fnode.ip_files() == []
        assert [n for n in fnode.node.links() if n.startswith("veth")] == []
        assert "eth0" not in fnode.in_pod(pod, "ip", "-o", "link", "show")
        fnode.config.del_network_list(net, rt)  # DEL again: nothing left, still fine
    finally:
        try:
            fnode.config.del_network_list(net, rt)
        except libcni.CNIError:
            pass


def _shape(obj: dict[str, Any]) -> dict[str, Any]:
    """A result with what differs per pod (MACs, veth name, netns, address) masked."""
    obj = copy.deepcopy(obj)
    for iface in obj.get("interfaces", []):
        iface.pop("mac", None)
        if iface["name"].startswith("veth"):
            iface["name"] = "veth*"
        if iface.get("sandbox"):
            iface["sandbox"] = "<netns>"
    for ip in obj.get("ips", []):
        ip["address"] = "10.244.1.*/" + ip["address"].split("/")[1]
    return obj


def test_same_shape_as_bridge_given_the_delegate_directly(fnode: FlannelNode) -> None:
    net = fnode.conflist()
    pod_a, pod_b = fnode.pod(), fnode.pod()
    stdin = gojson.marshal(dict(net.plugins[0].raw, name=net.name, cniVersion=net.cni_version))
    delegate = expected_delegate(fnode)
    try:
        via_flannel = fnode.run_plugin("flannel", "ADD", "flannel-a", pod_a, stdin)
        assert via_flannel.returncode == 0, via_flannel
        assert (fnode.data_dir / "flannel-a").read_bytes() == delegate
        direct = fnode.run_plugin("bridge", "ADD", "bridge-b", pod_b, delegate)
        assert direct.returncode == 0, direct

        flannel_result, bridge_result = json.loads(via_flannel.stdout), json.loads(direct.stdout)
        assert flannel_result["ips"][0]["address"] == "10.244.1.2/24"
        assert bridge_result["ips"][0]["address"] == "10.244.1.3/24"
        assert _shape(flannel_result) == _shape(bridge_result)
        assert [i["name"] for i in flannel_result["interfaces"]][::2] == ["cni0", "eth0"]
        assert fnode.ip_files() == ["10.244.1.2", "10.244.1.3"]
    finally:
        out_a = fnode.run_plugin("flannel", "DEL", "flannel-a", pod_a, stdin)
        out_b = fnode.run_plugin("bridge", "DEL", "bridge-b", pod_b, delegate)
    assert (out_a.returncode, out_b.returncode) == (0, 0), (out_a, out_b)
    assert not (fnode.data_dir / "flannel-a").exists()
    assert fnode.ip_files() == []
