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

Used by ``hack/demo-cluster`` and ``tests/privileged/test_cluster.py``.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
PLUGIN_DIR = "/usr/lib/cni"
ETCD = "/usr/bin/etcd"
UNDERLAY_IP = "198.18.0.254"
NETWORK = "10.244.0.0/16"


def sh(*cmd: str, check: bool = True, timeout: float = 60) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


class Namespace:
    def __init__(self, name: str) -> None:
        self.name, self.path = name, f"/var/run/netns/{name}"
        sh("ip", "netns", "add", name)
        try:
            self.run("ip", "link", "set", "lo", "up")
        except BaseException:
            self.delete()
            raise

    def run(self, *cmd: str, check: bool = True) -> str:
        return sh("nsenter", f"--net={self.path}", *cmd, check=check)

    def delete(self) -> None:
        sh("ip", "netns", "del", self.name, check=False)


class Node:
    def __init__(self, cluster: "Cluster", i: int) -> None:
        self.cluster, self.i = cluster, i
        self.name, self.ip = f"node-{i}", f"198.18.0.{i}"
        self.work = cluster.work / self.name
        self.work.mkdir(parents=True)
        self.ns = cluster.own(Namespace(f"{cluster.prefix}-n{i}"))
        cluster.underlay.run("ip", "link", "add", f"u{i}", "type", "veth", "peer", "name", "eth0",
                             "netns", self.ns.name)
        cluster.underlay.run("ip", "link", "set", f"u{i}", "master", "br0", "up")
        self.ns.run("ip", "addr", "add", f"{self.ip}/24", "dev", "eth0")
        self.ns.run("ip", "link", "set", "eth0", "up")
        self.ns.run("sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward")
        self.socket = self.work / "cri.sock"
        self.agent: subprocess.Popen | None = None
        self.shim: subprocess.Popen | None = None

    # -- processes ---------------------------------------------------------------

    def _spawn(self, what: str, *argv: str) -> subprocess.Popen:
        log = open(self.work / f"{what}.log", "ab")
        return subprocess.Popen(["nsenter", f"--net={self.ns.path}", sys.executable, "-m", "cri_shim",
                                 *argv], stdout=log, stderr=subprocess.STDOUT,
                                env=_env())

    def start_agent(self, *, wait: bool = True) -> None:
        self.agent = self._spawn(
            "agent", "agent", "--node-name", self.name, "--public-ip", self.ip, "--iface", "eth0",
            "--store", f"etcd:http://{UNDERLAY_IP}:2379", "--network", NETWORK,
            "--subnet-file", str(self.work / "subnet.env"), "--conf-dir", str(self.work / "net.d"),
            "--plugin-data-dir", str(self.work / "flannel"), "--ipam-data-dir", str(self.work / "ipam"),
            "--lease-ttl", "60")
        if wait:
            self.wait_for_conflist()

    def wait_for_conflist(self, timeout: float = 30) -> None:
        wait_for(lambda: (self.work / "net.d" / "10-flannel.conflist").exists(),
                 f"{self.name}'s agent to write its conflist", self.log("agent"), proc=self.agent,
                 timeout=timeout)

    def stop_agent(self, sig: int = signal.SIGTERM) -> None:
        _stop(self.agent, sig)
        self.agent = None

    def start_shim(self) -> None:
        (self.work / "config.toml").write_text(f'''version = 2
root = "{self.work}/root"
state = "{self.work}/state"
[grpc]
  address = "{self.socket}"
[plugins."io.containerd.grpc.v1.cri".cni]
  bin_dirs = ["{self.cluster.bin_dir}", "{PLUGIN_DIR}"]
  conf_dir = "{self.work}/net.d"
  cache_dir = "{self.work}/cni-cache"
  netns_dir = "{self.work}/netns"
''')
        self.shim = self._spawn("shim", "serve", "--config", str(self.work / "config.toml"))
        wait_for(lambda: "NetworkReady" in self.ctl("info", check=False),
                 f"{self.name}'s cri-shim to answer", self.log("shim"), proc=self.shim)

    def stop_shim(self) -> None:
        _stop(self.shim, signal.SIGTERM)
        self.shim = None

    def log(self, what: str) -> Callable[[], str]:
        return lambda: (self.work / f"{what}.log").read_text(errors="replace")[-3000:]

    # -- pods --------------------------------------------------------------------

    def ctl(self, *args: str, check: bool = True) -> str:
        proc = subprocess.run([sys.executable, "-m", "cri_shim", "ctl", "-r", f"unix://{self.socket}",
                               *args], capture_output=True, text=True, timeout=120,
                              env=dict(os.environ, PYTHONPATH=str(REPO)))
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
        self.etcd: subprocess.Popen | None = None
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
        self.underlay = self.own(Namespace(f"{self.prefix}-ul"))
        self.underlay.run("ip", "link", "add", "br0", "type", "bridge")
        self.underlay.run("ip", "addr", "add", f"{UNDERLAY_IP}/24", "dev", "br0")
        self.underlay.run("ip", "link", "set", "br0", "up")
        self.start_etcd()
        self.bin_dir = self.work / "bin"
        from flannelcni.install import install
        install(str(self.bin_dir))
        for _ in range(n):
            self.add_node()
        self.wait_for_overlay()

    def start_etcd(self) -> None:
        self.etcd = subprocess.Popen(
            ["nsenter", f"--net={self.underlay.path}", ETCD, "--name", "underlay",
             "--data-dir", str(self.work / "etcd"),
             "--listen-client-urls", f"http://{UNDERLAY_IP}:2379",
             "--advertise-client-urls", f"http://{UNDERLAY_IP}:2379",
             "--listen-peer-urls", "http://127.0.0.1:2380",
             "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
             "--initial-cluster", "underlay=http://127.0.0.1:2380"],
            stdout=open(self.work / "etcd.log", "ab"), stderr=subprocess.STDOUT)
        wait_for(lambda: _etcd_healthy(self.underlay), "etcd",
                 lambda: (self.work / "etcd.log").read_text(errors="replace")[-2000:], proc=self.etcd)

    def stop_etcd(self) -> None:
        _stop(self.etcd, signal.SIGTERM)
        self.etcd = None

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
        _unpin_all(node)
        # Only from inside the underlay: etcd is not reachable (and must not be looked
        # for) from the host's network. etcd leases carry no node name: flannel finds
        # a node's lease by its PublicIP.
        self.underlay.run(sys.executable, "-c",
                          "import sys; sys.path.insert(0, sys.argv[1]);"
                          "from nodeipam.etcdstore import EtcdLeaseStore;"
                          "EtcdLeaseStore([sys.argv[2]]).release(sys.argv[3])",
                          str(REPO), f"http://{UNDERLAY_IP}:2379", node.ip)
        self.nodes.remove(node)

    def close(self) -> None:
        """Remove everything, best effort: every step runs even if one fails, and
        SIGINT/SIGTERM cannot interrupt it halfway."""
        old = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            steps: list[Callable[[], None]] = []
            for node in self.nodes:
                steps += [lambda n=node: _stop(n.shim, signal.SIGTERM),
                          lambda n=node: _stop(n.agent, signal.SIGTERM),
                          lambda n=node: _unpin_all(n)]
            steps.append(lambda: _stop(self.etcd, signal.SIGTERM))
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


def _unpin_all(node: Node) -> None:
    from cri_shim import netns
    netns_dir = node.work / "netns"
    if netns_dir.exists():
        for p in netns_dir.iterdir():
            netns.unpin(str(p))


def _env() -> dict[str, str]:
    """The environment for the processes in the namespaces: no proxy settings (their
    only peers are in these namespaces) and the repo on PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k.lower() not in
           ("http_proxy", "https_proxy", "all_proxy", "no_proxy")}
    return dict(env, PYTHONPATH=str(REPO))


def _etcd_healthy(underlay: Namespace) -> bool:
    try:
        out = underlay.run(sys.executable, "-c",
                           "import urllib.request as u; print(u.build_opener(u.ProxyHandler({})).open("
                           f"'http://{UNDERLAY_IP}:2379/health', timeout=1).read().decode())",
                           check=False)
    except subprocess.TimeoutExpired:
        return False
    return '"health":"true"' in out.replace(" ", "")


def _stop(proc: subprocess.Popen | None, sig: int) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_for(cond: Callable[[], bool], what: str, log: Callable[[], str] = lambda: "",
             *, proc: subprocess.Popen | None = None, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"waiting for {what}: the process exited {proc.returncode}\n{log()}")
        time.sleep(0.1)
    raise RuntimeError(f"timed out waiting for {what}\n{log()}")
