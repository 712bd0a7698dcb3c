"""A whole cluster's pod network on one machine, in throwaway namespaces.

    underlay ns   br0 198.18.0.254/24, etcd on 198.18.0.254:2379
       |  veth per node
    node-i ns     eth0 198.18.0.i/24; `cri-shim agent` (flannel's job: lease a podCIDR
                  from etcd, write subnet.env + the flannel conflist, program flannel.1)
                  and `cri-shim serve`, whose pods get their IP from the flannel CNI
                  plugin -> bridge + host-local, in that node's podCIDR
    pod netns     pinned under the node's own netns dir

Everything lives under one temp dir and in namespaces made here; ``close()`` removes
all of it (processes, pods, namespaces, files), also after a failure. The underlay has
no route anywhere: traffic stays between these namespaces.

Used by ``hack/demo-cluster`` and ``tests/privileged/test_cluster.py``; built from the
rig's namespaces, etcd and server.
"""

from __future__ import annotations

import json
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from .etcd import ETCD, Etcd
from .netns import Namespace, Underlay
from .process import REPO, env, stop, wait_for
from .server import PLUGIN_DIR, Server

__all__ = ["ETCD", "UNDERLAY_IP", "NETWORK", "Cluster", "Node", "Pod", "wait_for"]

UNDERLAY_IP = "198.18.0.254"
NETWORK = "10.244.0.0/16"


class Node:
    def __init__(self, cluster: "Cluster", i: int) -> None:
        self.cluster, self.i = cluster, i
        self.name, self.ip = f"node-{i}", f"198.18.0.{i}"
        self.work = cluster.work / self.name
        self.work.mkdir(parents=True)
        self.ns = cluster.own(Namespace(name=f"{cluster.prefix}-n{i}"))
        cluster.underlay.attach(self.ns, i, f"{self.ip}/24")
        self.server = Server(self.ns, self.work, bin_dirs=(str(cluster.bin_dir), PLUGIN_DIR),
                             log_level="info")
        self.agent: subprocess.Popen | None = None

    # -- processes ---------------------------------------------------------------

    def start_agent(self, *, wait: bool = True) -> None:
        log = open(self.work / "agent.log", "ab")
        self.agent = subprocess.Popen(
            ["nsenter", f"--net={self.ns.path}", sys.executable, "-m", "cri_shim", "agent",
             "--node-name", self.name, "--public-ip", self.ip, "--iface", "eth0",
             "--store", f"etcd:{cluster_etcd(self.cluster)}", "--network", NETWORK,
             "--subnet-file", str(self.work / "subnet.env"), "--conf-dir", str(self.work / "net.d"),
             "--plugin-data-dir", str(self.work / "flannel"), "--ipam-data-dir",
             str(self.work / "ipam"), "--lease-ttl", "60"],
            stdout=log, stderr=subprocess.STDOUT, env=env())
        if wait:
            self.wait_for_conflist()

    def wait_for_conflist(self, timeout: float = 30) -> None:
        wait_for(lambda: (self.work / "net.d" / "10-flannel.conflist").exists(),
                 f"{self.name}'s agent to write its conflist", self.log("agent"), proc=self.agent,
                 timeout=timeout)

    def stop_agent(self, sig: int = signal.SIGTERM) -> None:
        stop(self.agent, sig)
        self.agent = None

    def start_shim(self) -> None:
        self.server.start()
        wait_for(lambda: "NetworkReady" in self.ctl("info", check=False),
                 f"{self.name}'s cri-shim to answer", self.log("shim"), proc=self.server.proc)

    def stop_shim(self) -> None:
        self.server.stop()

    def log(self, what: str) -> Callable[[], str]:
        return lambda: (self.work / f"{what}.log").read_text(errors="replace")[-3000:]

    # -- pods --------------------------------------------------------------------

    def ctl(self, *args: str, check: bool = True) -> str:
        proc = self.server.ctl(*args, check=False)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{self.name}: ctl {' '.join(args)}: {proc.stderr.strip()}")
        return proc.stdout

    def run_pod(self, name: str) -> "Pod":
        config = self.work / f"{name}.json"
        config.write_text(json.dumps({"metadata": {"name": name, "namespace": "default",
                                                   "uid": f"{self.name}-{name}"}}))
        sandbox_id = self.ctl("runp", str(config)).strip()
        info = json.loads(self.ctl("inspectp", sandbox_id))
        return Pod(self, name, sandbox_id, info["status"]["network"]["ip"],
                   info["info"]["netNamespacePath"])

    def overlay_routes(self) -> list[str]:
        return [line for line in self.ns.run("ip", "route", "show", "dev", "flannel.1").splitlines() if line]


class Pod:
    def __init__(self, node: Node, name: str, sandbox_id: str, ip: str, netns: str) -> None:
        self.node, self.name, self.id, self.ip, self.netns = node, name, sandbox_id, ip, netns

    def ping(self, ip: str, count: int = 1) -> bool:
        proc = subprocess.run(["nsenter", f"--net={self.netns}", "ping", "-c", str(count), "-W", "2", ip],
                              capture_output=True, timeout=30)
        return proc.returncode == 0

    def remove(self) -> None:
        self.node.ctl("stopp", self.id)
        self.node.ctl("rmp", self.id)


class Cluster:
    def __init__(self, nodes: int = 3, *, say: Callable[[str], None] = lambda s: None) -> None:
        self.say = say
        self.prefix = f"crishim-c{secrets.token_hex(3)}"
        self.work = Path(tempfile.mkdtemp(prefix="cri-shim-cluster."))
        self.namespaces: list[Namespace] = []
        self.etcd: Etcd | None = None
        self.nodes: list[Node] = []
        try:
            self._build(nodes)
        except BaseException:
            self.close()
            raise

    def own(self, ns: Namespace) -> Namespace:
        self.namespaces.append(ns)
        return ns

    def _build(self, n: int) -> None:
        self.say(f"underlay namespace {self.prefix}-ul: bridge br0 {UNDERLAY_IP}/24, etcd")
        self.underlay = self.own(Underlay(f"{self.prefix}-ul", f"{UNDERLAY_IP}/24"))
        self.etcd = Etcd(self.underlay, UNDERLAY_IP, name="underlay")
        self.start_etcd()
        self.bin_dir = self.work / "bin"
        from flannelcni.install import install
        install(str(self.bin_dir))
        for _ in range(n):
            self.add_node()
        self.wait_for_overlay()

    def start_etcd(self) -> None:
        self.etcd.start()

    def stop_etcd(self) -> None:
        """etcd goes away (its data stays: ``start_etcd`` brings it back)."""
        self.etcd.pause()

    def wait_for_overlay(self, timeout: float = 60) -> None:
        """Until every node has a flannel.1 route to every other node's podCIDR (agents
        learn of new leases by watching the store, a second or so after they appear)."""
        def complete() -> bool:
            return all(len(n.overlay_routes()) >= len(self.nodes) - 1 for n in self.nodes)
        wait_for(complete, "every node's overlay routes", timeout=timeout)

    def add_node(self, *, wait: bool = True) -> Node:
        node = Node(self, len(self.nodes) + 1)
        self.nodes.append(node)
        self.say(f"{node.name}: namespace {node.ns.name}, eth0 {node.ip}; agent and cri-shim")
        node.start_agent(wait=wait)
        if wait:
            node.start_shim()
        return node

    def remove_node(self, node: Node) -> None:
        """What deleting a node does: its processes go and its lease is released."""
        node.stop_shim()
        node.stop_agent()
        node.server.force_clean()
        # Only from inside the underlay: etcd is not reachable (and must not be looked
        # for) from the host's network. etcd leases carry no node name: flannel finds
        # a node's lease by its PublicIP.
        self.underlay.run(sys.executable, "-c",
                          "import sys; sys.path.insert(0, sys.argv[1]);"
                          "from nodeipam.etcdstore import EtcdLeaseStore;"
                          "EtcdLeaseStore([sys.argv[2]]).release(sys.argv[3])",
                          str(REPO), cluster_etcd(self), node.ip)
        self.nodes.remove(node)

    def close(self) -> None:
        """Remove everything, best effort: every step runs even if one fails, and
        SIGINT/SIGTERM cannot interrupt it halfway."""
        old = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            steps: list[Callable[[], None]] = []
            for node in self.nodes:
                steps += [node.server.stop, lambda n=node: stop(n.agent), node.server.force_clean]
            if self.etcd is not None:
                steps.append(self.etcd.stop)
            steps += [ns.delete for ns in reversed(self.namespaces)]
            steps.append(lambda: shutil.rmtree(self.work, ignore_errors=True))
            for step in steps:
                try:
                    step()
                except Exception as exc:  # keep going: leave as little as possible
                    print(f"cleanup: {exc}", file=sys.stderr)
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)


def cluster_etcd(cluster: "Cluster") -> str:
    assert cluster.etcd is not None
    return cluster.etcd.endpoint
