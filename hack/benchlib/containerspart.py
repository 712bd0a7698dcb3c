"""Containers (issue 11): cri-shim against ``runc run -d`` of the same bundle, interleaved.

- Create+Start: CreateContainer + StartContainer of a busybox container in a ready pod
  (A), against the floor (B): ``runc run -d`` of a bundle holding the very config.json
  cri-shim wrote for its container, on an overlay of the same image layers mounted
  beforehand (runc alone: no monitor, no log, no record, no rootfs mount).
- A whole pod: RunPodSandbox + Create + Start of a container from a cached image (A),
  against the raw CNI chain's ADD plus ``runc run -d`` (B).
- Memory: N running containers (``Sizes.containers``): conmon's RSS per container and
  the server's RSS growth per container, against containerd's shim (about 13 MiB for
  each pod, a figure, not measured here); the server's RSS with N running.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from cri_shim.api import api_pb2 as pb
from runtime import rootfs
from testbed import imagebuild
from testbed.containers import BUSYBOX, container_config
from testbed.pods import pod_config

from .context import Context
from .stats import ratio, read_proc, summary

CONTAINERD_SHIM_MIB = 13.0   # containerd-shim-runc-v2 per pod (issue 11's figure)
RPC = 120


def run(ctx: Context) -> dict[str, Any]:
    sizes = ctx.sizes
    shim = ctx.shim
    work = Path(tempfile.mkdtemp(prefix="containers-", dir=ctx.work.root))
    runc_root = work / "runc-root"
    ctx.progress("containers: importing the busybox image")
    layout = imagebuild.busybox_image(work / "layout", tag="1.29-2")
    archive = imagebuild.archive(layout, work / "busybox.tar", "docker",
                                 name=BUSYBOX.rsplit(":", 1)[0])
    shim.ctl("import", str(archive))
    pod = pod_config("bench-ctr", log_directory=str(work / "logs"))
    sid = shim.runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=pod), timeout=RPC).pod_sandbox_id
    out: dict[str, Any] = {}
    try:
        a, b = [], []
        for i in range(sizes.container_rounds + 1):
            t_a, bundle = _shim_create_start(ctx, sid, pod, i)
            t_b = _runc_run(runc_root, bundle, work / f"floor-{i}")
            if i:   # the first round warms caches
                a.append(t_a)
                b.append(t_b)
        out["create_start"] = summary(a)
        out["runc_run"] = summary(b)
        out["ratio"] = ratio(out["create_start"]["median_ms"], out["runc_run"]["median_ms"])
        whole_a, whole_b = [], []
        for i in range(max(3, sizes.container_rounds // 2)):
            whole_a.append(_whole_pod(ctx, i))
            whole_b.append(_raw_pod(ctx, runc_root, work / f"raw-{i}", bundle))
        out["pod"] = summary(whole_a)
        out["raw_pod"] = summary(whole_b)
        out["pod_ratio"] = ratio(out["pod"]["median_ms"], out["raw_pod"]["median_ms"])
        out.update(_memory(ctx, sid, pod, sizes.containers))
    finally:
        shim.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=sid), timeout=RPC)
        shim.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sid), timeout=RPC)
        for c in subprocess.run(["runc", "--root", str(runc_root), "list", "-q"], capture_output=True,
                                text=True).stdout.split():
            subprocess.run(["runc", "--root", str(runc_root), "delete", "-f", c], capture_output=True)
        for m in sorted(_mounts_under(work), reverse=True):
            subprocess.run(["umount", "-l", m], capture_output=True)
        for d in Path("/sys/fs/cgroup").glob("*/cri-shim-bench"):
            try:
                d.rmdir()
            except OSError:
                pass
        shutil.rmtree(work, ignore_errors=True)
    return out


def _shim_create_start(ctx: Context, sid: str, pod: pb.PodSandboxConfig, i: int) -> tuple[float, Path]:
    """One timed Create+Start; returns the time and a copy of its bundle's spec dir."""
    rt = ctx.shim.runtime
    config = container_config(f"c{i}", command=["sleep", "1000"])
    start = time.perf_counter()
    cid = rt.CreateContainer(pb.CreateContainerRequest(pod_sandbox_id=sid, config=config,
                                                       sandbox_config=pod), timeout=RPC).container_id
    rt.StartContainer(pb.StartContainerRequest(container_id=cid), timeout=RPC)
    elapsed = time.perf_counter() - start
    spec = json.loads((ctx.shim.state / "containers" / cid / "config.json").read_text())
    lowers = _lowers(ctx.shim.state / "containers" / cid / "rootfs")
    rt.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=0), timeout=RPC)
    rt.RemoveContainer(pb.RemoveContainerRequest(container_id=cid), timeout=RPC)
    saved = Path(tempfile.mkdtemp(prefix="spec-", dir=ctx.work.root))
    (saved / "config.json").write_text(json.dumps(spec))
    (saved / "lowers").write_text(json.dumps(lowers))
    return elapsed, saved


def _lowers(target: Path) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[4] == str(target):
                opts = line.split(" - ", 1)[1].split()[2]
                lower = next(o for o in opts.split(",") if o.startswith("lowerdir="))
                return lower[len("lowerdir="):].split(":")
    raise RuntimeError(f"no overlay on {target}")


def _runc_run(runc_root: Path, saved: Path, bundle: Path) -> float:
    """``runc run -d`` of the saved spec on a fresh overlay (mounted untimed)."""
    spec = json.loads((saved / "config.json").read_text())
    cid = secrets.token_hex(16)
    spec["linux"]["cgroupsPath"] = f"/cri-shim-bench/{cid}"
    bundle.mkdir(parents=True)
    (bundle / "config.json").write_text(json.dumps(spec))
    rootfs.mount_overlay(json.loads((saved / "lowers").read_text()), str(bundle / "upper"),
                         str(bundle / "work"), str(bundle / "rootfs"))
    try:
        # The container keeps runc's stdio: a pipe would be held open by it.
        with open(bundle / "runc.err", "wb") as err:
            start = time.perf_counter()
            proc = subprocess.run(["runc", "--root", str(runc_root), "run", "-d", "--bundle",
                                   str(bundle), cid], stdin=subprocess.DEVNULL,
                                  stdout=subprocess.DEVNULL, stderr=err)
            elapsed = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(f"runc run failed: {(bundle / 'runc.err').read_text()}")
    finally:
        subprocess.run(["runc", "--root", str(runc_root), "delete", "-f", cid], capture_output=True)
        rootfs.unmount(str(bundle / "rootfs"))
    return elapsed


def _whole_pod(ctx: Context, i: int) -> float:
    rt = ctx.shim.runtime
    pod = pod_config(f"bench-whole-{i}")
    start = time.perf_counter()
    sid = rt.RunPodSandbox(pb.RunPodSandboxRequest(config=pod), timeout=RPC).pod_sandbox_id
    cid = rt.CreateContainer(pb.CreateContainerRequest(
        pod_sandbox_id=sid, config=container_config("app", command=["sleep", "1000"]),
        sandbox_config=pod), timeout=RPC).container_id
    rt.StartContainer(pb.StartContainerRequest(container_id=cid), timeout=RPC)
    elapsed = time.perf_counter() - start
    rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=sid), timeout=RPC)
    rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sid), timeout=RPC)
    return elapsed


def _raw_pod(ctx: Context, runc_root: Path, bundle: Path, saved: Path) -> float:
    """The raw chain's ADD (pin + plugins) plus ``runc run -d`` in its netns."""
    spec = json.loads((saved / "config.json").read_text())
    start = time.perf_counter()
    att = ctx.raw.add(f"raw-{bundle.name}")
    add = time.perf_counter() - start
    try:
        for ns in spec["linux"]["namespaces"]:
            if ns["type"] == "network":
                ns["path"] = att.netns
            elif ns["type"] in ("ipc", "uts"):
                ns.pop("path", None)
        tmp = bundle.parent / f"{bundle.name}-spec"
        tmp.mkdir()
        (tmp / "config.json").write_text(json.dumps(spec))
        (tmp / "lowers").write_text((saved / "lowers").read_text())
        return add + _runc_run(runc_root, tmp, bundle)
    finally:
        ctx.raw.delete(att)


def _memory(ctx: Context, sid: str, pod: pb.PodSandboxConfig, n: int) -> dict[str, Any]:
    rt = ctx.shim.runtime
    ctx.progress(f"containers: {n} running containers")
    before = read_proc(ctx.shim.pid).rss_mib
    ids = []
    for i in range(n):
        cid = rt.CreateContainer(pb.CreateContainerRequest(
            pod_sandbox_id=sid, config=container_config(f"m{i}", command=["sleep", "1000"]),
            sandbox_config=pod), timeout=RPC).container_id
        rt.StartContainer(pb.StartContainerRequest(container_id=cid), timeout=RPC)
        ids.append(cid)
    time.sleep(1)
    after = read_proc(ctx.shim.pid).rss_mib
    conmons = [_rss_mib(_conmon_pid(ctx, cid)) for cid in ids]
    listed = time.perf_counter()
    rt.ListContainers(pb.ListContainersRequest(), timeout=RPC)
    list_ms = (time.perf_counter() - listed) * 1e3
    for cid in ids:
        rt.RemoveContainer(pb.RemoveContainerRequest(container_id=cid), timeout=RPC)
    conmon_mib = sum(conmons) / len(conmons) if conmons else 0.0
    server_mib = (after - before) / n if n else 0.0
    return {"running": n, "conmon_rss_mib": conmon_mib, "server_mib_per_container": server_mib,
            "server_rss_mib": after, "per_container_mib": conmon_mib + server_mib,
            "vs_containerd_shim": ratio(conmon_mib + server_mib, CONTAINERD_SHIM_MIB),
            "list_ms": list_ms}


def _conmon_pid(ctx: Context, cid: str) -> int:
    try:
        return int((ctx.shim.state / "containers" / cid / "conmon-pidfile").read_text())
    except (OSError, ValueError):
        return 0


def _rss_mib(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _mounts_under(path: Path) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f if line.split()[4].startswith(str(path) + "/")]
