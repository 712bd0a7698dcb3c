"""cri-shim serving inside the node netns, and a timed CRI client for it.

The server is ``python -m cri_shim serve --config FILE`` started under
``nsenter --net=<node>`` with every path of its TOML config in the bench's temp dir
(as tests/privileged/harness.py does); its pid goes to ``shim.pid`` so the
supervisor can stop it whatever happens to the bench. The client uses the stubs in
``cri_shim.api``; each call is timed on the client side (what kubelet waits for).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import grpc

from cri_shim.api import api_pb2 as pb
from cri_shim.api import api_pb2_grpc as pb_grpc

from .node import REPO, Work
from .stats import ProcReading, read_proc

RPC_TIMEOUT = 120.0
_HANDLER_LINE = re.compile(r" cri (\w+) sandbox=\S+ code=OK duration_ms=([\d.]+)")
_PLUGIN_LINE = re.compile(r"plugin=(\S+) command=(\S+) container=\S+ ifname=\S+ "
                          r"duration_ms=([0-9.]+)")


def pod_config(name: str, namespace: str = "bench") -> pb.PodSandboxConfig:
    """A kubelet-shaped pod config without host ports (portmap has nothing to map)."""
    uid = f"uid-{name}"
    return pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name=name, namespace=namespace, uid=uid, attempt=0),
        hostname=name, log_directory=f"/var/log/pods/{namespace}_{name}_{uid}",
        labels={"io.kubernetes.pod.name": name, "io.kubernetes.pod.namespace": namespace,
                "io.kubernetes.pod.uid": uid, "app": "bench"},
        annotations={"kubernetes.io/config.source": "api"},
        linux=pb.LinuxPodSandboxConfig(cgroup_parent=f"kubepods-besteffort-pod{uid}.slice"))


class Shim:
    """One cri-shim server process inside the node netns."""

    def __init__(self, work: Work, node_netns: str, bin_dirs: Sequence[str],
                 cni_options: Sequence[str] = (), src: Path = REPO) -> None:
        self.work = work
        self.src = src                          # the checkout cri-shim is run from
        self.cni_options = tuple(cni_options)   # extra `key = value` lines for the CNI table
        self.node_netns = node_netns
        self.bin_dirs = tuple(bin_dirs)
        self.socket = work.root / "cri.sock"
        self.log_path = work.root / "shim.log"
        self.config_path = work.root / "config.toml"
        self.proc: subprocess.Popen | None = None
        self.channel: grpc.Channel | None = None

    def toml(self) -> str:
        bins = ", ".join(f'"{d}"' for d in self.bin_dirs)
        return f'''version = 2
root = "{self.work.root}/root"
state = "{self.work.root}/state"
[grpc]
  address = "{self.socket}"
[plugins."io.containerd.grpc.v1.cri".cni]
  bin_dirs = [{bins}]
  conf_dir = "{self.work.conf_dir}"
  cache_dir = "{self.work.cache_dir}"
  netns_dir = "{self.work.netns_dir}"
''' + "".join(f"  {line}\n" for line in self.cni_options)

    def start(self, *, log_level: str = "info") -> "Shim":
        self.config_path.write_text(self.toml())
        env = dict(os.environ, PYTHONPATH=str(self.src))
        # Its own session: a Ctrl-C on the terminal reaches the bench, which tears
        # the pods down through this server before it stops it.
        self.proc = subprocess.Popen(
            ["nsenter", f"--net={self.node_netns}", sys.executable, "-m", "cri_shim", "serve",
             "--config", str(self.config_path), "--log-level", log_level],
            stdout=open(self.log_path, "ab"), stderr=subprocess.STDOUT, env=env,
            start_new_session=True, cwd=str(self.src))
        (self.work.root / "shim.pid").write_text(str(self.proc.pid))
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"cri-shim exited {self.proc.returncode}:\n{self.log_tail()}")
            if self.socket.exists():
                channel = grpc.insecure_channel(f"unix://{self.socket}")
                try:
                    pb_grpc.RuntimeServiceStub(channel).Version(pb.VersionRequest(), timeout=0.5)
                    self.channel = channel
                    break
                except grpc.RpcError:
                    channel.close()
            if time.monotonic() > deadline:
                raise RuntimeError(f"cri-shim does not answer on {self.socket}:\n{self.log_tail()}")
            time.sleep(0.05)
        self.runtime = pb_grpc.RuntimeServiceStub(self.channel)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid   # nsenter execs the server: same pid

    def stop(self) -> None:
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def reading(self) -> ProcReading:
        return read_proc(self.pid)

    def log_offset(self) -> int:
        return self.log_path.stat().st_size if self.log_path.exists() else 0

    def handler_ms(self, since: int) -> dict[str, list[float]]:
        """The server's own duration of each call it logged after offset *since*
        (its one line per CRI call), by method: client time minus this is gRPC."""
        with open(self.log_path, "rb") as f:
            f.seek(since)
            text = f.read().decode(errors="replace")
        out: dict[str, list[float]] = {}
        for m in _HANDLER_LINE.finditer(text):
            out.setdefault(m[1], []).append(float(m[2]) / 1000.0)
        return out

    def plugin_ms(self, since: int) -> dict[str, list[float]]:
        """How long each plugin exec took in the server, by ``"<COMMAND> <plugin>"``
        (its one log line per exec), after offset *since*: compared with the raw
        chain's own steps, this says whether the plugins run slower in the server."""
        with open(self.log_path, "rb") as f:
            f.seek(since)
            text = f.read().decode(errors="replace")
        out: dict[str, list[float]] = {}
        for m in _PLUGIN_LINE.finditer(text):
            out.setdefault(f"{m[2]} {m[1]}", []).append(float(m[3]) / 1000.0)
        return out

    def version(self) -> float:
        """One Version call: the round trip of a call that does nothing (the gRPC floor)."""
        start = time.perf_counter()
        self.runtime.Version(pb.VersionRequest(), timeout=RPC_TIMEOUT)
        return time.perf_counter() - start

    def log_tail(self, lines: int = 30) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    # -- timed calls (seconds) ----------------------------------------------------

    def run(self, name: str) -> tuple[str, float]:
        req = pb.RunPodSandboxRequest(config=pod_config(name))
        start = time.perf_counter()
        reply = self.runtime.RunPodSandbox(req, timeout=RPC_TIMEOUT)
        return reply.pod_sandbox_id, time.perf_counter() - start

    def status(self, sandbox_id: str) -> tuple[Any, float]:
        req = pb.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id)
        start = time.perf_counter()
        reply = self.runtime.PodSandboxStatus(req, timeout=RPC_TIMEOUT)
        return reply, time.perf_counter() - start

    def stop_sandbox(self, sandbox_id: str) -> float:
        start = time.perf_counter()
        self.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=sandbox_id),
                                    timeout=RPC_TIMEOUT)
        return time.perf_counter() - start

    def remove(self, sandbox_id: str) -> float:
        start = time.perf_counter()
        self.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id),
                                      timeout=RPC_TIMEOUT)
        return time.perf_counter() - start

    def list(self) -> tuple[int, float]:
        start = time.perf_counter()
        reply = self.runtime.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=RPC_TIMEOUT)
        return len(reply.items), time.perf_counter() - start

    def ip(self, sandbox_id: str) -> str:
        reply, _ = self.status(sandbox_id)
        return reply.status.network.ip

    def remove_all(self) -> int:
        """Stop and remove every sandbox the server knows (the bench's own cleanup)."""
        reply = self.runtime.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=RPC_TIMEOUT)
        for item in reply.items:
            self.stop_sandbox(item.id)
            self.remove(item.id)
        return len(reply.items)
