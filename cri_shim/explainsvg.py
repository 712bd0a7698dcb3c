"""``cri-shim ctl explain --svg FILE``: the trace as a sequence picture (kubelet ->
cri-shim -> netns -> each plugin -> IPAM -> the IP), each step with its time. Plain
SVG written here: lifelines, arrows, labels; no library needed for that."""

from __future__ import annotations

import json
from typing import Any
from xml.sax.saxutils import escape

__all__ = ["render_svg"]

COL, ROW, TOP, LEFT = 170, 36, 70, 90


def render_svg(report: dict[str, Any]) -> str:
    sb = report["sandbox"]
    actors = ["kubelet", "cri-shim"]
    messages: list[tuple[str, str, str, bool]] = []   # from, to, label, dashed (inferred or a reply)

    def actor(name: str) -> str:
        if name not in actors:
            actors.append(name)
        return name

    for key in ("run", "stop"):
        trace = report["trace"].get(key)
        if not isinstance(trace, dict) or not trace:
            continue
        op = trace.get("operation", key)
        messages.append(("kubelet", "cri-shim", op, False))
        for step in trace.get("steps", []):
            if not isinstance(step, dict):
                continue
            at, took = f"+{float(step.get('at_ms', 0)):.1f} ms", float(step.get("ms", 0))
            if step.get("kind") == "netns":
                messages.append(("cri-shim", actor("netns"), f"{at} {step.get('action')} ({took:.1f} ms)", False))
                continue
            plugin = actor(str(step.get("plugin", "?")))
            command = step.get("command", "?")
            messages.append(("cri-shim", plugin, f"{at} {command} {step.get('ifname', '')} "
                             f"({took:.1f} ms)", False))
            ipam, delegate = _ipam_type(step)
            ips = _ips(step.get("output", ""))
            runner = plugin
            if delegate:   # flannel: its delegate (bridge) runs the IPAM
                runner = actor(f"{delegate} (delegate)")
                messages.append((plugin, runner, f"{command} (run by {plugin})", True))
            if ipam:
                name = actor(f"IPAM ({ipam})")
                messages.append((runner, name, f"{command} (run by {runner.split()[0]})", True))
                if ips:
                    messages.append((name, runner, ", ".join(ips), True))
            if runner != plugin:
                messages.append((runner, plugin, ", ".join(ips) if ips else str(step.get("outcome")), True))
            reply = ", ".join(ips) if ips else str(step.get("outcome"))
            messages.append((plugin, "cri-shim", reply, True))
        outcome = trace.get("outcome") or {}
        done = f"{trace.get('ms', 0):.1f} ms"
        if "error" in outcome:
            label = f"error ({done})"
        elif key == "run":
            label = f"IP {', '.join(outcome.get('ips', [])) or 'none'} ({done})"
        else:
            label = f"stopped ({done})"
        messages.append(("cri-shim", "kubelet", label, True))

    width = LEFT + COL * len(actors)
    height = TOP + ROW * (len(messages) + 1) + 20
    x = {a: LEFT + COL * i for i, a in enumerate(actors)}
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
           '<defs><marker id="a" markerWidth="8" markerHeight="8" refX="7" refY="4" orient="auto">'
           '<path d="M0,0 L8,4 L0,8 z" fill="#333"/></marker></defs>',
           f'<text x="10" y="20" font-size="14" font-weight="bold">{escape(_title(sb))}</text>']
    for a in actors:
        out.append(f'<rect x="{x[a] - 60}" y="32" width="120" height="24" rx="4" fill="#eef" stroke="#558"/>')
        out.append(f'<text x="{x[a]}" y="48" text-anchor="middle">{escape(a)}</text>')
        out.append(f'<line x1="{x[a]}" y1="56" x2="{x[a]}" y2="{height - 10}" stroke="#99a" stroke-dasharray="2,3"/>')
    for i, (src, dst, label, dashed) in enumerate(messages):
        y = TOP + ROW * (i + 1)
        dash = ' stroke-dasharray="5,3"' if dashed else ""
        out.append(f'<line x1="{x[src]}" y1="{y}" x2="{x[dst]}" y2="{y}" stroke="#333"{dash} '
                   'marker-end="url(#a)"/>')
        mid = (x[src] + x[dst]) / 2
        out.append(f'<text x="{mid:.0f}" y="{y - 5}" text-anchor="middle">{escape(label)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _title(sb: dict[str, Any]) -> str:
    return (f"How pod {sb['namespace']}/{sb['name']} (sandbox {sb['id'][:12]}) got its IP"
            + (f": {sb['ip']}" if sb.get("ip") else ""))


def _ipam_type(step: dict[str, Any]) -> tuple[str, str]:
    """The IPAM plugin the exec's plugin runs (not seen by us: inferred from its
    config), and the delegate between them (flannel's)."""
    try:
        conf = json.loads(step.get("stdin", ""))
    except (TypeError, ValueError):
        return "", ""
    if not isinstance(conf, dict):
        return "", ""
    if conf.get("type") == "flannel":
        delegate = conf.get("delegate") if isinstance(conf.get("delegate"), dict) else {}
        ipam = conf.get("ipam") if isinstance(conf.get("ipam"), dict) else {}
        return str(ipam.get("type", "host-local")), str(delegate.get("type", "bridge"))
    ipam = conf.get("ipam")
    return (str(ipam.get("type", "")) if isinstance(ipam, dict) else ""), ""


def _ips(output: str) -> list[str]:
    try:
        result = json.loads(output)
    except (TypeError, ValueError):
        return []
    if not isinstance(result, dict):
        return []
    return [str(i.get("address")) for i in result.get("ips", []) if isinstance(i, dict) and i.get("address")]
