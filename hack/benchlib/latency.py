"""Latency: cri-shim (A) and the raw chain (B), interleaved, in batches.

Pods are made and torn down the way a node does it and the way issue 8's independent
client measured: a batch of ``batch`` pods (15) is created, then the batch is stopped
and removed. Within a batch A and B alternate pod by pod, and which of the two goes
first alternates too (A B, B A, ...), so whatever drifts on a noisy machine (page
cache, the iptables ruleset growing with the batch, the bridge's neighbours, other
load) and whatever the order favours lands on both sides alike. Each A is RunPodSandbox
and a few PodSandboxStatus and Version calls; later StopPodSandbox then
RemovePodSandbox. Each B is pin + ADD; later DEL + unpin. The first pairs are a
warm-up (the first ADD makes the bridge and iptables chains) and are not counted.
"""

from __future__ import annotations

import json

import time
from collections import defaultdict
from typing import Any

from cri_shim.api import api_pb2 as pb

from .context import Context
from .stats import ratio, summary


def run(ctx: Context) -> dict[str, Any]:
    sizes = ctx.sizes
    samples: dict[str, list[float]] = defaultdict(list)
    steps: dict[str, list[float]] = defaultdict(list)
    total = sizes.warmup + sizes.pairs
    ctx.progress(f"latency: {sizes.pairs} interleaved pairs (+{sizes.warmup} warm-up) "
                 f"in batches of {sizes.batch}")
    started = time.monotonic()
    log_mark = 0
    done = 0
    for first in range(0, total, sizes.batch):
        batch = range(first, min(first + sizes.batch, total))
        made: list[tuple[int, str, Any]] = []
        for i in batch:
            if i == sizes.warmup:
                log_mark = ctx.shim.log_offset()
            out: dict[str, Any] = {}
            order = (_shim_create, _raw_create) if i % 2 == 0 else (_raw_create, _shim_create)
            for step in order:
                out.update(step(ctx, i, sizes.status_per_pod))
            made.append((i, out.pop("sandbox_id"), out))
        for i, sandbox_id, out in made:
            order = (_shim_delete, _raw_delete) if i % 2 == 0 else (_raw_delete, _shim_delete)
            for step in order:
                out.update(step(ctx, sandbox_id, out))
            if i >= sizes.warmup:
                att = out.pop("att")
                for k, v in out.items():
                    samples[k] += v if isinstance(v, list) else [v]
                for k, v in att.steps.items():
                    steps[k].append(v)
            done += 1
            if done % 50 == 0:
                ctx.progress(f"latency: {done}/{total}")
    out_: dict[str, Any] = {name: summary(v) for name, v in samples.items()}
    # The server's own time per call (from its log): the rest of the client's time
    # is the gRPC round trip.
    out_["server_handler"] = {m: summary(v) for m, v in ctx.shim.handler_ms(log_mark).items()
                              if m in ("RunPodSandbox", "PodSandboxStatus", "StopPodSandbox",
                                       "RemovePodSandbox", "Version")}
    for s in out_["server_handler"].values():
        s.pop("samples_ms", None)
    out_["raw_steps"] = {name: summary(v) for name, v in steps.items()}
    out_["server_plugins"] = {name: summary(v) for name, v in
                              sorted(ctx.shim.plugin_ms(log_mark).items())}
    for part in ("raw_steps", "server_plugins"):
        for name in out_[part].values():
            name.pop("samples_ms", None)
    out_["ratios"] = {
        "run_vs_add_median": ratio(out_["run"]["median_ms"], out_["raw_add"]["median_ms"]),
        "run_vs_add_p99": ratio(out_["run"]["p99_ms"], out_["raw_add"]["p99_ms"]),
        "stop_remove_vs_del_median": ratio(out_["stop_remove"]["median_ms"],
                                           out_["raw_del"]["median_ms"]),
        "stop_remove_vs_del_p99": ratio(out_["stop_remove"]["p99_ms"], out_["raw_del"]["p99_ms"]),
    }
    out_["pairs"], out_["warmup"], out_["batch"] = sizes.pairs, sizes.warmup, sizes.batch
    out_["seconds"] = time.monotonic() - started
    return out_


def _shim_create(ctx: Context, i: int, statuses: int) -> dict[str, Any]:
    sandbox_id, t_run = ctx.shim.run(f"lat-{i}")
    t_status = [ctx.shim.status(sandbox_id)[1] for _ in range(statuses)]
    t_version = [ctx.shim.version() for _ in range(statuses)]
    return {"sandbox_id": sandbox_id, "run": t_run, "status": t_status, "version": t_version}


def _raw_create(ctx: Context, i: int, statuses: int) -> dict[str, Any]:
    start = time.perf_counter()
    att = ctx.raw.add(f"lat-raw-{i}")
    return {"att": att, "raw_add": time.perf_counter() - start}


def _shim_delete(ctx: Context, sandbox_id: str, out: dict[str, Any]) -> dict[str, Any]:
    # What recording the sandbox's trace cost the server in its RunPodSandbox (the
    # trace says; outside every timed window).
    reply = ctx.shim.runtime.PodSandboxStatus(
        pb.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id, verbose=True), timeout=60)
    trace = json.loads(reply.info["info"]).get("trace")   # (a --shim-src without traces)
    t_stop = ctx.shim.stop_sandbox(sandbox_id)
    t_remove = ctx.shim.remove(sandbox_id)
    out = {"stop": t_stop, "remove": t_remove, "stop_remove": t_stop + t_remove}
    if trace:
        out["trace_recording"] = trace["run"]["recording_ms"] / 1e3
    return out


def _raw_delete(ctx: Context, sandbox_id: str, out: dict[str, Any]) -> dict[str, Any]:
    start = time.perf_counter()
    ctx.raw.delete(out["att"])
    return {"raw_del": time.perf_counter() - start}
