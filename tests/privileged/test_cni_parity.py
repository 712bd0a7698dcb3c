"""libcni parity with Debian's real plugins: several networks, capabilities, and a conf
dir edited while a pod runs."""

from __future__ import annotations

import ipaddress
import json

import pytest

from cri_shim.api import api_pb2 as pb

from .harness import Shim, bridge_conflist, pod_config, sh

pytestmark = pytest.mark.privileged


def run(shim: Shim, cfg: pb.PodSandboxConfig) -> tuple[str, pb.PodSandboxStatusResponse]:
    sandbox_id = shim.runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=cfg)).pod_sandbox_id
    return sandbox_id, shim.runtime.PodSandboxStatus(
        pb.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id, verbose=True))


def remove(shim: Shim, sandbox_id: str) -> None:
    shim.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=sandbox_id))
    shim.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id))


def in_pod(netns: str, *cmd: str) -> str:
    return sh("nsenter", f"--net={netns}", *cmd)


def test_second_network_gives_eth1(shim: Shim) -> None:
    first = bridge_conflist("net-a", "10.88.0.0/24", shim.ipam_dir)
    second = bridge_conflist("net-b", "10.89.0.0/24", shim.ipam_dir, portmap=False)
    second["plugins"][0]["bridge"] = "cni1"
    second["plugins"][0]["ipam"]["routes"] = []
    shim.write_conf("10-a.conflist", first)
    shim.write_conf("20-b.conflist", second)
    shim.extra_toml = "  max_conf_num = 2\n"
    shim.start()
    sandbox_id, st = run(shim, pod_config("multi"))
    assert ipaddress.ip_address(st.status.network.ip) in ipaddress.ip_network("10.88.0.0/24")
    assert [ipaddress.ip_address(i.ip) in ipaddress.ip_network("10.89.0.0/24")
            for i in st.status.network.additional_ips] == [True]
    netns = json.loads(st.info["info"])["netNamespacePath"]
    addrs = in_pod(netns, "ip", "-br", "-4", "addr")
    assert "eth0" in addrs and "eth1" in addrs
    shim.node.run("ping", "-c", "1", "-W", "2", st.status.network.additional_ips[0].ip)
    remove(shim, sandbox_id)
    assert shim.leftovers("net-a") == {} and shim.ip_files("net-b") == []


def test_edited_conf_dir_still_tears_down_from_the_cache(shim: Shim) -> None:
    path = shim.write_conf("10-test.conflist", bridge_conflist("testnet", "10.88.0.0/24", shim.ipam_dir))
    shim.start()
    cfg = pod_config("web", port_mappings=[pb.PortMapping(container_port=80, host_port=8088)])
    sandbox_id, st = run(shim, cfg)
    assert "8088" in shim.node.run("iptables", "-t", "nat", "-S")
    # Someone rewrites the network: other subnet, no portmap, other IPAM dir.
    edited = bridge_conflist("testnet", "10.99.0.0/24", shim.work / "other-ipam", portmap=False)
    path.write_text(json.dumps(edited))
    remove(shim, sandbox_id)
    # What ADD made is gone: the IP in the original dir, the portmap rule, the veth.
    assert "8088" not in shim.node.run("iptables", "-t", "nat", "-S")
    assert shim.leftovers("testnet") == {}


def test_bandwidth_and_tuning_plugins(shim: Shim) -> None:
    conf = bridge_conflist("testnet", "10.88.0.0/24", shim.ipam_dir, extra=[
        {"type": "tuning", "sysctl": {"net.ipv4.conf.eth0.forwarding": "1"}},
        {"type": "bandwidth", "capabilities": {"bandwidth": True}},
    ])
    shim.write_conf("10-test.conflist", conf)
    shim.start()
    cfg = pod_config("shaped")
    # Ingress only: egress shaping makes the bandwidth plugin load the ifb module, and
    # loading it creates ifb0/ifb1 in the host's namespace, which we must not touch.
    cfg.annotations["kubernetes.io/ingress-bandwidth"] = "10M"
    sandbox_id, st = run(shim, cfg)
    netns = json.loads(st.info["info"])["netNamespacePath"]
    assert in_pod(netns, "sysctl", "-n", "net.ipv4.conf.eth0.forwarding").strip() == "1"
    veth = shim.veths()[0]
    qdiscs = shim.node.run("tc", "qdisc", "show", "dev", veth)
    assert "tbf" in qdiscs and "rate 10Mbit" in qdiscs, qdiscs
    remove(shim, sandbox_id)
    assert shim.leftovers("testnet") == {}


def test_internal_loopback(shim: Shim) -> None:
    shim.write_conf("10-test.conflist", bridge_conflist("testnet", "10.88.0.0/24", shim.ipam_dir))
    shim.extra_toml = "  use_internal_loopback = true\n"
    shim.start()
    sandbox_id, st = run(shim, pod_config("lo"))
    netns = json.loads(st.info["info"])["netNamespacePath"]
    assert "UP" in in_pod(netns, "ip", "-br", "link", "show", "lo")
    assert "plugin=loopback" not in shim.log()
    assert shim.cache_files() == [f"testnet-{sandbox_id}-eth0"]
    remove(shim, sandbox_id)
    assert shim.leftovers("testnet") == {}
