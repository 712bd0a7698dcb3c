"""Throwaway nodes for privileged tests: a node netns, and cri-shim serving inside it.

Everything a test makes lives in its own node namespace and temp dir: the bridge, the
veths and the iptables rules die with the node namespace; pod namespaces are pinned in
the test's own netns dir; host-local's store and libcni's cache are in the temp dir.
Cleanup runs even when the test fails, and reports what the code under test leaked.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from cri_shim import netns
from cri_shim.api import api_pb2 as pb
from cri_shim.api import api_pb2_grpc as pb_grpc

PLUGIN_DIR = "/usr/lib/cni"
TEST_PLUGIN_DIR = str(Path(__file__).resolve().parent / "plugins")   # shim-test
REPO = Path(__file__).resolve().parents[2]


def sh(*cmd: str, check: bool = True) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


class NodeNamespace:
    """``ip netns add`` a unique node namespace with lo up; ``close()`` deletes it."""

    def __init__(self, prefix: str = "crishim-t") -> None:
        self.name = f"{prefix}-{secrets.token_hex(4)}"
        sh("ip", "netns", "add", self.name)
        self.path = f"/var/run/netns/{self.name}"
        try:
            self.run("ip", "link", "set", "lo", "up")
        except BaseException:
            self.close()
            raise

    def run(self, *cmd: str, check: bool = True) -> str:
        return sh("nsenter", f"--net={self.path}", *cmd, check=check)

    def links(self) -> list[str]:
        out = self.run("ip", "-o", "link", "show")
        return [line.split(": ")[1].split("@")[0] for line in out.splitlines()]

    def close(self) -> None:
        sh("ip", "netns", "del", self.name, check=False)


def bridge_conflist(name: str, subnet: str, data_dir: Path, *, version: str = "1.0.0",
                    portmap: bool = True, extra: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    plugins: list[dict[str, Any]] = [{
        "type": "bridge", "bridge": "cni0", "isGateway": True, "ipMasq": True,
        "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]],
                 "routes": [{"dst": "0.0.0.0/0"}], "dataDir": str(data_dir)},
    }]
    if portmap:
        plugins.append({"type": "portmap", "capabilities": {"portMappings": True}})
    plugins += extra or []
    return {"cniVersion": version, "name": name, "plugins": plugins}


@dataclass
class Shim:
    """cri-shim serving inside a node namespace, with all its state under *work*."""

    node: NodeNamespace
    work: Path
    extra_toml: str = ""
    proc: subprocess.Popen | None = None
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.conf_dir = self.work / "net.d"
        self.netns_dir = self.work / "netns"
        self.ipam_dir = self.work / "ipam"
        self.cache_dir = self.work / "cni-cache"
        self.socket = self.work / "cri.sock"
        self.log_path = self.work / "shim.log"
        self.config_path = self.work / "config.toml"
        self.conf_dir.mkdir(parents=True, exist_ok=True)

    def write_conf(self, filename: str, conf: dict[str, Any] | str) -> Path:
        path = self.conf_dir / filename
        path.write_text(conf if isinstance(conf, str) else json.dumps(conf, indent=2))
        return path

    def toml(self) -> str:
        return f'''version = 2
root = "{self.work}/root"
state = "{self.work}/state"
[grpc]
  address = "{self.socket}"
[plugins."io.containerd.grpc.v1.cri".cni]
  bin_dirs = ["{PLUGIN_DIR}", "{TEST_PLUGIN_DIR}"]
  conf_dir = "{self.conf_dir}"
  cache_dir = "{self.cache_dir}"
  netns_dir = "{self.netns_dir}"
{self.extra_toml}'''

    def start(self) -> "Shim":
        self.config_path.write_text(self.toml())
        env = dict(os.environ, PYTHONPATH=str(REPO))
        self.proc = subprocess.Popen(
            ["nsenter", f"--net={self.node.path}", sys.executable, "-m", "cri_shim", "serve",
             "--config", str(self.config_path), "--log-level", "debug"],
            stdout=open(self.log_path, "ab"), stderr=subprocess.STDOUT, env=env)
        # A stale socket from a killed run may still be there: wait for an answer.
        deadline = time.monotonic() + 20
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"cri-shim exited {self.proc.returncode}:\n{self.log()}")
            if self.socket.exists():
                self.channel = grpc.insecure_channel(f"unix://{self.socket}")
                try:
                    pb_grpc.RuntimeServiceStub(self.channel).Version(pb.VersionRequest(), timeout=0.5)
                    break
                except grpc.RpcError:
                    self.channel.close()
            if time.monotonic() > deadline:
                raise RuntimeError(f"cri-shim does not answer on its socket:\n{self.log()}")
            time.sleep(0.05)
        self.runtime = pb_grpc.RuntimeServiceStub(self.channel)
        self.image = pb_grpc.ImageServiceStub(self.channel)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.channel.close()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run([sys.executable, "-m", "cri_shim", "ctl", "-r", f"unix://{self.socket}", *args],
                              capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
        if check and proc.returncode != 0:
            raise AssertionError(f"ctl {' '.join(args)} failed: {proc.stderr}\n{self.log()}")
        return proc

    # -- what is left behind ---------------------------------------------------------

    def pinned(self) -> list[str]:
        if not self.netns_dir.exists():
            return []
        return sorted(p.name for p in self.netns_dir.iterdir())

    def ip_files(self, network: str) -> list[str]:
        d = self.ipam_dir / network
        if not d.exists():
            return []
        return sorted(p.name for p in d.iterdir()
                      if p.name != "lock" and not p.name.startswith("last_reserved_ip"))

    def veths(self) -> list[str]:
        return [n for n in self.node.links() if n.startswith("veth")]

    def state_files(self) -> list[str]:
        d = self.work / "root" / "sandboxes"
        return sorted(p.name for p in d.iterdir()) if d.exists() else []

    def cache_files(self) -> list[str]:
        d = self.cache_dir / "results"
        return sorted(p.name for p in d.iterdir()) if d.exists() else []

    def leftovers(self, network: str = "") -> dict[str, list[str]]:
        found = {"netns": self.pinned(), "veth": self.veths(), "state": self.state_files(),
                 "cache": self.cache_files()}
        if network:
            found["ip"] = self.ip_files(network)
        return {k: v for k, v in found.items() if v}

    def force_clean(self) -> None:
        """Last resort after a test: unpin whatever is still pinned."""
        for name in self.pinned():
            netns.unpin(str(self.netns_dir / name))


def pod_config(name: str = "pod", namespace: str = "default", uid: str | None = None,
               **extra: Any) -> pb.PodSandboxConfig:
    uid = uid or f"uid-{name}"
    cfg = pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name=name, namespace=namespace, uid=uid, attempt=0),
        hostname=name, log_directory=f"/var/log/pods/{namespace}_{name}_{uid}",
        labels={"io.kubernetes.pod.name": name, "io.kubernetes.pod.namespace": namespace,
                "io.kubernetes.pod.uid": uid},
        annotations={"kubernetes.io/config.source": "api"}, **extra)
    return cfg
