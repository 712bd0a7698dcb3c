"""``hack/bench`` still works: a few pods through every part, and nothing left behind.

This keeps the benchmark harness from rotting between ``make bench`` runs. It checks
that every section is there and every part ran, never how fast anything was: times
on a shared 2-core machine say nothing about correctness.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.privileged

REPO = Path(__file__).resolve().parents[2]
LATENCY_CALLS = ("run", "status", "stop", "remove", "stop_remove", "raw_add", "raw_del")


def _bench_netns() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.startswith("crishim-bench-")}


def test_bench_quick_smoke(tmp_path: Path) -> None:
    before = _bench_netns()
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(REPO / "hack" / "bench"), "--quick", "--pods", "3",
                           "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}"
    assert "| metric" in proc.stdout and "| target" in proc.stdout

    doc = json.loads(out.read_text())
    for section in ("meta", "latency", "concurrency", "scale", "flannel", "leftovers", "table"):
        assert section in doc, f"no {section!r} section"
    for part in ("latency", "concurrency", "scale", "flannel", "images", "containers", "streaming"):
        assert not doc[part].get("error"), f"{part}: {doc[part].get('error')}"

    lat = doc["latency"]
    for call in LATENCY_CALLS:
        assert lat[call]["n"] >= 3 and len(lat[call]["samples_ms"]) == lat[call]["n"], call
    assert {"pin", "ADD bridge", "DEL bridge", "unpin"} <= set(lat["raw_steps"])
    assert set(lat["ratios"]) >= {"run_vs_add_median", "stop_remove_vs_del_median"}

    conc = doc["concurrency"]
    assert conc["all_ips_unique"] and not conc["failures"]
    assert {(b["pods"], b["threads"]) for b in conc["batches"]} == {(3, 1), (3, 3), (6, 1), (6, 6)}
    for b in conc["batches"]:
        assert {"shim", "raw", "create_ratio", "teardown_ratio"} <= set(b)

    scale = doc["scale"]
    assert [s["existing"] for s in scale["steps"]] == [0, 3, 12]
    for step in scale["steps"]:
        assert {"run", "raw_add", "status", "list", "server"} <= set(step)
        assert step["listed"] == step["existing"]
        assert step["server"]["rss_mib"] > 0
        assert step["server"]["total_pss_mib"] > 0
    assert [r["pods"] for r in scale["soak"]] == [3, 3]

    flannel = doc["flannel"]
    assert flannel["available"], flannel
    assert {"flannel_add", "delegate_add", "flannel_del", "delegate_del",
            "added_add_median_ms"} <= set(flannel)

    images = doc["images"]
    assert images["pull"]["median_ms"] > 0 and images["skopeo_umoci"]["median_ms"] > 0
    assert images["repull"]["median_ms"] > 0 and images["ratio"] > 0

    containers = doc["containers"]
    assert containers["ratio"] > 0 and containers["pod_ratio"] > 0 and containers["running"] > 0
    streaming = doc["streaming"]
    assert streaming["exec_sync_ratio"] > 0 and streaming["exec_stream_ratio"] > 0
    assert streaming["forward_ratio"] > 0 and streaming["forward"]["n"] >= 2

    assert doc["leftovers"] == {}
    assert all({"metric", "value", "target", "ok"} <= set(row) for row in doc["table"])
    # The supervisor removed its node namespace.
    assert _bench_netns() <= before
