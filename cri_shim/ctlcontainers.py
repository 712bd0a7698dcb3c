"""``cri-shim ctl``'s container commands, making the calls crictl makes and printing
what crictl prints.

    create POD_ID CONTAINER_CONFIG POD_CONFIG   start ID...   stop [-t SECS] ID...
    rm [-f] ID...   ps [-a] [-q] [--pod ID] [--name RE] [--state S] [--label K=V]
    inspect ID...   logs [--tail N] [-t] ID   exec -s [--timeout SECS] ID CMD...
    stats [-a] [ID]
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

from .api import api_pb2 as pb
from .ctlprint import CtlError, add_labels, ago, human_size, load_config, print_status, table

__all__ = ["add_parsers", "COMMANDS"]

_STATES = {"created": pb.CONTAINER_CREATED, "running": pb.CONTAINER_RUNNING,
           "exited": pb.CONTAINER_EXITED, "unknown": pb.CONTAINER_UNKNOWN}
_SHOWN = {pb.CONTAINER_CREATED: "Created", pb.CONTAINER_RUNNING: "Running",
          pb.CONTAINER_EXITED: "Exited", pb.CONTAINER_UNKNOWN: "Unknown"}


def add_parsers(sub: Any) -> None:
    create = sub.add_parser("create", help="create a container in a pod")
    create.add_argument("pod")
    create.add_argument("container_config")
    create.add_argument("pod_config")
    start = sub.add_parser("start", help="start created containers")
    start.add_argument("ids", nargs="+")
    stop = sub.add_parser("stop", help="stop running containers")
    stop.add_argument("-t", "--timeout", dest="grace", type=int, default=0,
                      help="seconds between the stop signal and SIGKILL (default 0)")
    stop.add_argument("ids", nargs="+")
    rm = sub.add_parser("rm", help="remove containers")
    rm.add_argument("-f", "--force", action="store_true", help="stop a running one first")
    rm.add_argument("ids", nargs="+")
    ps = sub.add_parser("ps", help="list containers")
    ps.add_argument("-a", "--all", action="store_true", help="not only the running ones")
    ps.add_argument("-q", "--quiet", action="store_true", help="ids only")
    ps.add_argument("-p", "--pod", default="")
    ps.add_argument("--name", default="", help="a regular expression")
    ps.add_argument("-s", "--state", choices=sorted(_STATES), type=str.lower)
    ps.add_argument("--label", action="append", default=[], metavar="K=V")
    inspect = sub.add_parser("inspect", help="a container's status, as JSON")
    inspect.add_argument("ids", nargs="+")
    logs = sub.add_parser("logs", help="a container's log")
    logs.add_argument("--tail", type=int, default=-1)
    logs.add_argument("-t", "--timestamps", action="store_true")
    logs.add_argument("id")
    ex = sub.add_parser("exec", help="run a command in a container (-s: synchronously)")
    ex.add_argument("-s", "--sync", action="store_true", required=True,
                    help="run synchronously (the only mode of this client)")
    # dest apart from ctl's own -t/--timeout (the call's), which it would overwrite
    ex.add_argument("--timeout", dest="exec_timeout", type=int, default=0,
                    help="seconds the command may run (0: no limit)")
    ex.add_argument("id")
    ex.add_argument("command", nargs=argparse.REMAINDER)
    stats = sub.add_parser("stats", help="containers' resource usage")
    stats.add_argument("-a", "--all", action="store_true")
    stats.add_argument("id", nargs="?", default="")


def _create(c: Any, args: argparse.Namespace) -> int:
    config = load_config(args.container_config, pb.ContainerConfig(), "container config")
    pod = load_config(args.pod_config, pb.PodSandboxConfig(), "pod config")
    reply = c.CreateContainer(pb.CreateContainerRequest(pod_sandbox_id=args.pod, config=config,
                                                        sandbox_config=pod))
    print(reply.container_id)
    return 0


def _start(c: Any, args: argparse.Namespace) -> int:
    for container_id in args.ids:
        c.StartContainer(pb.StartContainerRequest(container_id=container_id))
        print(container_id)
    return 0


def _stop(c: Any, args: argparse.Namespace) -> int:
    for container_id in args.ids:
        # The call may take the grace period and then some: its deadline allows for it.
        c.runtime.StopContainer(pb.StopContainerRequest(container_id=container_id, timeout=args.grace),
                                timeout=c.timeout + args.grace)
        print(container_id)
    return 0


def _rm(c: Any, args: argparse.Namespace) -> int:
    failed = 0
    for container_id in args.ids:
        st = c.ContainerStatus(pb.ContainerStatusRequest(container_id=container_id)).status
        if st.state == pb.CONTAINER_RUNNING:
            if not args.force:
                print(f"container {container_id} is running, please stop it first",
                      file=sys.stderr)
                failed += 1
                continue
            c.StopContainer(pb.StopContainerRequest(container_id=container_id, timeout=0))
        c.RemoveContainer(pb.RemoveContainerRequest(container_id=container_id))
        print(container_id)
    return 1 if failed else 0


def _ps(c: Any, args: argparse.Namespace) -> int:
    flt = pb.ContainerFilter(pod_sandbox_id=args.pod)
    add_labels(flt.label_selector, args.label)
    if args.state:
        flt.state.state = _STATES[args.state]
    elif not args.all:
        flt.state.state = pb.CONTAINER_RUNNING
    items = sorted(c.ListContainers(pb.ListContainersRequest(filter=flt)).containers,
                   key=lambda x: x.created_at, reverse=True)
    if args.name:
        pattern = re.compile(args.name)
        items = [i for i in items if pattern.search(i.metadata.name)]
    if args.quiet:
        for i in items:
            print(i.id)
        return 0
    rows = [("CONTAINER", "IMAGE", "CREATED", "STATE", "NAME", "ATTEMPT", "POD ID", "POD", "NAMESPACE")]
    for i in items:
        rows.append((i.id[:13], i.image.image, ago(i.created_at), _SHOWN[i.state], i.metadata.name,
                     str(i.metadata.attempt), i.pod_sandbox_id[:13],
                     i.labels.get("io.kubernetes.pod.name", "unknown"),
                     i.labels.get("io.kubernetes.pod.namespace", "unknown")))
    table(rows)
    return 0


def _inspect(c: Any, args: argparse.Namespace) -> int:
    for container_id in args.ids:
        reply = c.ContainerStatus(pb.ContainerStatusRequest(container_id=container_id, verbose=True))
        print_status(reply.status, reply.info)
    return 0


def _logs(c: Any, args: argparse.Namespace) -> int:
    """As crictl: the log file named by ContainerStatus, read on this machine."""
    st = c.ContainerStatus(pb.ContainerStatusRequest(container_id=args.id)).status
    if not st.log_path:
        raise CtlError(f"container {args.id} has no log file (its pod has no log directory)")
    try:
        lines = Path(st.log_path).read_bytes().split(b"\n")[:-1]
    except OSError as exc:
        raise CtlError(f"cannot read {st.log_path}: {exc.strerror}") from exc
    if args.tail >= 0:
        lines = lines[-args.tail:] if args.tail else []
    for line in lines:
        parts = line.split(b" ", 3)
        if len(parts) < 3:
            continue
        content = parts[3] if len(parts) == 4 else b""
        out = sys.stderr.buffer if parts[1] == b"stderr" else sys.stdout.buffer
        if args.timestamps:
            out.write(parts[0] + b" ")
        out.write(content + (b"" if parts[2] == b"P" else b"\n"))
        out.flush()
    return 0


def _exec(c: Any, args: argparse.Namespace) -> int:
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not cmd:
        raise CtlError("exec: a command is required")
    reply = c.ExecSync(pb.ExecSyncRequest(container_id=args.id, cmd=cmd, timeout=args.exec_timeout))
    sys.stdout.buffer.write(reply.stdout)
    sys.stderr.buffer.write(reply.stderr)
    sys.stdout.flush()
    return reply.exit_code


def _stats(c: Any, args: argparse.Namespace) -> int:
    flt = pb.ContainerStatsFilter(id=args.id)
    items = c.ListContainerStats(pb.ListContainerStatsRequest(filter=flt)).stats
    rows = [("CONTAINER", "NAME", "CPU %", "MEM", "DISK", "INODES")]
    for s in items:
        rows.append((s.attributes.id[:13], s.attributes.metadata.name,
                     f"{s.cpu.usage_nano_cores.value / 1e7:.2f}", human_size(s.memory.working_set_bytes.value),
                     human_size(s.writable_layer.used_bytes.value), str(s.writable_layer.inodes_used.value)))
    table(rows)
    return 0


COMMANDS = {"create": _create, "start": _start, "stop": _stop, "rm": _rm, "ps": _ps,
            "inspect": _inspect, "logs": _logs, "exec": _exec, "stats": _stats}
