"""Latency, one pod at a time: cri-shim (A) and the raw chain (B), interleaved.

Each A is one pod through cri-shim: RunPodSandbox, a few PodSandboxStatus calls,
StopPodSandbox, RemovePodSandbox. Each B is one pod through the raw chain: pin +
ADD, then DEL + unpin. A and B alternate (A B A B ...), so whatever drifts on a
noisy machine (page cache, iptables ruleset size, the bridge's neighbours, other
load) lands on both sides alike. The first pairs are a warm-up (the first ADD makes
the bridge and iptables chains) and are not counted.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

from .context import Context
from .stats import ratio, summary


def run(ctx: Context) -> dict[str, Any]:
    sizes = ctx.sizes
    samples: dict[str, list[float]] = defaultdict(list)
    steps: dict[str, list[float]] = defaultdict(list)
    total = sizes.warmup + sizes.pairs
    ctx.progress(f"latency: {sizes.pairs} interleaved pairs (+{sizes.warmup} warm-up)")
    started = time.monotonic()
    log_mark = 0
    for i in range(total):
        if i == sizes.warmup:
            log_mark = ctx.shim.log_offset()
        counted = i >= sizes.warmup
        shim = _shim_cycle(ctx, f"lat-{i}", sizes.status_per_pod)
        raw, raw_steps = _raw_cycle(ctx, f"lat-raw-{i}")
        if counted:
            for k, v in {**shim, **raw}.items():
                samples[k] += v if isinstance(v, list) else [v]
            for k, v in raw_steps.items():
                steps[k].append(v)
        if (i + 1) % 50 == 0:
            ctx.progress(f"latency: {i + 1}/{total}")
    out: dict[str, Any] = {name: summary(v) for name, v in samples.items()}
    # The server's own time per call (from its log): the rest of the client's time
    # is the gRPC round trip.
    out["server_handler"] = {m: summary(v) for m, v in ctx.shim.handler_ms(log_mark).items()
                             if m in ("RunPodSandbox", "PodSandboxStatus", "StopPodSandbox",
                                      "RemovePodSandbox", "Version")}
    for s in out["server_handler"].values():
        s.pop("samples_ms", None)
    out["raw_steps"] = {name: summary(v) for name, v in steps.items()}
    for name in out["raw_steps"].values():
        name.pop("samples_ms", None)
    out["ratios"] = {
        "run_vs_add_median": ratio(out["run"]["median_ms"], out["raw_add"]["median_ms"]),
        "run_vs_add_p99": ratio(out["run"]["p99_ms"], out["raw_add"]["p99_ms"]),
        "stop_remove_vs_del_median": ratio(out["stop_remove"]["median_ms"],
                                           out["raw_del"]["median_ms"]),
        "stop_remove_vs_del_p99": ratio(out["stop_remove"]["p99_ms"], out["raw_del"]["p99_ms"]),
    }
    out["pairs"], out["warmup"] = sizes.pairs, sizes.warmup
    out["seconds"] = time.monotonic() - started
    return out


def _shim_cycle(ctx: Context, name: str, statuses: int) -> dict[str, Any]:
    sandbox_id, t_run = ctx.shim.run(name)
    t_status = [ctx.shim.status(sandbox_id)[1] for _ in range(statuses)]
    t_version = [ctx.shim.version() for _ in range(statuses)]
    t_stop = ctx.shim.stop_sandbox(sandbox_id)
    t_remove = ctx.shim.remove(sandbox_id)
    return {"run": t_run, "status": t_status, "version": t_version, "stop": t_stop,
            "remove": t_remove,
            "stop_remove": t_stop + t_remove}


def _raw_cycle(ctx: Context, name: str) -> tuple[dict[str, float], dict[str, float]]:
    start = time.perf_counter()
    att = ctx.raw.add(name)
    t_add = time.perf_counter() - start
    start = time.perf_counter()
    ctx.raw.delete(att)
    t_del = time.perf_counter() - start
    return {"raw_add": t_add, "raw_del": t_del}, att.steps
