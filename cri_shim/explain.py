"""``cri-shim ctl explain POD``: how one pod got its IP, from what really happened.

The server recorded each sandbox's trace (``cri_shim.trace``: the config read, the conf
dir's files and what became of each, every plugin exec with its environment, stdin,
output and time) and hands it out in ``PodSandboxStatus``'s verbose info. Here it is
joined with what the node shows now, looked at directly (ctl runs on the node, as
root): the pod's addresses and routes inside its netns, the gateway on the node's
bridge and, when flannel is in the chain, the node's ``subnet.env``, the delegate
config flannel saved, and the overlay routes to the other nodes' podCIDRs.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from typing import Any

from .api import api_pb2 as pb
from .ctlprint import CtlError

__all__ = ["resolve", "gather", "render_text"]

FLANNEL_SUBNET_FILE = "/run/flannel/subnet.env"   # the flannel plugin's defaults
FLANNEL_DATA_DIR = "/var/lib/cni/flannel"


def resolve(client: Any, ref: str) -> str:
    """The sandbox *ref* names: an id, a unique id prefix, a pod name or
    ``namespace/name`` (the newest attempt when there are several)."""
    items = client.ListPodSandbox(pb.ListPodSandboxRequest()).items
    exact = [i for i in items if i.id == ref]
    if exact:
        return exact[0].id
    # A pod name before an id prefix: a short name such as "db" or "cafe" is also
    # the start of some hex id.
    by_prefix = [i for i in items if i.id.startswith(ref)]
    namespace, _, name = ref.rpartition("/")
    by_name = [i for i in items if i.metadata.name == name and namespace in ("", i.metadata.namespace)]
    if by_name:
        namespaces = {i.metadata.namespace for i in by_name}
        if len(namespaces) > 1:
            raise CtlError(f'pod name "{ref}" is in several namespaces ({", ".join(sorted(namespaces))}): '
                           "say namespace/name")
        return max(by_name, key=lambda i: (i.metadata.attempt, i.created_at)).id
    if len(by_prefix) == 1:
        return by_prefix[0].id
    if len(by_prefix) > 1:
        raise CtlError(f'"{ref}" is the start of {len(by_prefix)} sandbox ids: give more of it')
    raise CtlError(f'no sandbox with id, id prefix or pod name "{ref}"')


def gather(client: Any, sandbox_id: str) -> dict[str, Any]:
    """The report: the sandbox, its recorded trace and what the node shows now."""
    st = client.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id, verbose=True))
    info = json.loads(st.info.get("info", "{}"))
    s = st.status
    report: dict[str, Any] = {
        "sandbox": {"id": s.id, "name": s.metadata.name, "namespace": s.metadata.namespace,
                    "attempt": s.metadata.attempt,
                    "state": "READY" if s.state == pb.SANDBOX_READY else "NOTREADY",
                    "ip": s.network.ip, "additional_ips": [i.ip for i in s.network.additional_ips],
                    "netns": info.get("netNamespacePath", ""), "host_network": info.get("hostNetwork", False)},
        "trace": info.get("trace", {}),
    }
    report["now"] = observe(report)
    return report


def observe(report: dict[str, Any]) -> dict[str, Any]:
    """What the node shows now for this pod (nothing for a stopped one's netns)."""
    sb, run = report["sandbox"], report["trace"].get("run", {})
    now: dict[str, Any] = {}
    netns = sb["netns"]
    if sb["state"] == "READY" and netns and os.path.exists(netns):
        now["pod"] = {"addresses": _ip(["addr", "show"], netns),
                      "routes": _ip(["route", "show"], netns) + _ip(["-6", "route", "show"], netns)}
    confs = [_stdin_json(step) for step in run.get("steps", [])
             if isinstance(step, dict) and step.get("kind") == "exec"]
    bridges, flannel = [], None
    for conf in confs:
        if conf.get("type") == "bridge":
            bridges.append(str(conf.get("bridge") or "cni0"))
        elif conf.get("type") == "flannel":
            flannel = conf
            delegate = conf.get("delegate") if isinstance(conf.get("delegate"), dict) else {}
            bridges.append(str(delegate.get("bridge") or "cni0"))
    gateways = []
    for name in dict.fromkeys(bridges):
        gateways += [{"bridge": name, "address": f"{a['local']}/{a['prefixlen']}"}
                     for link in _ip(["addr", "show", "dev", name]) for a in link.get("addr_info", [])
                     if a.get("family") == "inet"]
    if gateways:
        now["node_bridge"] = gateways
    if flannel is not None:
        now["flannel"] = _flannel(flannel, sb["id"])
    return now


def _flannel(conf: dict[str, Any], sandbox_id: str) -> dict[str, Any]:
    subnet_file = str(conf.get("subnetFile") or FLANNEL_SUBNET_FILE)
    out: dict[str, Any] = {"subnet_file": subnet_file}
    try:
        with open(subnet_file) as f:
            out["subnet_env"] = dict(line.strip().split("=", 1) for line in f if "=" in line)
    except OSError as exc:
        out["subnet_env_error"] = exc.strerror or str(exc)
    saved = os.path.join(str(conf.get("dataDir") or FLANNEL_DATA_DIR), sandbox_id)
    try:
        with open(saved) as f:
            config = json.load(f)
        if isinstance(config, dict):
            out["delegate"] = {"path": saved, "config": config}
    except (OSError, ValueError):
        pass
    routes = _ip(["route", "show"])
    out["overlay_routes"] = [r for r in routes if str(r.get("dev", "")).startswith("flannel")]
    return out


def _ip(args: list[str], netns: str = "") -> list[dict[str, Any]]:
    cmd = (["nsenter", f"--net={netns}"] if netns else []) + ["ip", "-j", *args]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        return json.loads(proc.stdout) if proc.returncode == 0 and proc.stdout.strip() else []
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return []


def _stdin_json(step: Any) -> dict[str, Any]:
    try:
        conf = json.loads(step.get("stdin", "")) if isinstance(step, dict) else None
    except (TypeError, ValueError):
        return {}
    return conf if isinstance(conf, dict) else {}


# -- text ----------------------------------------------------------------------------

def render_text(report: dict[str, Any]) -> str:
    sb, out = report["sandbox"], []
    ips = ", ".join([sb["ip"], *sb["additional_ips"]] if sb["ip"] else []) or "none"
    out.append(f"Pod {sb['namespace']}/{sb['name']} (attempt {sb['attempt']}), sandbox {sb['id'][:13]}, "
               f"{sb['state']}, IP {ips}")
    if sb["host_network"]:
        out.append("  host network: the pod uses the node's own addresses; no CNI plugin ran")
    for key, op in (("run", "RunPodSandbox"), ("stop", "StopPodSandbox")):
        trace = report["trace"].get(key)
        if isinstance(trace, dict) and trace:
            out.append("")
            out += _render_trace(trace)
        elif key == "run" or sb["state"] != "READY":   # a ready pod has no stop yet
            out.append(f"\nNo trace of its {op} (done by a cri-shim that kept none).")
    now = report["now"]
    if now:
        out.append("")
        out.append("What the node shows now")
        pod = now.get("pod")
        if pod:
            for link in pod["addresses"]:
                addrs = ", ".join(f"{a['local']}/{a['prefixlen']}" for a in link.get("addr_info", []))
                out.append(f"  in the pod's netns: {link.get('ifname')} {link.get('operstate', '')} {addrs}".rstrip())
            for r in pod["routes"]:
                out.append(f"  in the pod's netns: route {_route(r)}")
        for g in now.get("node_bridge", []):
            out.append(f"  on the node: bridge {g['bridge']} {g['address']} (the pod's gateway side)")
        fl = now.get("flannel")
        if fl:
            env = fl.get("subnet_env")
            if env is not None:
                out.append(f"  flannel: {fl['subnet_file']}: this node's podCIDR lease "
                           f"{env.get('FLANNEL_SUBNET', '?')} of {env.get('FLANNEL_NETWORK', '?')}, "
                           f"MTU {env.get('FLANNEL_MTU', '?')}, ipmasq {env.get('FLANNEL_IPMASQ', '?')}")
            else:
                out.append(f"  flannel: {fl['subnet_file']}: {fl.get('subnet_env_error')}")
            if "delegate" in fl:
                d = fl["delegate"]
                out.append(f"  flannel: delegated to {d['config'].get('type')} with the config saved in "
                           f"{d['path']}: {json.dumps(d['config'], sort_keys=True)}")
            for r in fl["overlay_routes"]:
                out.append(f"  flannel: overlay route {_route(r)} (another node's podCIDR)")
            if not fl["overlay_routes"]:
                out.append("  flannel: no overlay routes (no other node has a lease yet)")
    return "\n".join(out)


def _render_trace(trace: dict[str, Any]) -> list[str]:
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(trace.get("started_ns", 0) / 1e9))
    out = [f"{trace.get('operation')} at {when}, {trace.get('ms', 0):.1f} ms "
           f"(recording took {trace.get('recording_ms', 0):.2f} ms)"]
    cfg = trace.get("config") or {}
    if cfg.get("file"):
        out.append(f"  runtime config   {cfg['file']}")
    if "conf_dir" in cfg:
        out.append(f"  CNI conf dir     {cfg['conf_dir']} (max_conf_num {cfg.get('max_conf_num')}; "
                   "files in name order, the first valid ones win)")
        for f in cfg.get("files", []):
            name = os.path.basename(f["path"])
            if f["status"] == "chosen":
                out.append(f"    {name:28} chosen: network \"{f.get('network')}\"")
            else:
                out.append(f"    {name:28} {f['status']}: {f.get('reason', '')}")
        if not cfg.get("files"):
            out.append("    (no .conf, .conflist or .json file there)")
        out.append(f"  CNI bin dirs     {':'.join(cfg.get('bin_dirs', []))}")
    for step in trace.get("steps", []):
        if not isinstance(step, dict):
            continue
        at = f"+{float(step.get('at_ms', 0)):7.1f} ms"
        took = float(step.get("ms", 0))
        if step.get("kind") == "netns":
            out.append(f"  {at}  netns {step.get('action')} {step.get('path')} ({took:.1f} ms)")
            continue
        net = f", network {step['network']}" if step.get("network") else ""
        out.append(f"  {at}  {step.get('plugin', '?')} {step.get('command', '?')} {step.get('ifname', '')}{net}: "
                   f"{step.get('outcome', '?')} in {took:.1f} ms")
        out.append(f"              exec {step.get('path')}")
        env = step.get("env") if isinstance(step.get("env"), dict) else {}
        out.append("              env  " + " ".join(f"{k}={v}" for k, v in env.items()))
        out.append(f"              stdin  {_compact(step.get('stdin', ''))}")
        if step.get("output"):
            out.append(f"              output {_compact(step['output'])}")
        delegate = _delegate_stdin(str(step.get("stderr", "")))
        if delegate:
            out.append(f"              delegate ({delegate.get('type', '?')}) stdin "
                       f"{json.dumps(delegate, separators=(',', ':'))}")
        elif step.get("stderr"):
            out.append(f"              stderr {' '.join(step['stderr'].split())}")
    if trace.get("dropped_steps"):
        out.append(f"  ({trace['dropped_steps']} more steps were not kept)")
    outcome = trace.get("outcome") or {}
    if "error" in outcome:
        out.append(f"  failed: {outcome['error']}")
    elif "ips" in outcome:
        out.append(f"  the pod's IP: {', '.join(outcome['ips']) or 'none'}")
    return out


DELEGATE_LINE = "delegateAdd: netconf sent to delegate plugin:"   # flannel's own stderr


def _delegate_stdin(stderr: str) -> dict[str, Any]:
    """The config flannel gave its delegate, from the line flannel writes on stderr."""
    if DELEGATE_LINE not in stderr:
        return {}
    try:
        conf, _ = json.JSONDecoder().raw_decode(stderr.split(DELEGATE_LINE, 1)[1].lstrip())
    except ValueError:
        return {}
    return conf if isinstance(conf, dict) else {}


def _compact(text: str) -> str:
    try:
        return json.dumps(json.loads(text), separators=(",", ":"))
    except ValueError:
        return " ".join(text.split())


def _route(r: dict[str, Any]) -> str:
    parts = [r.get("dst", "?")]
    if r.get("gateway"):
        parts.append(f"via {r['gateway']}")
    if r.get("dev"):
        parts.append(f"dev {r['dev']}")
    parts += [f for f in r.get("flags", []) if f == "onlink"]
    return " ".join(parts)
