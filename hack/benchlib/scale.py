"""Scale: the calls' latency with 0, 250 and 1,000 sandboxes already present.

The population is grown through cri-shim (8 client threads, not timed as latency;
the fill rate is recorded). At each step: RunPodSandbox samples (each sample pod is
stopped and removed again, so the population stays put), the raw chain's pin + ADD
interleaved with them (the kernel's bridge, the iptables ruleset and host-local
also see the population: this separates their growth from cri-shim's),
PodSandboxStatus on random present pods, ListPodSandbox of all, and the server's
RSS, open fds and threads. At the end all pods are torn down and the server read
once more, then filled and emptied again a few times (soak): RSS must not climb
from round to round.
"""

from __future__ import annotations

import random
import time
from typing import Any

from .context import Context, parallel
from .stats import ratio, summary


def run(ctx: Context) -> dict[str, Any]:
    sizes = ctx.sizes
    present: list[str] = []
    steps: list[dict[str, Any]] = []
    rng = random.Random(5)
    baseline = ctx.shim.reading()
    started = time.monotonic()
    for target in sizes.scale_steps:
        if target > len(present):
            ctx.progress(f"scale: filling to {target} sandboxes")
            names = [f"scale-{i}" for i in range(len(present), target)]
            made, took = parallel(names, sizes.fill_threads, lambda n: ctx.shim.run(n)[0])
            present += made
            fill_rate = len(names) / took
        else:
            fill_rate = None
        ctx.progress(f"scale: measuring at {len(present)} sandboxes")
        step = _measure(ctx, present, rng)
        step.update(existing=len(present), fill_pods_per_s=fill_rate,
                    server=ctx.shim.reading().to_json())
        steps.append(step)
    ctx.progress(f"scale: tearing down {len(present)} sandboxes")
    _, took = parallel(present, sizes.fill_threads,
                       lambda i: (ctx.shim.stop_sandbox(i), ctx.shim.remove(i)))
    teardown_rate = len(present) / took if present else None
    soak = _soak(ctx)
    first, last = steps[0], steps[-1]
    return {
        "steps": steps,
        "server_before": baseline.to_json(),
        "server_after_teardown": ctx.shim.reading().to_json(),
        "teardown_pods_per_s": teardown_rate,
        "soak": soak,
        "run_ratio_last_vs_first": ratio(last["run"]["median_ms"], first["run"]["median_ms"]),
        "raw_add_ratio_last_vs_first": ratio(last["raw_add"]["median_ms"],
                                             first["raw_add"]["median_ms"]),
        "seconds": time.monotonic() - started,
    }


def _measure(ctx: Context, present: list[str], rng: random.Random) -> dict[str, Any]:
    sizes = ctx.sizes
    runs, adds, statuses, lists = [], [], [], []
    raw_steps: dict[str, list[float]] = {}
    count = 0
    for i in range(sizes.scale_runs):
        sandbox_id, t_run = ctx.shim.run(f"scale-probe-{len(present)}-{i}")
        runs.append(t_run)
        ctx.shim.stop_sandbox(sandbox_id)
        ctx.shim.remove(sandbox_id)
        start = time.perf_counter()
        att = ctx.raw.add(f"scale-raw-{len(present)}-{i}")
        adds.append(time.perf_counter() - start)
        ctx.raw.delete(att)
        for k, v in att.steps.items():
            raw_steps.setdefault(k, []).append(v)
    # Status of a present pod (the probe pod when none is present yet).
    probe = None
    if not present:
        probe, _ = ctx.shim.run("scale-status-probe")
    log_mark = ctx.shim.log_offset()
    for _ in range(sizes.scale_status):
        statuses.append(ctx.shim.status(rng.choice(present) if present else probe)[1])
    if probe is not None:
        ctx.shim.stop_sandbox(probe)
        ctx.shim.remove(probe)
    for _ in range(sizes.scale_lists):
        count, t_list = ctx.shim.list()
        lists.append(t_list)
    handler = ctx.shim.handler_ms(log_mark)
    return {"run": summary(runs), "raw_add": summary(adds), "status": summary(statuses),
            "list": summary(lists), "listed": count,
            "raw_steps": {k: _brief(summary(v)) for k, v in raw_steps.items()},
            "list_handler": _brief(summary(handler.get("ListPodSandbox", []))),
            "status_handler": _brief(summary(handler.get("PodSandboxStatus", [])))}


def _soak(ctx: Context) -> list[dict[str, Any]]:
    """Fill and empty the server a few more times: RSS after each round should stay
    where it was (an allocator's high-water mark), not climb (a per-pod leak)."""
    rounds = []
    for r in range(ctx.sizes.soak_rounds):
        ctx.progress(f"scale: soak round {r + 1}/{ctx.sizes.soak_rounds} "
                     f"({ctx.sizes.soak_pods} pods in and out)")
        names = [f"soak-{r}-{i}" for i in range(ctx.sizes.soak_pods)]
        ids, _ = parallel(names, ctx.sizes.fill_threads, lambda n: ctx.shim.run(n)[0])
        full = ctx.shim.reading().to_json()
        parallel(ids, ctx.sizes.fill_threads, lambda i: (ctx.shim.stop_sandbox(i), ctx.shim.remove(i)))
        rounds.append({"pods": len(ids), "server_full": full,
                       "server_after": ctx.shim.reading().to_json()})
    return rounds


def _brief(s: dict[str, Any]) -> dict[str, Any]:
    s.pop("samples_ms", None)
    return s
