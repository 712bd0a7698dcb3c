"""Summaries of samples, and what /proc says about the server."""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from typing import Any, Sequence


def percentile(samples: Sequence[float], q: float) -> float:
    """The *q*-th percentile (0..100), linear between closest ranks (numpy's default)."""
    if not samples:
        return math.nan
    xs = sorted(samples)
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summary(samples_s: Sequence[float]) -> dict[str, Any]:
    """n, median, p95, p99, min, max and mean in milliseconds, plus the samples."""
    ms = [s * 1000.0 for s in samples_s]
    if not ms:
        return {"n": 0}
    return {"n": len(ms), "median_ms": percentile(ms, 50), "p95_ms": percentile(ms, 95),
            "p99_ms": percentile(ms, 99), "min_ms": min(ms), "max_ms": max(ms),
            "mean_ms": sum(ms) / len(ms), "samples_ms": [round(x, 3) for x in ms]}


def ratio(a: float, b: float) -> float:
    return a / b if b and not math.isnan(a) and not math.isnan(b) else math.nan


@dataclass(frozen=True)
class ProcReading:
    rss_mib: float           # the server process
    fds: int
    threads: int
    children: int            # its child processes (a helper, or a process per pod)
    total_pss_mib: float     # PSS of the server and its children: what they cost
                             # together (shared pages counted once, not twice)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _status(pid: int) -> tuple[int, int]:
    """(VmRSS in KiB, threads) of *pid*."""
    rss_kib, threads = 0, 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss_kib = int(line.split()[1])
            elif line.startswith("Threads:"):
                threads = int(line.split()[1])
    return rss_kib, threads


def read_proc(pid: int) -> ProcReading:
    """VmRSS, open fds and threads of *pid*, and its child processes (a per-pod
    shim process would show here; a plugin still running is counted too)."""
    rss_kib, threads = _status(pid)
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    children: list[int] = []
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                children += [int(c) for c in f.read().split()]
        except OSError:
            pass
    total = 0
    for p in (pid, *children):
        try:
            total += _pss_kib(p)
        except OSError:
            pass
    return ProcReading(round(rss_kib / 1024.0, 1), fds, threads, len(children),
                       round(total / 1024.0, 1))


def _pss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return 0
