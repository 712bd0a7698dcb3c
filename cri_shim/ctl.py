"""``cri-shim ctl``: crictl's pod commands, for the demo, the tests and machines
without crictl. Output follows crictl's.

    cri-shim ctl [-r unix:///path.sock] version | info | runp FILE | inspectp ID |
                 stopp ID... | rmp [-f] ID... | pods [--id ID] [--state S] [--label K=V] [-q] |
                 explain POD [--json] [--svg FILE]

and the image commands of ``cri_shim.ctlimages`` (pull, images, inspecti, rmi,
imagefsinfo, import) and the container commands of ``cri_shim.ctlcontainers`` (create,
start, ps, inspect, logs, exec -s, stop, rm, stats).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import grpc

from . import ctlimages
from . import ctlcontainers
from .ctlprint import CtlError, add_labels, ago, load_config, print_status, table, to_dict
from .api import admin_pb2_grpc
from .api import api_pb2 as pb
from .api import api_pb2_grpc as pb_grpc

DEFAULT_ENDPOINT = "unix:///run/cri-shim/cri-shim.sock"


def load_pod_config(path: str) -> pb.PodSandboxConfig:
    """Read a pod config file as crictl does: JSON or YAML, snake_case keys, enums as numbers."""
    return load_config(path, pb.PodSandboxConfig(), "pod config")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="cri-shim ctl", description="A small CRI client (crictl's pod commands).")
    p.add_argument("-r", "--runtime-endpoint",
                   default=os.environ.get("CONTAINER_RUNTIME_ENDPOINT", DEFAULT_ENDPOINT))
    p.add_argument("-t", "--timeout", type=float, default=120.0, help="seconds per call")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("version", help="runtime name and version")
    sub.add_parser("info", help="runtime status, with the loaded CNI config")
    runp = sub.add_parser("runp", help="run a pod sandbox from a JSON/YAML config file")
    runp.add_argument("config")
    inspectp = sub.add_parser("inspectp", help="a sandbox's status, as JSON")
    inspectp.add_argument("ids", nargs="+")
    stopp = sub.add_parser("stopp", help="stop sandboxes")
    stopp.add_argument("ids", nargs="+")
    rmp = sub.add_parser("rmp", help="remove sandboxes")
    rmp.add_argument("-f", "--force", action="store_true", help="remove even if ready")
    rmp.add_argument("ids", nargs="+")
    pods = sub.add_parser("pods", help="list sandboxes")
    pods.add_argument("--id", default="")
    pods.add_argument("-s", "--state", choices=["ready", "notready"], type=str.lower)
    pods.add_argument("--label", action="append", default=[], metavar="K=V")
    pods.add_argument("-q", "--quiet", action="store_true", help="ids only")
    pods.add_argument("-o", "--output", choices=["table", "json"], default="table")
    explain = sub.add_parser("explain", help="how a pod got its IP: what was read, every plugin "
                             "exec, and what the node shows now")
    explain.add_argument("pod", help="sandbox id, id prefix, pod name or namespace/name")
    explain.add_argument("--json", action="store_true", help="the whole report as JSON")
    explain.add_argument("--svg", metavar="FILE", help="also draw the sequence into FILE")
    ctlimages.add_parsers(sub)
    ctlcontainers.add_parsers(sub)
    args = p.parse_args(argv)

    target = args.runtime_endpoint
    if target.startswith("/"):
        target = "unix://" + target
    try:
        with grpc.insecure_channel(target) as channel:
            client = _Client(channel, args.timeout)
            return _COMMANDS[args.cmd](client, args)
    except grpc.RpcError as exc:
        print(f"cri-shim ctl {args.cmd}: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    except CtlError as exc:
        print(f"cri-shim ctl {args.cmd}: {exc}", file=sys.stderr)
        return 1


class _Client:
    def __init__(self, channel: grpc.Channel, timeout: float) -> None:
        self.runtime = pb_grpc.RuntimeServiceStub(channel)
        self.image = pb_grpc.ImageServiceStub(channel)
        self.admin = admin_pb2_grpc.AdminStub(channel)
        self.timeout = timeout

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.runtime, name)
        return lambda req: method(req, timeout=self.timeout)


def _version(c: _Client, args: argparse.Namespace) -> int:
    v = c.Version(pb.VersionRequest(version="v1"))
    print(f"Version:  {v.version}\nRuntimeName:  {v.runtime_name}\n"
          f"RuntimeVersion:  {v.runtime_version}\nRuntimeApiVersion:  {v.runtime_api_version}")
    return 0


def _info(c: _Client, args: argparse.Namespace) -> int:
    st = c.Status(pb.StatusRequest(verbose=True))
    print_status(st.status, st.info)
    return 0


def _runp(c: _Client, args: argparse.Namespace) -> int:
    config = load_pod_config(args.config)
    r = c.RunPodSandbox(pb.RunPodSandboxRequest(config=config))
    print(r.pod_sandbox_id)
    return 0


def _inspectp(c: _Client, args: argparse.Namespace) -> int:
    for sandbox_id in args.ids:
        r = c.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id, verbose=True))
        print_status(r.status, r.info)
    return 0


def _stopp(c: _Client, args: argparse.Namespace) -> int:
    for sandbox_id in args.ids:
        c.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=sandbox_id))
        print(f"Stopped sandbox {sandbox_id}")
    return 0


def _rmp(c: _Client, args: argparse.Namespace) -> int:
    failed = 0
    for sandbox_id in args.ids:
        st = c.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id))
        if st.status.state == pb.SANDBOX_READY and not args.force:
            # crictl's own rule: a ready sandbox is only removed with -f.
            print(f"pod sandbox {sandbox_id} is running, please stop it first or use -f",
                  file=sys.stderr)
            failed += 1
            continue
        if st.status.state == pb.SANDBOX_READY:
            c.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=sandbox_id))
        c.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id))
        print(f"Removed sandbox {sandbox_id}")
    return 1 if failed else 0


def _pods(c: _Client, args: argparse.Namespace) -> int:
    flt = pb.PodSandboxFilter(id=args.id)
    add_labels(flt.label_selector, args.label)
    if args.state:
        flt.state.state = pb.SANDBOX_READY if args.state == "ready" else pb.SANDBOX_NOTREADY
    items = sorted(c.ListPodSandbox(pb.ListPodSandboxRequest(filter=flt)).items,
                   key=lambda s: s.created_at, reverse=True)
    if args.output == "json":
        print(json.dumps({"items": [to_dict(i) for i in items]}, indent=2))
    elif args.quiet:
        for i in items:
            print(i.id)
    else:
        rows = [("POD ID", "CREATED", "STATE", "NAME", "NAMESPACE", "ATTEMPT", "RUNTIME")]
        for i in items:
            rows.append((i.id[:13], ago(i.created_at),
                         "Ready" if i.state == pb.SANDBOX_READY else "NotReady",
                         i.metadata.name, i.metadata.namespace, str(i.metadata.attempt),
                         i.runtime_handler or "(default)"))
        table(rows)
    return 0


def _explain(c: _Client, args: argparse.Namespace) -> int:
    from . import explain, explainsvg
    report = explain.gather(c, explain.resolve(c, args.pod))
    if args.svg:
        try:
            with open(args.svg, "w") as f:
                f.write(explainsvg.render_svg(report))
        except OSError as exc:
            raise CtlError(f"cannot write {args.svg}: {exc.strerror}") from exc
    print(json.dumps(report, indent=2) if args.json else explain.render_text(report))
    return 0


_COMMANDS = {"version": _version, "explain": _explain, "info": _info, "runp": _runp, "inspectp": _inspectp,
             "stopp": _stopp, "rmp": _rmp, "pods": _pods, **ctlimages.COMMANDS,
             **ctlcontainers.COMMANDS}
