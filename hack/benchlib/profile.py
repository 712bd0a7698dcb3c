"""Where cri-shim's time goes on RunPodSandbox and StopPodSandbox (``--profile DIR``).

py-spy samples the running server (every thread, idle ones included, so waiting on
a plugin counts as wall time) while the bench runs N pods one at a time through
Run, Stop and Remove. Each sample of a thread serving one of those calls (or of a
thread the server starts to attach or detach another network) is put in one
bucket: waiting on a plugin process, starting one (fork/exec), pinning the netns,
waiting for the other network's thread, gRPC, or else the innermost frame of our own
code (``cri_shim/``, ``cni/``) it is in. Bucket samples / rate / N = ms per call.

Two more views, written next to the folded stacks: the server's own log lines
(``cri X duration_ms`` and ``plugin=... duration_ms``) give, per call, the handler's
time, the plugin execs' time and the rest; and the client's round trip minus the
handler's time is the gRPC transport and client.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from .context import Context
from .stats import summary

RATE = 250
HANDLERS = {"RunPodSandbox": "run", "StopPodSandbox": "stop", "RemovePodSandbox": "remove",
            "PodSandboxStatus": "status"}
STATUS_PER_CYCLE = 10
_FRAME = re.compile(r"^(?P<func>.+?) \((?P<file>[^)]*)\)$")
_CALL_LINE = re.compile(r"cri (\w+) sandbox=(\w+) code=OK duration_ms=([\d.]+)")
_PLUGIN_LINE = re.compile(r"plugin=(\S+) command=(\w+) container=(\w+) ifname=(\S+) duration_ms=([\d.]+)")


def _py_spy() -> str | None:
    here = Path(sys.executable).parent / "py-spy"
    return str(here) if here.exists() else shutil.which("py-spy")


def run(ctx: Context, out_dir: Path, cycles: int) -> dict[str, Any]:
    out_dir.mkdir(parents=True, exist_ok=True)
    spy = _py_spy()
    for i in range(3):   # warm-up: the bridge, iptables chains, imports
        sid, _ = ctx.shim.run(f"prof-warm-{i}")
        ctx.shim.stop_sandbox(sid)
        ctx.shim.remove(sid)
    log_mark = ctx.shim.log_path.stat().st_size
    folded = out_dir / "cri-shim.folded"
    proc = None
    if spy:
        proc = subprocess.Popen([spy, "record", "--pid", str(ctx.shim.pid), "--rate", str(RATE),
                                 "--idle", "--nolineno", "--format", "raw", "-o", str(folded)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(1.0)   # attached
    ctx.progress(f"profile: {cycles} serial Run/Stop/Remove cycles"
                 f"{'' if spy else ' (py-spy not installed: log view only)'}")
    client: dict[str, list[float]] = defaultdict(list)
    ids = []
    for i in range(cycles):
        sid, t = ctx.shim.run(f"prof-{i}")
        client["run"].append(t)
        client["status"] += [ctx.shim.status(sid)[1] for _ in range(STATUS_PER_CYCLE)]
        client["stop"].append(ctx.shim.stop_sandbox(sid))
        client["remove"].append(ctx.shim.remove(sid))
        ids.append(sid)
    if proc is not None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
    result: dict[str, Any] = {"cycles": cycles, "rate_hz": RATE,
                              "client": {k: summary(v) for k, v in client.items()}}
    for s in result["client"].values():
        s.pop("samples_ms", None)
    log_text = ctx.shim.log_path.read_text(errors="replace")[log_mark:]
    result["from_log"] = _from_log(log_text, set(ids))
    if folded.exists():
        result["buckets_ms_per_call"] = _buckets(folded.read_text(), cycles)
        if "status" in result["buckets_ms_per_call"]:   # ten per cycle
            result["buckets_ms_per_call"]["status"] = {
                k: round(v / STATUS_PER_CYCLE, 3)
                for k, v in result["buckets_ms_per_call"]["status"].items()}
    (out_dir / "profile.json").write_text(json.dumps(result, indent=2) + "\n")
    (out_dir / "profile.txt").write_text(text(result) + "\n")
    return result


def _classify(frames: list[tuple[str, str]]) -> str:
    """The bucket of one stack (root first)."""
    funcs = [f for f, _ in frames]
    own = [(f, path) for f, path in frames if path.startswith(("cri_shim/", "cni/"))
           or "/cri_shim/" in path or "/cni/" in path]
    if any(path.endswith("netns.py") and f == "pin" for f, path in own):
        return "pin netns"
    if any(path.endswith("invoke.py") and f == "run" for f, path in own):
        if {"communicate", "_communicate", "wait", "_wait"} & set(funcs):
            return "plugin exec: waiting for the plugin"
        if {"__init__", "_execute_child"} & set(funcs):
            return "plugin exec: fork/exec (Popen)"
    if {"join", "_wait_for_tstate_lock"} & set(funcs):
        return "waiting for the other network's thread"
    if not own:
        return "outside our code (gRPC, threading)"
    leaf_func, leaf_path = own[-1]
    return f"{Path(leaf_path).name}:{leaf_func}"


def _buckets(folded: str, cycles: int) -> dict[str, dict[str, float]]:
    per: dict[str, Counter[str]] = defaultdict(Counter)
    for line in folded.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = []
        for part in stack.split(";"):
            m = _FRAME.match(part.strip())
            # py-spy names methods Class.method and closures outer.<locals>.inner
            func, path = (m["func"], m["file"]) if m else (part.strip(), "")
            frames.append((func.rsplit(".", 1)[-1], path))
        funcs = {f for f, _ in frames}
        call = next((HANDLERS[f] for f in funcs if f in HANDLERS), None)
        if call is None and any(p.endswith("podnet.py") for _, p in frames):
            # A thread RunPodSandbox/StopPodSandbox started for another network.
            if "add_network_list" in funcs:
                call = "run (other network's thread)"
            elif "del_network_list" in funcs:
                call = "stop (other network's thread)"
        if call is None:
            continue
        per[call][_classify(frames)] += int(count)
    return {call: {k: round(v / RATE / cycles * 1000.0, 2) for k, v in c.most_common()}
            for call, c in per.items()}


def _from_log(log_text: str, ids: set[str]) -> dict[str, Any]:
    """Per call: the handler's duration, the plugin execs' durations, and the rest."""
    handler: dict[str, list[float]] = defaultdict(list)
    plugins: dict[tuple[str, str], list[float]] = defaultdict(list)
    per_sandbox: dict[str, dict[str, float]] = defaultdict(dict)
    short = {i[:12]: i for i in ids}
    for line in log_text.splitlines():
        m = _CALL_LINE.search(line)
        if m and m[2] in short:
            handler[m[1]].append(float(m[3]))
            per_sandbox[short[m[2]]][m[1]] = float(m[3])
            continue
        m = _PLUGIN_LINE.search(line)
        if m and m[3] in ids:
            plugins[(m[2], m[1])].append(float(m[5]))
            key = f"{m[2]} {m[1]} {m[4]}"
            per_sandbox[m[3]][key] = per_sandbox[m[3]].get(key, 0.0) + float(m[5])
    out: dict[str, Any] = {
        "handler_median_ms": {k: statistics.median(v) for k, v in handler.items()},
        "plugin_median_ms": {f"{c} {p}": statistics.median(v) for (c, p), v in plugins.items()},
    }
    # Networks may be attached and detached concurrently: the critical path is the
    # longest network's chain.
    rest_run, rest_stop = [], []
    for d in per_sandbox.values():
        if "RunPodSandbox" in d:
            chain = d.get("ADD bridge eth0", 0.0) + d.get("ADD portmap eth0", 0.0)
            rest_run.append(d["RunPodSandbox"] - max(chain, d.get("ADD loopback lo", 0.0)))
        if "StopPodSandbox" in d:
            chain = d.get("DEL bridge eth0", 0.0) + d.get("DEL portmap eth0", 0.0)
            rest_stop.append(d["StopPodSandbox"] - max(chain, d.get("DEL loopback lo", 0.0)))
    if rest_run:
        out["run_handler_minus_plugin_critical_path_ms"] = statistics.median(rest_run)
    if rest_stop:
        out["stop_handler_minus_plugin_critical_path_ms"] = statistics.median(rest_stop)
    return out


def text(result: dict[str, Any]) -> str:
    lines = [f"{result['cycles']} serial cycles, py-spy at {result['rate_hz']} Hz"]
    for call, s in result["client"].items():
        lines.append(f"client {call}: median {s['median_ms']:.1f} ms, p95 {s['p95_ms']:.1f} ms")
    log = result["from_log"]
    for k, v in sorted(log.get("handler_median_ms", {}).items()):
        lines.append(f"server handler {k}: median {v:.1f} ms")
    for k, v in sorted(log.get("plugin_median_ms", {}).items()):
        lines.append(f"plugin {k}: median {v:.1f} ms")
    for k in ("run_handler_minus_plugin_critical_path_ms", "stop_handler_minus_plugin_critical_path_ms"):
        if k in log:
            lines.append(f"{k}: {log[k]:.1f} ms")
    for call, buckets in result.get("buckets_ms_per_call", {}).items():
        lines.append(f"\n{call} (ms per call, wall time of the thread):")
        lines += [f"  {ms:8.2f}  {name}" for name, ms in buckets.items() if ms >= 0.01]
    return "\n".join(lines)
