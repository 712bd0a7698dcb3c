"""The node agent for real: three node namespaces on an underlay bridge, VXLAN between them.

Topology (every namespace made here, deleted again even when a test fails; the host's
network is never touched)::

    underlay ns:  br0 ── u1, u2, u3  (veth peers of each node's eth0)
    node-i ns:    eth0 198.18.0.i/24, flannel.1, vpod 10.244.X.1/24 ─┐
    pod-i ns:     eth0 10.244.X.2/24, default via 10.244.X.1  ───────┘

The agent runs under ``nsenter --net=<node>`` with a shared ``FileLeaseStore``, exactly
as the demo starts it. Pods ping each other across nodes through flannel.1.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flannel.subnetenv import render_conflist
from flannelcni.subnetenv import read_subnet_env
from flannel.vxlan import vtep_mac
from nodeipam.filestore import FileLeaseStore

from testbed.netns import Underlay

from .harness import REPO, NodeNamespace

pytestmark = pytest.mark.privileged

NETWORK = "10.244.0.0/16"


class Node:
    def __init__(self, cluster: "Cluster", i: int) -> None:
        self.i, self.name, self.ip = i, f"node-{i}", f"198.18.0.{i}"
        self.ns = cluster.own(NodeNamespace("crishim-fn"))
        self.work = cluster.work / self.name
        self.store_path = cluster.store_path
        self.pod: NodeNamespace | None = None
        cluster.underlay.attach(self.ns, i, f"{self.ip}/24")

    def agent_argv(self, *extra: str) -> list[str]:
        return ["nsenter", f"--net={self.ns.path}", sys.executable, "-m", "flannel.agent",
                "--node-name", self.name, "--public-ip", self.ip, "--store", f"file:{self.store_path}",
                "--network", NETWORK, "--subnet-file", str(self.work / "subnet.env"),
                "--conf-dir", str(self.work / "net.d"), "--ip-masq", "--log-level", "debug", *extra]

    def agent_once(self) -> str:
        proc = subprocess.run(self.agent_argv("--once"), capture_output=True, text=True,
                              env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=60)
        assert proc.returncode == 0, f"agent --once on {self.name} failed:\n{proc.stderr}"
        return proc.stderr

    @property
    def subnet(self) -> ipaddress.IPv4Network:
        return read_subnet_env(str(self.work / "subnet.env")).subnet

    def add_pod(self, cluster: "Cluster") -> str:
        """A pod netns wired to this node like the bridge plugin would: returns its IP."""
        self.pod = cluster.own(NodeNamespace("crishim-fp"))
        gw, pod_ip = self.subnet.network_address + 1, self.subnet.network_address + 2
        self.ns.run("ip", "link", "add", "vpod", "type", "veth", "peer", "name", "eth0",
                    "netns", self.pod.name)
        self.ns.run("ip", "addr", "add", f"{gw}/{self.subnet.prefixlen}", "dev", "vpod")
        self.ns.run("ip", "link", "set", "vpod", "up")
        self.pod.run("ip", "addr", "add", f"{pod_ip}/{self.subnet.prefixlen}", "dev", "eth0")
        self.pod.run("ip", "link", "set", "eth0", "up")
        self.pod.run("ip", "route", "add", "default", "via", str(gw))
        return str(pod_ip)

    def device(self) -> tuple[int, str, str]:
        """(ifindex, MAC, `ip -d link` details) of flannel.1."""
        out = self.ns.run("ip", "-d", "-o", "link", "show", "flannel.1")
        index = int(out.split(":", 1)[0])
        mac = re.search(r"link/ether (\S+)", out).group(1)
        return index, mac, out

    def overlay(self) -> dict[str, list[str]]:
        """flannel.1's neighbours, FDB entries and routes, as iproute2 prints them."""
        def lines(*cmd: str) -> list[str]:
            return sorted(line.strip() for line in self.ns.run(*cmd).splitlines() if line.strip())
        return {"neigh": lines("ip", "neigh", "show", "dev", "flannel.1", "nud", "permanent"),
                "fdb": lines("bridge", "fdb", "show", "dev", "flannel.1"),
                "route": lines("ip", "route", "show", "dev", "flannel.1")}


class Cluster:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.store_path = work / "leases.json"
        self.namespaces: list[NodeNamespace] = []
        self.procs: list[subprocess.Popen] = []
        self.underlay = self.own(Underlay("crishim-fu"))
        self.nodes: list[Node] = []

    def own(self, ns: NodeNamespace) -> NodeNamespace:
        self.namespaces.append(ns)
        return ns

    def add_nodes(self, n: int) -> list[Node]:
        self.nodes += [Node(self, i) for i in range(len(self.nodes) + 1, len(self.nodes) + n + 1)]
        return self.nodes

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for ns in reversed(self.namespaces):
            ns.close()


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path)
    try:
        yield c
    finally:
        c.close()


def expected_overlay(node: Node, peers: list[Node]) -> dict[str, list[str]]:
    macs = {p.name: p.device()[1] for p in peers}
    return {
        "neigh": sorted(f"{p.subnet.network_address} lladdr {macs[p.name]} PERMANENT" for p in peers),
        "fdb": sorted(f"{macs[p.name]} dst {p.ip} self permanent" for p in peers),
        "route": sorted(f"{p.subnet} via {p.subnet.network_address} onlink" for p in peers),
    }


def ping(src: NodeNamespace, dst: str) -> None:
    proc = subprocess.run(["nsenter", f"--net={src.path}", "ping", "-c", "1", "-W", "2", dst],
                          capture_output=True, text=True)
    assert proc.returncode == 0, f"ping {dst} from {src.name} failed:\n{proc.stdout}{proc.stderr}"


def up(cluster: Cluster, n: int = 3) -> list[Node]:
    """n nodes, the agent run once on each, then once more so every node sees every peer."""
    nodes = cluster.add_nodes(n)
    for node in nodes:
        node.agent_once()
    for node in nodes:
        node.agent_once()
    return nodes


def test_three_nodes_pods_ping_across_flannel_1(cluster):
    nodes = up(cluster)
    subnets = {n.subnet for n in nodes}
    assert len(subnets) == 3 and all(s.subnet_of(ipaddress.IPv4Network(NETWORK)) for s in subnets)
    for node in nodes:
        _, mac, details = node.device()
        assert "vxlan id 1 " in details and f"local {node.ip} dev eth0 " in details
        assert "dstport 8472 " in details and " nolearning " in details
        assert " mtu 1450 " in details                  # veth underlay 1500 - 50
        assert node.ns.run("ip", "-4", "-o", "addr", "show", "dev", "flannel.1").split()[3] == \
            f"{node.subnet.network_address}/32"
        assert node.overlay() == expected_overlay(node, [p for p in nodes if p is not node])
        assert (node.work / "subnet.env").read_text() == (
            f"FLANNEL_NETWORK={NETWORK}\nFLANNEL_SUBNET={node.subnet.network_address + 1}/24\n"
            "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n")
        # kube-flannel's conflist, plus the non-default subnet.env the plugin must read.
        assert (node.work / "net.d" / "10-flannel.conflist").read_bytes() == \
            render_conflist({"subnetFile": str(node.work / "subnet.env")})
        nat = node.ns.run("iptables", "-t", "nat", "-S")
        assert '-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG' in nat
        assert f"-A FLANNEL-POSTRTG -s {node.subnet} -d {NETWORK} " in nat
    lease_doc = json.loads(cluster.store_path.read_text())
    assert {entry["node"]: entry["attrs"]["BackendData"]["VtepMAC"] for entry in lease_doc["subnets"].values()} \
        == {n.name: n.device()[1] for n in nodes}
    pods = [n.add_pod(cluster) for n in nodes]
    ping(nodes[0].pod, pods[1])
    ping(nodes[0].pod, pods[2])
    ping(nodes[2].pod, pods[1])


def test_removed_peer_is_unprogrammed_and_restart_keeps_the_device(cluster):
    nodes = up(cluster)
    n1, n2, n3 = nodes
    before = n1.device()
    FileLeaseStore(cluster.store_path).release(n3.ip)
    n1.agent_once()                                     # a restart: reconcile with the store
    after = n1.device()
    assert after[:2] == before[:2]                      # same ifindex, same MAC: not recreated
    assert n1.overlay() == expected_overlay(n1, [n2])
    assert str(n3.subnet.network_address) not in "".join(sum(n1.overlay().values(), []))
    ping(n1.ns, str(n2.subnet.network_address))         # node to node over flannel.1
    n1.agent_once()
    assert n1.device()[:2] == before[:2] and n1.overlay() == expected_overlay(n1, [n2])


def test_running_agent_follows_the_store_and_sigterm_keeps_the_data_path(cluster):
    n1, n2, n3 = up(cluster)
    log_path = cluster.work / "agent-1.log"
    proc = subprocess.Popen(n1.agent_argv(), stdout=open(log_path, "wb"), stderr=subprocess.STDOUT,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    cluster.procs.append(proc)

    def until(check, what: str, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{what}: agent log:\n{log_path.read_text()}")
            time.sleep(0.1)

    until(lambda: "in sync with 2 peer(s)" in log_path.read_text(), "agent did not start")
    FileLeaseStore(cluster.store_path).release(n2.ip)
    until(lambda: n1.overlay() == expected_overlay(n1, [n3]), "node-2's entries were not removed")
    n2.agent_once()                                     # node-2 comes back (a new lease)
    until(lambda: n1.overlay() == expected_overlay(n1, [n2, n3]), "node-2's entries did not return")
    device = n1.device()[:2]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0, log_path.read_text()
    assert n1.device()[:2] == device                    # flanneld keeps the data path ...
    assert n1.overlay() == expected_overlay(n1, [n2, n3])
    nat = n1.ns.run("iptables", "-t", "nat", "-S")
    assert "flanneld masq" not in nat                   # ... and removes its masq rules


def test_incompatible_device_is_recreated_and_a_wrong_public_ip_is_refused(cluster):
    (node,) = cluster.add_nodes(1)
    # A leftover flannel.1 with another local IP (say the node was renumbered).
    node.ns.run("ip", "link", "add", "flannel.1", "type", "vxlan", "id", "1", "local", "198.18.0.99",
                "dev", "eth0", "dstport", "8472")
    old_index = node.device()[0]
    log = node.agent_once()
    assert "already exists with incompatible configuration: vtep (external) IP: 198.18.0.99" in log
    index, mac, details = node.device()
    assert index != old_index and f"local {node.ip} dev eth0 " in details
    assert mac == vtep_mac(node.name)                   # derived, so stable across recreation

    proc = subprocess.run(node.agent_argv("--once", "--public-ip", "198.18.9.9"),   # last one wins
                          capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)),
                          timeout=60)
    assert proc.returncode == 1 and "no interface holds 198.18.9.9" in proc.stderr
