"""Throughput: N pods created, then torn down, by T client threads at once.

For each (pods, threads) the shim and the raw chain run the same batch, the side
that goes first alternating from one batch to the next. Create is RunPodSandbox
(shim) or pin + ADD (raw); teardown is Stop + Remove (shim) or DEL + unpin (raw).
pods/s is pods over the wall time of the phase. Every pod's IP is collected after
the create phase (outside the timing) and all must differ.
"""

from __future__ import annotations

import itertools
import threading
from typing import Any

from .context import Context, parallel
from .stats import ratio


def run(ctx: Context) -> dict[str, Any]:
    batches: list[dict[str, Any]] = []
    failures: list[str] = []
    flip = itertools.cycle((True, False))
    for pods in ctx.sizes.conc_pods:
        done: set[int] = set()
        for threads in ctx.sizes.conc_threads:
            threads_used = min(threads, pods)
            if threads_used in done:   # --quick with few pods: 8 and 32 clients are the same
                continue
            done.add(threads_used)
            ctx.progress(f"concurrency: {pods} pods, {threads_used} threads")
            sides = ("shim", "raw") if next(flip) else ("raw", "shim")
            batch: dict[str, Any] = {"pods": pods, "threads": threads_used}
            for side in sides:
                batch[side] = (_shim_batch if side == "shim" else _raw_batch)(ctx, pods, threads_used)
                if batch[side]["duplicate_ips"]:
                    failures.append(f"{side}: {pods} pods x {threads_used} threads: duplicate IPs "
                                    f"{batch[side]['duplicate_ips'][:5]}")
            batch["create_ratio"] = ratio(batch["shim"]["create_pods_per_s"],
                                          batch["raw"]["create_pods_per_s"])
            batch["teardown_ratio"] = ratio(batch["shim"]["teardown_pods_per_s"],
                                            batch["raw"]["teardown_pods_per_s"])
            batches.append(batch)
    return {"batches": batches, "failures": failures, "all_ips_unique": not failures}


def _outcome(pods: int, create_s: float, teardown_s: float, ips: list[str]) -> dict[str, Any]:
    seen: set[str] = set()
    dups = sorted({ip for ip in ips if ip in seen or seen.add(ip)})  # type: ignore[func-returns-value]
    missing = sum(1 for ip in ips if not ip)
    return {"create_s": create_s, "teardown_s": teardown_s,
            "create_pods_per_s": pods / create_s, "teardown_pods_per_s": pods / teardown_s,
            "duplicate_ips": dups + (["<none>"] * missing if missing else [])}


_counter = itertools.count()
_counter_lock = threading.Lock()


def _names(pods: int, prefix: str) -> list[str]:
    with _counter_lock:
        base = next(_counter)
    return [f"{prefix}-{base}-{i}" for i in range(pods)]


def _shim_batch(ctx: Context, pods: int, threads: int) -> dict[str, Any]:
    ids, t_create = parallel(_names(pods, "conc"), threads, lambda n: ctx.shim.run(n)[0])
    ips = [ctx.shim.ip(i) for i in ids]
    _, t_teardown = parallel(ids, threads, lambda i: (ctx.shim.stop_sandbox(i), ctx.shim.remove(i)))
    return _outcome(pods, t_create, t_teardown, ips)


def _raw_batch(ctx: Context, pods: int, threads: int) -> dict[str, Any]:
    atts, t_create = parallel(_names(pods, "conc-raw"), threads, ctx.raw.add)
    ips = [ctx.raw.pod_ip(a) for a in atts]
    _, t_teardown = parallel(atts, threads, ctx.raw.delete)
    return _outcome(pods, t_create, t_teardown, ips)
