"""Command line: ``cri-shim serve``, ``cri-shim ctl ...``, ``cri-shim --version``.

The only module that configures logging handlers.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from typing import Any

from . import __version__

log = logging.getLogger("cri_shim")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["ctl"]:
        # ctl has its own parser (and options such as -r that argparse's REMAINDER
        # would refuse to pass through).
        from . import ctl
        return ctl.main(argv[1:])
    if argv[:1] == ["agent"]:
        from flannel import agent
        return agent.main(argv[1:])
    if argv[:1] == ["install-flannel"]:
        from flannelcni import install
        return install.main(argv[1:])
    parser = argparse.ArgumentParser(prog="cri-shim", description=(
        "A CRI runtime service for the pod-networking path: kubelet, crictl or critest "
        "talk CRI over a unix socket, and pod sandboxes get their IPs from real CNI plugins."))
    parser.add_argument("--version", action="version", version=f"cri-shim {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve_p = sub.add_parser("serve", help="serve CRI on a unix socket")
    serve_p.add_argument("--config", metavar="FILE",
                         help="containerd-style TOML config (default: the embedded one)")
    serve_p.add_argument("--listen", metavar="PATH", help="unix socket path (overrides [grpc] address)")
    serve_p.add_argument("--root", metavar="DIR", help="persistent state directory (overrides root)")
    serve_p.add_argument("--state", metavar="DIR", help="volatile state directory (overrides state)")
    serve_p.add_argument("--cni-conf-dir", metavar="DIR", help="overrides the CNI conf_dir")
    serve_p.add_argument("--cni-bin-dir", metavar="DIR", action="append",
                         help="overrides the CNI bin_dirs (repeatable)")
    serve_p.add_argument("--cni-cache-dir", metavar="DIR",
                         help="libcni's cache dir (default /var/lib/cni)")
    serve_p.add_argument("--netns-dir", metavar="DIR", help="where pod netns are pinned (default /var/run/netns)")
    serve_p.add_argument("--log-level", default=os.environ.get("CRI_SHIM_LOG_LEVEL", "info"),
                         choices=["debug", "info", "warning", "error"])
    serve_p.add_argument("--print-config", action="store_true",
                         help="print the effective configuration and exit")

    sub.add_parser("ctl", help="a small CRI client (crictl's pod commands); see `ctl --help`")
    sub.add_parser("agent", help="flannel's node agent (flanneld's job); see `agent --help`")
    sub.add_parser("install-flannel", help="install the flannel CNI plugin: install-flannel BIN_DIR")

    args = parser.parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    parser.print_help(sys.stderr)
    return 2


def _serve(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from . import config as config_mod
    from .errors import ConfigFileError

    try:
        cfg = config_mod.load(args.config)
    except ConfigFileError as exc:
        print(f"cri-shim: {exc}", file=sys.stderr)
        return 2
    cfg = cfg.replace(**{k: v for k, v in (("address", args.listen), ("root", args.root),
                                           ("state", args.state)) if v})
    cni_overrides = {"conf_dir": args.cni_conf_dir, "cache_dir": args.cni_cache_dir,
                     "netns_dir": args.netns_dir,
                     "bin_dirs": tuple(args.cni_bin_dir) if args.cni_bin_dir else None}
    cfg = cfg.replace_cni(**{k: v for k, v in cni_overrides.items() if v})
    if args.print_config:
        import dataclasses
        import json
        print(json.dumps(dataclasses.asdict(cfg), indent=2))
        return 0
    if os.geteuid() != 0:
        log.warning("not running as root: pinning network namespaces will fail")

    from images.service import ImageService
    from runtime.conmon import Conmon
    from runtime.ocicli import OCIRuntime

    from . import netns, rootlock
    from .containers import ContainerManager
    from .containerstore import FileContainerStore
    from .manager import SandboxManager
    from .podenv import PodEnvironment
    from .podnet import PodNetwork
    from .server import SocketInUse, serve
    from .store import FileStore

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    from . import sdnotify
    sdnotify.claim()   # before any child (the pinner, runc, conmon) inherits it
    try:
        root = rootlock.claim(cfg.root)   # before anything reads or repairs the root
    except rootlock.HostError as exc:
        print(f"cri-shim: {exc}", file=sys.stderr)
        return 1
    try:
        rootlock.private_dir(cfg.state)
        pod_env = PodEnvironment(os.path.join(cfg.state, "pods"),
                                 catatonit=cfg.containers.catatonit)
        manager = SandboxManager(cfg, PodNetwork(cfg.cni), FileStore(os.path.join(cfg.root, "sandboxes")),
                                 pod_env=pod_env)
        image_service = ImageService(os.path.join(cfg.root, "images"), cfg.images.registry,
                                     max_concurrent_downloads=cfg.images.max_concurrent_downloads)
        containers = ContainerManager(
            root=cfg.root, state=cfg.state, sandboxes=manager, images=image_service,
            store=FileContainerStore(os.path.join(cfg.root, "containers", "records")),
            conmon=Conmon(cfg.containers.conmon, os.path.join(cfg.state, "exits"),
                          os.path.join(cfg.state, "sockets")),
            runtimes={name: OCIRuntime(name, h.binary, os.path.join(cfg.state, "runtime", name),
                                       systemd_cgroup=h.systemd_cgroup or cfg.cgroup_driver == "systemd")
                      for name, h in cfg.containers.runtimes.items()},
            default_runtime=cfg.containers.default_runtime)
        log.info("config %s: root=%s state=%s conf_dir=%s bin_dirs=%s", cfg.source, cfg.root,
                 cfg.state, cfg.cni.conf_dir, ":".join(cfg.cni.bin_dirs))
        netns.start_helper()
        manager.recover()
        containers.recover()
        image_service.collect_garbage()   # what a crashed pull or remove left
        if cfg.cni.gc_on_start:
            manager.gc()
        streams = start_streaming(cfg, containers, manager)
        from .metrics import Metrics
        metrics = Metrics(cfg.metrics, sandbox_states=lambda: [r.state for r in manager.list()],
                          container_states=lambda: [r.state for r in containers.list()])
        metrics.start()
        try:
            serve(manager, image_service, cfg.address, stop, containers, streams)
        finally:
            metrics.stop()
    except SocketInUse as exc:
        print(f"cri-shim: {exc.strerror}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"cri-shim: {exc}", file=sys.stderr)
        return 1
    finally:
        root.release()
    return 0


def start_streaming(cfg: Any, containers: Any, manager: Any) -> Any:
    """The streaming server for Exec, Attach and PortForward, listening already."""
    from streaming.server import StreamServer
    from streaming.tls import server_context

    from .streams import ShimStreamRuntime, Streams
    sc = cfg.streaming
    tls = server_context(sc.cert_file, sc.key_file, _addresses(sc.address)) if sc.tls else None
    server = StreamServer(ShimStreamRuntime(containers, manager), sc, tls_context=tls)
    server.start()
    return Streams(server, containers, manager)


def _addresses(bind: str) -> list[str]:
    """The addresses a self-signed streaming certificate names: the bind address, the
    loopbacks and this node's interface addresses."""
    import socket
    out = [bind, "127.0.0.1", "::1"]
    try:
        out += [a[4][0] for a in socket.getaddrinfo(socket.gethostname(), None)]
    except OSError:
        pass
    return list(dict.fromkeys(out))


if __name__ == "__main__":
    raise SystemExit(main())
