"""cri-shim serving inside the node netns, and a timed CRI client for it.

The server is the rig's (``testbed.server.Server``: ``python -m cri_shim serve``
under ``nsenter --net=<node>``, every path of its config in the bench's temp dir); its
pid goes to ``shim.pid`` so the supervisor can stop it whatever happens to the bench. The client uses the stubs in
``cri_shim.api``; each call is timed on the client side (what kubelet waits for).
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any, Sequence

from cri_shim.api import api_pb2 as pb

from testbed.pods import pod_config as testbed_pod_config
from testbed.server import Server

from .node import REPO, Work
from .stats import ProcReading, read_proc

RPC_TIMEOUT = 120.0
_HANDLER_LINE = re.compile(r" cri (\w+) sandbox=\S+ code=OK duration_ms=([\d.]+)")
_PLUGIN_LINE = re.compile(r"plugin=(\S+) command=(\S+) container=\S+ ifname=\S+ "
                          r"duration_ms=([0-9.]+)")


def pod_config(name: str, namespace: str = "bench") -> pb.PodSandboxConfig:
    """A kubelet-shaped pod config without host ports (portmap has nothing to map)."""
    return testbed_pod_config(name, namespace, labels={"app": "bench"},
                              cgroup_parent=f"kubepods-besteffort-poduid-{name}.slice")


class _NetnsPath:
    """The node netns the bench runs in, by path (the supervisor made it)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def veths(self) -> list[str]:
        from .node import veths
        return veths()


class Shim(Server):
    """One cri-shim server process inside the node netns (``testbed.server.Server``),
    with the bench's timed client calls."""

    def __init__(self, work: Work, node_netns: str, bin_dirs: Sequence[str],
                 cni_options: Sequence[str] = (), src: Path = REPO) -> None:
        super().__init__(_NetnsPath(node_netns), work.root, bin_dirs=bin_dirs,
                         cni_options=cni_options, src=src, log_level="info",
                         pid_file=work.root / "shim.pid")

    def reading(self) -> ProcReading:
        return read_proc(self.pid)

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
