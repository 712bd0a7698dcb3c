"""What every part of the bench shares: the work dir, the server, the raw chain, the
sizes chosen on the command line, and progress lines on stderr."""

from __future__ import annotations

import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from .node import REPO, Work, bench_conflist, plugin_dir
from .rawchain import LOOPBACK_CONFLIST, Network, RawChain
from .shim import Shim


@dataclass(frozen=True, kw_only=True)
class Sizes:
    """How much each part does (``--quick`` and ``--pods`` pick these)."""

    pairs: int = 200                       # latency: A B pairs (pod cycles of each)
    warmup: int = 5                        # latency: pairs run first and not counted
    status_per_pod: int = 5                # latency: PodSandboxStatus calls per shim pod
    batch: int = 15                        # latency: pods made before the batch is torn down
    conc_pods: tuple[int, ...] = (60, 240)
    conc_threads: tuple[int, ...] = (1, 8, 32)
    scale_steps: tuple[int, ...] = (0, 250, 1000)
    scale_runs: int = 20                   # scale: Run (and raw ADD) samples per step
    scale_status: int = 100
    scale_lists: int = 20
    fill_threads: int = 8
    soak_rounds: int = 2                   # scale: fill and empty again, RSS each time
    soak_pods: int = 250
    flannel_pairs: int = 40
    image_layers: int = 5                  # images: the pulled image (issue 10: 50 MB, 5 layers)
    image_layer_mib: int = 10
    image_rounds: int = 5                  # images: interleaved pull / skopeo+umoci rounds
    image_repulls: int = 20                # images: pulls of the image already present
    container_rounds: int = 20             # containers: interleaved Create+Start / runc run rounds
    containers: int = 100                  # containers: running at once for the memory figures
    forward_mib: int = 100                 # streaming: MiB through one port forward

    @classmethod
    def quick(cls, pods: int = 40) -> "Sizes":
        n = max(1, pods)
        return cls(pairs=n, warmup=2, status_per_pod=3, batch=min(15, n), conc_pods=(n, 2 * n),
                   conc_threads=(1, 8, 32), scale_steps=(0, n, 4 * n),
                   scale_runs=max(3, n // 4), scale_status=max(10, n), scale_lists=max(3, n // 4),
                   soak_rounds=2, soak_pods=n,
                   flannel_pairs=max(3, n // 2), image_layers=2, image_layer_mib=2,
                   image_rounds=2, image_repulls=5, container_rounds=max(3, n // 8),
                   containers=max(5, n // 4), forward_mib=20)


@dataclass
class Context:
    work: Work
    shim: Shim
    raw: RawChain
    sizes: Sizes
    conflist: dict[str, Any]
    bin_dirs: tuple[str, ...]
    started: float = field(default_factory=time.monotonic)

    @classmethod
    def make(cls, work: Work, node_netns: str, sizes: Sizes,
             cni_options: tuple[str, ...] = (), shim_src: Path | None = None) -> "Context":
        conflist = bench_conflist(work.root)
        work.write_conflist(conflist)
        plugins = plugin_dir()
        assert plugins is not None
        bin_dirs = (plugins,)
        raw = RawChain([Network.from_conflist(LOOPBACK_CONFLIST, "lo"),
                        Network.from_conflist(json.loads(json.dumps(conflist)), "eth0")],
                       bin_dirs, str(work.raw_netns_dir))
        shim = Shim(work, node_netns, bin_dirs, cni_options, shim_src or REPO)
        return cls(work, shim, raw, sizes, conflist, bin_dirs)

    def progress(self, message: str) -> None:
        print(f"[{time.monotonic() - self.started:6.1f}s] {message}", file=sys.stderr, flush=True)


def parallel(items: Sequence[Any], threads: int, fn: Callable[[Any], Any]) -> tuple[list[Any], float]:
    """*fn* over *items* with *threads* workers: the results in order and the wall
    time. On an error or Ctrl-C the items not started yet are dropped, so the
    bench gets to its teardown without running the rest of a batch first."""
    start = time.perf_counter()
    pool = ThreadPoolExecutor(max_workers=threads)
    try:
        results = list(pool.map(fn, items))
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return results, time.perf_counter() - start
