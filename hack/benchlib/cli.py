"""``hack/bench``: the command line, and the run inside the node netns."""

from __future__ import annotations

import argparse
import math
import os
import platform
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any, Sequence

from . import concurrency, containerspart, flannelpart, imagespart, latency, report, scale, streamingpart
from .context import Context, Sizes
from .node import NETWORK, REPO, Work, supervise, veths
from .rawchain import RawChain

PARTS: dict[str, ModuleType] = {"latency": latency, "concurrency": concurrency,
                                "scale": scale, "flannel": flannelpart, "images": imagespart,
                                "containers": containerspart, "streaming": streamingpart}


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="hack/bench",
        description="cri-shim against the raw CNI chain (bridge + host-local + loopback + "
                    "portmap), all inside a throwaway node netns it removes afterwards. Run as root.",
        epilog="Full run: 200 latency pairs, 60/240 pods x 1/8/32 clients, scale 0/250/1000, "
               "40 flannel pairs. --quick: N pairs, N/2N pods, scale 0/N/4N (N = --pods, 40).")
    p.add_argument("--quick", action="store_true", help="a reduced run (under two minutes)")
    p.add_argument("--pods", type=int, metavar="N",
                   help="latency pairs (default 200); with --quick every size derives from N")
    p.add_argument("--parts", default=",".join(PARTS), metavar="LIST",
                   help=f"comma-separated subset of {','.join(PARTS)}")
    p.add_argument("--json", metavar="FILE", help="write every number to FILE")
    p.add_argument("--plot", metavar="DIR", help="draw PNGs into DIR (needs matplotlib)")
    p.add_argument("--profile", metavar="DIR",
                   help="instead of the parts: profile the server with py-spy over --pods "
                        "serial Run/Stop/Remove cycles (default 100) and write the report to DIR")
    p.add_argument("--shim-cni", action="append", default=[], metavar="KEY=VALUE",
                   help="a TOML line added to cri-shim's CNI table, to measure a setting "
                        "(e.g. use_internal_loopback=true, setup_serially=true); repeatable")
    p.add_argument("--shim-src", metavar="DIR",
                   help="run cri-shim from this checkout (a worktree with a candidate change) "
                        "instead of this one; the raw chain is the same")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs) afterwards")
    p.add_argument("--inside", metavar="DIR", help=argparse.SUPPRESS)
    p.add_argument("--node", metavar="NAME", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    unknown = set(args.parts.split(",")) - set(PARTS)
    if unknown:
        p.error(f"unknown part(s): {', '.join(sorted(unknown))}")
    if args.pods is not None and args.pods < 1:
        p.error("--pods must be at least 1")
    return args


def main(argv: Sequence[str] | None = None, *, script: str | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.inside is None:
        return supervise(script or str(REPO / "hack" / "bench"), argv, keep=args.keep)
    return _inside(args)


def _sizes(args: argparse.Namespace) -> Sizes:
    if args.quick:
        return Sizes.quick(args.pods or 40)
    return Sizes(pairs=args.pods) if args.pods else Sizes()


def _inside(args: argparse.Namespace) -> int:
    def interrupted(_signum: int, _frame: Any) -> None:
        # Once: Ctrl-C reaches us from the terminal and from the supervisor, and
        # the teardown that follows must not be interrupted in its turn.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise KeyboardInterrupt
    signal.signal(signal.SIGINT, interrupted)
    signal.signal(signal.SIGTERM, interrupted)
    # --inside is the half that runs plugins: refuse anywhere but the node namespace,
    # so bridge and iptables can never land in the host's.
    if os.stat("/proc/self/ns/net").st_ino != os.stat(f"/var/run/netns/{args.node}").st_ino:
        print(f"bench --inside: not running in the network namespace {args.node}", file=sys.stderr)
        return 2
    work = Work(Path(args.inside))
    ctx = Context.make(work, f"/var/run/netns/{args.node}", _sizes(args),
                       tuple(o.replace("=", " = ", 1) for o in args.shim_cni),
                       Path(args.shim_src).resolve() if args.shim_src else None)
    started = time.monotonic()
    results: dict[str, Any] = {"meta": _meta(ctx)}
    failed = False
    try:
        ctx.shim.start()
        if args.profile:
            from . import profile
            results["profile"] = profile.run(ctx, Path(args.profile), args.pods or 100)
        else:
            for name in args.parts.split(","):
                results[name] = _part(ctx, name)
                failed |= bool(results[name].get("error"))
    except KeyboardInterrupt:
        ctx.progress("interrupted: tearing down")
        _teardown(ctx)
        return 130
    except Exception:
        traceback.print_exc()
        failed = True
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    results["leftovers"] = _teardown(ctx)
    results["meta"]["seconds"] = time.monotonic() - started
    results["meta"]["loadavg_end"] = os.getloadavg()[0]
    if results["leftovers"]:
        print(f"bench: left behind: {results['leftovers']}", file=sys.stderr)
        failed = True
    if results.get("concurrency", {}).get("failures"):
        failed = True
    rows = report.rows(results)
    if "profile" in results:
        from . import profile
        print(profile.text(results["profile"]))
    else:
        print(report.table(rows))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(report.to_json(_finite(results), rows) + "\n")
    if args.plot:
        from . import plot
        made = plot.draw(results, Path(args.plot))
        print(f"plots: {', '.join(made) if made else 'none (matplotlib is not importable)'}",
              file=sys.stderr)
    print(f"bench: {results['meta']['seconds']:.0f} s", file=sys.stderr)
    return 1 if failed else 0


def _part(ctx: Context, name: str) -> dict[str, Any]:
    start = time.monotonic()
    try:
        out = PARTS[name].run(ctx)
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        traceback.print_exc()
        out = {"error": f"{type(exc).__name__}: {exc}", "shim_log": ctx.shim.log_tail(15)}
    out.setdefault("seconds", time.monotonic() - start)
    # Every part leaves nothing: a failure must not skew the next part.
    left = RawChain.delete_all()
    if left:
        ctx.progress(f"{name}: deleted {left} raw-chain pods it left")
    if ctx.shim.channel is not None:
        try:
            left = ctx.shim.remove_all()
            if left:
                ctx.progress(f"{name}: removed {left} sandboxes it left")
        except Exception as exc:  # noqa: BLE001
            ctx.progress(f"{name}: cleanup through cri-shim failed: {exc}")
    return out


def _teardown(ctx: Context) -> dict[str, Any]:
    """Remove every sandbox through the server and every raw-chain pod, stop the
    server, and say what is left."""
    left = RawChain.delete_all()
    if left:
        ctx.progress(f"deleted {left} raw-chain pods a failure or Ctrl-C left")
    try:
        if ctx.shim.channel is not None:
            ctx.shim.remove_all()
    except Exception as exc:  # noqa: BLE001
        print(f"bench: removing sandboxes through cri-shim failed: {exc}", file=sys.stderr)
    ctx.shim.stop()
    found = {"netns": ctx.work.pinned(), "ip": ctx.work.ip_files(NETWORK),
             "veth": veths()}
    results_dir = ctx.work.cache_dir / "results"
    if results_dir.is_dir():
        found["cni_cache"] = [p.name for p in results_dir.iterdir()]
    return {k: v for k, v in found.items() if v}


def _meta(ctx: Context) -> dict[str, Any]:
    def out(*cmd: str) -> str:
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
            return (proc.stdout + proc.stderr).strip()
        except OSError:
            return ""
    version = out("dpkg-query", "-W", "-f", "${Package} ${Version}", "containernetworking-plugins")
    return {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "cpus": os.cpu_count(),
            "loadavg_start": os.getloadavg()[0],
            "kernel": platform.release(), "python": platform.python_version(),
            "plugins": version.splitlines()[0] if version else ctx.bin_dirs[0],
            "iptables": out("iptables", "--version"),
            "commit": out("git", "-C", str(REPO), "rev-parse", "--short", "HEAD"),
            "conflist": ctx.conflist, "sizes": ctx.sizes.__dict__,
            "shim_cni_options": list(ctx.shim.cni_options), "shim_src": str(ctx.shim.src)}


def _finite(obj: Any) -> Any:
    """NaN and infinities become null (strict JSON)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj
