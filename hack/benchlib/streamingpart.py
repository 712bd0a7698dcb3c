"""Streaming (issue 12): exec and port forward against the floor, interleaved.

- ExecSync of ``true`` (A) and a streaming exec of ``true`` over SPDY, from the Exec
  call to the status on the error stream (A'), against ``runc exec`` of the same
  process spec in the same container, run directly (B).
- Port forward: 100 MB (``Sizes.forward_mib``) sent through a SPDY port-forward data
  stream to a sink in the pod (busybox ``nc -ll -e wc -c``), until the sink's count
  of what it got comes back (A),
  against the same bytes over a direct TCP connection from the node to the pod's IP
  (B). The ratio is B's time over A's: throughput, >= 0.5 is the target.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from cri_shim.api import api_pb2 as pb
from streaming.testing import SpdyClient
from testbed import imagebuild
from testbed.containers import BUSYBOX, container_config
from testbed.pods import pod_config

from .context import Context
from .stats import ratio, summary

RPC = 120
SINK_PORT = 9000


def run(ctx: Context) -> dict[str, Any]:
    sizes, shim = ctx.sizes, ctx.shim
    work = Path(tempfile.mkdtemp(prefix="streaming-", dir=ctx.work.root))
    ctx.progress("streaming: importing the busybox image")
    layout = imagebuild.busybox_image(work / "layout", tag="1.29-2")
    archive = imagebuild.archive(layout, work / "busybox.tar", "docker", name=BUSYBOX.rsplit(":", 1)[0])
    shim.ctl("import", str(archive))
    pod = pod_config("bench-stream", log_directory=str(work / "logs"))
    rt = shim.runtime
    sid = rt.RunPodSandbox(pb.RunPodSandboxRequest(config=pod), timeout=RPC).pod_sandbox_id
    out: dict[str, Any] = {}
    try:
        cid = rt.CreateContainer(pb.CreateContainerRequest(
            pod_sandbox_id=sid, sandbox_config=pod,
            # each connection: wc -c reads it to its end and answers the count
            config=container_config("sink", command=["nc", "-ll", "-p", str(SINK_PORT), "-e", "wc", "-c"])),
            timeout=RPC).container_id
        rt.StartContainer(pb.StartContainerRequest(container_id=cid), timeout=RPC)
        ctx.progress(f"streaming: {sizes.container_rounds} rounds of ExecSync, Exec and runc exec")
        out.update(_exec(ctx, cid, sizes.container_rounds))
        ip = rt.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=sid), timeout=RPC).status.network.ip
        ctx.progress(f"streaming: port forward of {sizes.forward_mib} MiB against direct TCP")
        out.update(_forward(ctx, sid, ip, sizes.forward_mib, max(3, sizes.container_rounds // 4)))
    finally:
        rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=sid), timeout=RPC)
        rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sid), timeout=RPC)
        shutil.rmtree(work, ignore_errors=True)
    return out


def _exec(ctx: Context, cid: str, rounds: int) -> dict[str, Any]:
    rt, shim = ctx.shim.runtime, ctx.shim
    spec = json.loads((shim.state / "containers" / cid / "config.json").read_text())
    process = dict(spec["process"], args=["true"], terminal=False)
    process.pop("consoleSize", None)
    proc_file = Path(tempfile.mkdtemp(dir=ctx.work.root)) / "process.json"
    proc_file.write_text(json.dumps(process))
    runc = ["runc", "--root", str(shim.state / "runtime" / "runc"), "exec", "--process", str(proc_file), cid]
    sync, stream, floor = [], [], []
    for i in range(rounds + 1):
        t = time.perf_counter()
        rt.ExecSync(pb.ExecSyncRequest(container_id=cid, cmd=["true"], timeout=30), timeout=RPC)
        t_sync = time.perf_counter() - t
        t = time.perf_counter()
        url = rt.Exec(pb.ExecRequest(container_id=cid, cmd=["true"], stdout=True, stderr=True),
                      timeout=RPC).url
        client = SpdyClient(url)
        status = client.command()["error"]
        t_stream = time.perf_counter() - t
        client.close()
        if json.loads(status).get("status") != "Success":
            raise RuntimeError(f"streaming exec of true: {status!r}")
        t = time.perf_counter()
        subprocess.run(runc, check=True, stdin=subprocess.DEVNULL, capture_output=True)
        t_floor = time.perf_counter() - t
        if i:   # the first round warms caches
            sync.append(t_sync)
            stream.append(t_stream)
            floor.append(t_floor)
    out = {"exec_sync": summary(sync), "exec_stream": summary(stream), "runc_exec": summary(floor)}
    out["exec_sync_ratio"] = ratio(out["exec_sync"]["median_ms"], out["runc_exec"]["median_ms"])
    out["exec_stream_ratio"] = ratio(out["exec_stream"]["median_ms"], out["runc_exec"]["median_ms"])
    return out


def _forward(ctx: Context, sid: str, ip: str, mib: int, rounds: int) -> dict[str, Any]:
    payload = bytes(1 << 20)
    a, b = [], []
    for _ in range(rounds):
        url = ctx.shim.runtime.PortForward(pb.PortForwardRequest(pod_sandbox_id=sid), timeout=RPC).url
        client = SpdyClient(url, ("portforward.k8s.io",))
        err = client.open(streamType="error", port=str(SINK_PORT), requestID="0")
        client.write(err, b"", fin=True)
        data = client.open(streamType="data", port=str(SINK_PORT), requestID="0")
        t = time.perf_counter()
        for _ in range(mib):
            client.write(data, payload)
        client.write(data, b"", fin=True)
        counted = client.read_all(data, timeout=300)
        a.append(time.perf_counter() - t)
        if counted.strip() != str(mib << 20).encode():
            raise RuntimeError(f"port forward: the sink counted {counted!r}, not {mib << 20}")
        if client.read_all(err):
            raise RuntimeError(f"port forward: {client.read_all(err)!r}")
        client.close()
        t = time.perf_counter()
        with socket.create_connection((ip, SINK_PORT), timeout=60) as conn:
            for _ in range(mib):
                conn.sendall(payload)
            conn.shutdown(socket.SHUT_WR)
            counted = b""
            while chunk := conn.recv(65536):
                counted += chunk
        b.append(time.perf_counter() - t)
        if counted.strip() != str(mib << 20).encode():
            raise RuntimeError(f"direct: the sink counted {counted!r}, not {mib << 20}")
        time.sleep(0.2)
    out = {"forward": summary(a), "direct": summary(b), "forward_mib": mib}
    out["forward_ratio"] = ratio(out["direct"]["median_ms"], out["forward"]["median_ms"])
    return out
