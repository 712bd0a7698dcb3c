"""Issue 4 end to end: three nodes, etcd, agents, cri-shim, the flannel plugin, VXLAN."""

from __future__ import annotations

import itertools
import subprocess
import sys
from typing import Iterator

import pytest

from testbed.cluster import ETCD, Cluster, wait_for
from testbed.process import env

pytestmark = pytest.mark.privileged


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    import os
    if not os.access(ETCD, os.X_OK):
        pytest.fail(f"{ETCD} missing: Debian's etcd-server (hack/install-system-deps installs it)")
    c = Cluster(3)
    try:
        yield c
    finally:
        c.close()


def unreachable(pods) -> list[str]:
    return [f"{a.node.name}/{a.name} -> {b.node.name}/{b.name}"
            for a, b in itertools.permutations(pods, 2) if not a.ping(b.ip)]


def test_pods_on_three_nodes_reach_each_other(cluster: Cluster) -> None:
    pods = [node.run_pod(f"p{k}") for node in cluster.nodes for k in (1, 2)]
    # Three podCIDRs from the cluster network, one per node, allocated next-fit.
    cidrs = {(n.work / "subnet.env").read_text().split("FLANNEL_SUBNET=")[1].split()[0]
             for n in cluster.nodes}
    assert cidrs == {"10.244.0.1/24", "10.244.1.1/24", "10.244.2.1/24"}
    assert len({p.ip for p in pods}) == 6
    assert unreachable(pods) == []

    # explain, on node-1, tells this pod's whole story: the flannel plugin, its
    # delegate, the node's lease and the overlay routes to the other two.
    first = pods[0]
    node = first.node
    proc = subprocess.run(["nsenter", f"--net={node.ns.path}", sys.executable, "-m", "cri_shim", "ctl",
                           "-r", f"unix://{node.server.socket}", "explain", first.id],
                          capture_output=True, text=True, timeout=60, env=env())
    assert proc.returncode == 0, proc.stderr
    story = proc.stdout
    lease = (node.work / "subnet.env").read_text().split("FLANNEL_SUBNET=")[1].split()[0]
    for words in ("flannel ADD eth0", f"this node's podCIDR lease {lease} of 10.244.0.0/16",
                  "flannel: delegated to bridge with the config saved in", f"the pod's IP: {first.ip}",
                  'delegate (bridge) stdin {"cniVersion"'):
        assert words in story, f"{words!r} not in:\n{story}"
    others = {c.replace(".1/24", ".0/24") for c in cidrs} - {lease.replace(".1/24", ".0/24")}
    for cidr in others:
        assert f"overlay route {cidr} via {cidr.split('/')[0]} dev flannel.1 onlink" in story, story

    # An agent restart keeps flannel.1 (same ifindex) and the pods reachable.
    n1 = cluster.nodes[0]
    index = n1.ns.run("ip", "-o", "link", "show", "flannel.1").split(":")[0]
    n1.stop_agent()
    (n1.work / "net.d" / "10-flannel.conflist").unlink()   # proof the new agent ran
    n1.start_agent()
    cluster.wait_for_overlay()
    assert n1.ns.run("ip", "-o", "link", "show", "flannel.1").split(":")[0] == index
    assert unreachable(pods) == []

    # Removing a node removes its route from the others.
    n3 = cluster.nodes[2]
    for p in [p for p in pods if p.node is n3]:
        p.remove()
    cluster.remove_node(n3)
    wait_for(lambda: all("10.244.2.0/24" not in " ".join(n.overlay_routes()) for n in cluster.nodes),
             "node-3's route to go", timeout=30)
    rest = [p for p in pods if p.node is not n3]
    assert unreachable(rest) == []
    for p in rest:
        p.remove()


def test_etcd_down_keeps_the_data_path_and_agents_retry(cluster: Cluster) -> None:
    n1, n2 = cluster.nodes[0], cluster.nodes[1]
    pods = [n1.run_pod("a"), n2.run_pod("b")]
    cluster.stop_etcd()
    # etcd gone: an agent restart cannot reach the store, but keeps flannel.1 and the
    # routes as they are, and keeps retrying.
    n1.stop_agent()
    n1.start_agent(wait=False)
    assert unreachable(pods) == []
    wait_for(lambda: "retry" in n1.log("agent")().lower() or "unavailable" in n1.log("agent")().lower(),
             "node-1's agent to report the store down", timeout=20)
    assert n1.agent is not None and n1.agent.poll() is None
    # A node that starts while etcd is down joins once it is back.
    n4 = cluster.add_node(wait=False)
    cluster.start_etcd()
    n4.wait_for_conflist(timeout=60)
    n4.start_shim()
    cluster.wait_for_overlay()
    p4 = n4.run_pod("d")
    wait_for(lambda: not unreachable(pods + [p4]), "node-4's pod to be reachable", timeout=60)
    for p in pods + [p4]:
        p.remove()
