"""``--plot DIR``: latency distributions and scaling curves as PNGs.

matplotlib is optional: without it ``draw`` returns an empty list and the bench
says so. Every figure is drawn from the results dict alone (the same data as the
JSON), so a saved JSON can be re-plotted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def draw(results: dict[str, Any], out_dir: Path) -> list[str]:
    """Write the figures the results allow; returns their file names."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    made = []
    for name, fn in (("latency.png", _latency), ("concurrency.png", _concurrency),
                     ("scale.png", _scale), ("flannel.png", _flannel)):
        fig = fn(plt, results)
        if fig is not None:
            fig.tight_layout()
            fig.savefig(out_dir / name, dpi=110)
            plt.close(fig)
            made.append(name)
    return made


def _ecdf(ax: Any, samples: list[float], label: str) -> None:
    xs = sorted(samples)
    ax.step(xs, [(i + 1) / len(xs) for i in range(len(xs))], where="post", label=label)


def _latency(plt: Any, results: dict[str, Any]) -> Any:
    lat = results.get("latency") or {}
    if "run" not in lat:
        return None
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for ax, pairs, title in (
            (axes[0], (("run", "RunPodSandbox"), ("raw_add", "raw pin + ADD")), "create"),
            (axes[1], (("stop_remove", "Stop + Remove"), ("stop", "StopPodSandbox"),
                       ("raw_del", "raw DEL + unpin")), "teardown"),
            (axes[2], (("status", "PodSandboxStatus"), ("remove", "RemovePodSandbox")), "queries")):
        for key, label in pairs:
            if lat.get(key, {}).get("samples_ms"):
                _ecdf(ax, lat[key]["samples_ms"], f"{label} (median {lat[key]['median_ms']:.1f} ms)")
        ax.set(title=f"{title}: latency distribution", xlabel="ms", ylabel="fraction of calls")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[2].set_xscale("log")
    return fig


def _concurrency(plt: Any, results: dict[str, Any]) -> Any:
    batches = (results.get("concurrency") or {}).get("batches")
    if not batches:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    labels = [f"{b['pods']}x{b['threads']}" for b in batches]
    xs = range(len(batches))
    for ax, phase in ((axes[0], "create"), (axes[1], "teardown")):
        ax.bar([x - 0.2 for x in xs], [b["shim"][f"{phase}_pods_per_s"] for b in batches],
               width=0.4, label="cri-shim")
        ax.bar([x + 0.2 for x in xs], [b["raw"][f"{phase}_pods_per_s"] for b in batches],
               width=0.4, label="raw chain")
        ax.set_xticks(list(xs), labels)
        ax.set(title=f"{phase} throughput", xlabel="pods x client threads", ylabel="pods/s")
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=8)
    return fig


def _scale(plt: Any, results: dict[str, Any]) -> Any:
    steps = (results.get("scale") or {}).get("steps")
    if not steps:
        return None
    n = [s["existing"] for s in steps]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for key, label in (("run", "RunPodSandbox"), ("raw_add", "raw pin + ADD")):
        axes[0].plot(n, [s[key]["median_ms"] for s in steps], marker="o", label=label)
    axes[0].set(title="create latency (median) vs sandboxes present", xlabel="sandboxes", ylabel="ms")
    for key, label in (("status", "PodSandboxStatus"), ("list", "ListPodSandbox")):
        axes[1].plot(n, [s[key]["median_ms"] for s in steps], marker="o", label=label)
    axes[1].set(title="queries (median)", xlabel="sandboxes", ylabel="ms")
    axes[2].plot(n, [s["server"]["rss_mib"] for s in steps], marker="o", label="RSS MiB")
    axes[2].plot(n, [s["server"]["threads"] for s in steps], marker="s", label="threads")
    axes[2].plot(n, [s["server"]["fds"] for s in steps], marker="^", label="open fds")
    axes[2].set(title="cri-shim process", xlabel="sandboxes")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return fig


def _flannel(plt: Any, results: dict[str, Any]) -> Any:
    fl = results.get("flannel") or {}
    if not fl.get("available"):
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, cmd in ((axes[0], "add"), (axes[1], "del")):
        for side, label in (("flannel", "via flannel"), ("delegate", "delegate (bridge) alone")):
            s = fl[f"{side}_{cmd}"]
            _ecdf(ax, s["samples_ms"], f"{label} (median {s['median_ms']:.1f} ms)")
        ax.set(title=f"{cmd.upper()} latency", xlabel="ms", ylabel="fraction of calls")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return fig
