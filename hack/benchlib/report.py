"""The targets of issues 5 and 8, checked against the results, as a table and as JSON."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class Row:
    metric: str
    value: str
    target: str = ""
    ok: bool | None = None       # None: informational, no target

    @property
    def verdict(self) -> str:
        return "" if self.ok is None else ("yes" if self.ok else "NO")


def _ms(x: float) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{x:.1f} ms" if x >= 10 else f"{x:.2f} ms"


def _x(x: float) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{x:.2f}x"


def _check(value: float | None, test: Callable[[float], bool]) -> bool | None:
    return None if value is None or math.isnan(value) else test(value)


def rows(results: dict[str, Any]) -> list[Row]:
    """Every line of the table: targets first within each part, then the numbers
    they come from."""
    out: list[Row] = []
    meta = results.get("meta") or {}
    if "loadavg_start" in meta:
        out.append(Row("machine: 1-min load average at start / end",
                       f"{meta['loadavg_start']:.1f} / {meta.get('loadavg_end', math.nan):.1f} "
                       f"on {meta.get('cpus')} CPUs"))
    lat = results.get("latency")
    if lat and "run" in lat:
        r = lat["ratios"]
        out += [
            Row("RunPodSandbox median / raw ADD median",
                f"{_x(r['run_vs_add_median'])} ({_ms(lat['run']['median_ms'])} vs "
                f"{_ms(lat['raw_add']['median_ms'])})", "<= 1.00x",
                _check(r["run_vs_add_median"], lambda v: v <= 1.00)),
            Row("RunPodSandbox p99 / raw ADD p99",
                f"{_x(r['run_vs_add_p99'])} ({_ms(lat['run']['p99_ms'])} vs "
                f"{_ms(lat['raw_add']['p99_ms'])})", "<= 1.5x",
                _check(r["run_vs_add_p99"], lambda v: v <= 1.5)),
            Row("Stop+Remove median / raw DEL median",
                f"{_x(r['stop_remove_vs_del_median'])} ({_ms(lat['stop_remove']['median_ms'])} vs "
                f"{_ms(lat['raw_del']['median_ms'])})", "<= 1.05x",
                _check(r["stop_remove_vs_del_median"], lambda v: v <= 1.05)),
            Row("PodSandboxStatus median", _ms(lat["status"]["median_ms"]), "< 1 ms",
                _check(lat["status"]["median_ms"], lambda v: v < 1.0)),
        ]
        if "trace_recording" in lat:
            rec = lat["trace_recording"]
            out.append(Row("trace recording per RunPodSandbox (the server's own count), median / p99",
                           f"{rec['median_ms']:.3f} / {rec['p99_ms']:.3f} ms", "<= 0.5 ms",
                           _check(rec["median_ms"], lambda v: v <= 0.5)))
        for key, label in (("run", "RunPodSandbox"), ("status", "PodSandboxStatus"),
                           ("stop", "StopPodSandbox"), ("remove", "RemovePodSandbox"),
                           ("stop_remove", "Stop+Remove"), ("version", "Version (gRPC floor)"),
                           ("raw_add", "raw chain pin+ADD"), ("raw_del", "raw chain DEL+unpin")):
            if key not in lat:
                continue
            s = lat[key]
            out.append(Row(f"{label} median / p95 / p99",
                           f"{_ms(s['median_ms'])} / {_ms(s['p95_ms'])} / {_ms(s['p99_ms'])}"))
        handler = lat.get("server_handler") or {}
        if handler:
            out.append(Row("server handler median: Run / Status / Stop / Remove",
                           " / ".join(_ms(handler.get(m, {}).get("median_ms", math.nan))
                                      for m in ("RunPodSandbox", "PodSandboxStatus",
                                                "StopPodSandbox", "RemovePodSandbox"))))
        steps = lat.get("raw_steps") or {}
        if steps:
            out.append(Row("raw chain steps median",
                           ", ".join(f"{k} {v['median_ms']:.1f}" for k, v in steps.items())
                           + " ms"))
        plugins = lat.get("server_plugins") or {}
        if plugins:
            out.append(Row("plugin execs in the server, median",
                           ", ".join(f"{k} {v['median_ms']:.1f}" for k, v in plugins.items())
                           + " ms"))
    conc = results.get("concurrency")
    if conc and "batches" in conc:
        for b in conc["batches"]:
            target = b["threads"] >= 8
            out.append(Row(f"create pods/s, {b['pods']} pods x {b['threads']} clients",
                           f"{b['shim']['create_pods_per_s']:.1f} vs raw "
                           f"{b['raw']['create_pods_per_s']:.1f} ({_x(b['create_ratio'])})",
                           ">= 0.9x" if target else "",
                           _check(b["create_ratio"], lambda v: v >= 0.9) if target else None))
            out.append(Row(f"teardown pods/s, {b['pods']} pods x {b['threads']} clients",
                           f"{b['shim']['teardown_pods_per_s']:.1f} vs raw "
                           f"{b['raw']['teardown_pods_per_s']:.1f} ({_x(b['teardown_ratio'])})"))
        out.append(Row("all pod IPs unique", "yes" if conc["all_ips_unique"] else "NO", "yes",
                       conc["all_ips_unique"]))
    scale = results.get("scale")
    if scale and scale.get("steps"):
        first, last = scale["steps"][0], scale["steps"][-1]
        n = last["existing"]
        out += [
            Row(f"ListPodSandbox median at {n}", _ms(last["list"]["median_ms"]), "< 20 ms",
                _check(last["list"]["median_ms"], lambda v: v < 20.0)),
            Row(f"RunPodSandbox median at {n} / at {first['existing']}",
                f"{_x(scale['run_ratio_last_vs_first'])} ({_ms(last['run']['median_ms'])} vs "
                f"{_ms(first['run']['median_ms'])}; raw ADD {_x(scale['raw_add_ratio_last_vs_first'])})",
                "<= 1.1x", _check(scale["run_ratio_last_vs_first"], lambda v: v <= 1.1)),
            Row(f"(Run / raw ADD) at {n} vs at {first['existing']}",
                f"{_x(ratio_of_ratios(first, last))} (cri-shim's own scaling, plugin growth "
                f"divided out)", "<= 1.1x", _check(ratio_of_ratios(first, last), lambda v: v <= 1.1)),
            Row(f"server RSS at {n} sandboxes",
                f"{last['server']['rss_mib']:.1f} MiB (PSS with its child processes "
                f"{last['server']['total_pss_mib']:.1f} MiB)", "<= 80 MiB",
                max(last["server"]["rss_mib"], last["server"]["total_pss_mib"]) <= 80.0),
            Row(f"server child processes at {first['existing']} / {n}",
                f"{first['server']['children']} / {last['server']['children']}",
                "no process per pod", last["server"]["children"] <= max(first["server"]["children"], 1)),
        ]
        for s in scale["steps"]:
            raw_steps = s.get("raw_steps") or {}
            out.append(Row(f"at {s['existing']}: Run - raw ADD (cri-shim's own share)",
                           f"{s['run']['median_ms'] - s['raw_add']['median_ms']:+.1f} ms "
                           f"(raw ADD {_ms(s['raw_add']['median_ms'])}: " + ", ".join(
                               f"{k.replace('ADD ', '')} {v['median_ms']:.1f}"
                               for k, v in raw_steps.items() if k.startswith(("ADD", "pin")))
                           + ")"))
            out.append(Row(f"at {s['existing']}: Run / Status / List median",
                           f"{_ms(s['run']['median_ms'])} / {_ms(s['status']['median_ms'])} / "
                           f"{_ms(s['list']['median_ms'])} (List in the server: "
                           f"{_ms(s.get('list_handler', {}).get('median_ms', math.nan))})"))
            out.append(Row(f"at {s['existing']}: RSS, fds, threads",
                           f"{s['server']['rss_mib']:.1f} MiB, {s['server']['fds']}, "
                           f"{s['server']['threads']}"))
        out.append(Row("RSS after teardown", f"{scale['server_after_teardown']['rss_mib']:.1f} MiB"))
        soak = scale.get("soak") or []
        if soak:
            growth = soak[-1]["server_after"]["rss_mib"] - scale["server_after_teardown"]["rss_mib"]
            out.append(Row(f"RSS after {len(soak)} more fill/empty rounds of {soak[0]['pods']}",
                           " -> ".join(f"{r['server_after']['rss_mib']:.1f}" for r in soak)
                           + f" MiB ({growth:+.1f})", "flat (< +2 MiB)", growth < 2.0))
    fl = results.get("flannel")
    if fl:
        if fl.get("available"):
            out.append(Row("flannel ADD median - delegate ADD median",
                           f"{fl['added_add_median_ms']:+.1f} ms ({_ms(fl['flannel_add']['median_ms'])} "
                           f"vs {_ms(fl['delegate_add']['median_ms'])})", "<= 25 ms",
                           fl["added_add_median_ms"] <= 25.0))
            out.append(Row("flannel DEL median - delegate DEL median",
                           f"{fl['added_del_median_ms']:+.1f} ms", "<= 25 ms",
                           fl["added_del_median_ms"] <= 25.0))
            out.append(Row("flannel VERSION exec (start-up) median",
                           _ms(fl["flannel_version_exec"]["median_ms"])))
        elif "reason" in fl:
            out.append(Row("flannel plugin", f"not available yet: {fl['reason']}", "<= 25 ms", None))
    im = results.get("images")
    if im and "pull" in im:
        out += [
            Row(f"PullImage ({im['image_mib']} MiB, {im['layers']} layers) / skopeo copy + umoci unpack",
                f"{_x(im['ratio'])} ({_ms(im['pull']['median_ms'])} vs "
                f"{_ms(im['skopeo_umoci']['median_ms'])})", "<= 1.00x",
                _check(im["ratio"], lambda v: v <= 1.0)),
            Row("PullImage of an image already present, median", _ms(im["repull"]["median_ms"]),
                "<= 10 ms", _check(im["repull"]["median_ms"], lambda v: v <= 10.0)),
        ]
    ct = results.get("containers")
    if ct and "create_start" in ct:
        out += [
            Row("CreateContainer+StartContainer median / runc run -d median",
                f"{_x(ct['ratio'])} ({_ms(ct['create_start']['median_ms'])} vs "
                f"{_ms(ct['runc_run']['median_ms'])})", "<= 1.30x",
                _check(ct["ratio"], lambda v: v <= 1.3)),
            Row("a pod: Run+Create+Start median / raw ADD + runc run -d median",
                f"{_x(ct['pod_ratio'])} ({_ms(ct['pod']['median_ms'])} vs "
                f"{_ms(ct['raw_pod']['median_ms'])})"),
            Row(f"memory per running container ({ct['running']} running): conmon + server "
                "/ containerd's shim (13 MiB)",
                f"{_x(ct['vs_containerd_shim'])} ({ct['conmon_rss_mib']:.1f} + "
                f"{ct['server_mib_per_container']:.2f} MiB)", "<= 1.00x",
                _check(ct["vs_containerd_shim"], lambda v: v <= 1.0)),
            Row(f"server RSS with {ct['running']} running containers", f"{ct['server_rss_mib']:.0f} MiB"),
            Row(f"ListContainers with {ct['running']} containers", _ms(ct["list_ms"])),
        ]
    st = results.get("streaming")
    if st and "exec_sync" in st:
        out += [
            Row("ExecSync of true median / runc exec median",
                f"{_x(st['exec_sync_ratio'])} ({_ms(st['exec_sync']['median_ms'])} vs "
                f"{_ms(st['runc_exec']['median_ms'])})", "<= 1.30x",
                _check(st["exec_sync_ratio"], lambda v: v <= 1.3)),
            Row("streaming exec of true (SPDY) median / runc exec median",
                f"{_x(st['exec_stream_ratio'])} ({_ms(st['exec_stream']['median_ms'])})", "<= 1.30x",
                _check(st["exec_stream_ratio"], lambda v: v <= 1.3)),
            Row(f"port forward of {st['forward_mib']} MiB: throughput / direct TCP into the pod",
                f"{_x(st['forward_ratio'])} ({_ms(st['forward']['median_ms'])} vs "
                f"{_ms(st['direct']['median_ms'])})", ">= 0.50x",
                _check(st["forward_ratio"], lambda v: v >= 0.5)),
        ]
    for part, res in results.items():
        if isinstance(res, dict) and res.get("error"):
            out.append(Row(f"{part} part", f"FAILED: {res['error']}", "runs", False))
    return out


def ratio_of_ratios(first: dict[str, Any], last: dict[str, Any]) -> float:
    """(Run/ADD at the last step) / (Run/ADD at the first): how much more cri-shim's
    Run grows than the plugins' own ADD does."""
    try:
        return ((last["run"]["median_ms"] / last["raw_add"]["median_ms"])
                / (first["run"]["median_ms"] / first["raw_add"]["median_ms"]))
    except (KeyError, ZeroDivisionError, TypeError):
        return math.nan


def table(all_rows: list[Row]) -> str:
    """A Markdown table: metric | value | target | ok?"""
    header = ("metric", "value", "target", "ok?")
    cells = [header] + [(r.metric, r.value, r.target, r.verdict) for r in all_rows]
    widths = [max(len(c[i]) for c in cells) for i in range(4)]
    lines = ["| " + " | ".join(c[i].ljust(widths[i]) for i in range(4)) + " |" for c in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def to_json(results: dict[str, Any], all_rows: list[Row]) -> str:
    doc = dict(results)
    doc["table"] = [asdict(r) for r in all_rows]
    return json.dumps(doc, indent=2, default=str, allow_nan=True)
