"""The throwaway node: a netns, a temp dir, the conflists, and the supervisor.

``supervise`` runs in the host's namespaces: it makes the node netns and the temp
dir, re-executes the bench inside the node netns (``nsenter --net=...``), and then,
whatever happened (failure, Ctrl-C, SIGTERM, a killed child), kills what the bench
started (by pid, from pid files in the temp dir), unmounts every netns pinned under
the temp dir, deletes the node netns (the bridge, veths and iptables rules go with
it) and removes the temp dir. The host's network is never touched.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

from testbed.netns import Namespace
from testbed.pods import bridge_plugin
from testbed.process import REPO, sh  # noqa: F401  (REPO is re-exported to benchlib)

PLUGIN_DIRS = ("/usr/lib/cni", "/opt/cni/bin")
SUBNET = "10.88.0.0/19"          # 8190 addresses, only inside the node netns
NETWORK = "benchnet"
FLANNEL_NETWORK = "10.89.0.0/16"  # flannel part: the node's lease is a /20 of it
FLANNEL_SUBNET = "10.89.16.1/20"
PID_FILES = ("shim.pid",)


def missing_prerequisite() -> str | None:
    """Why the bench cannot run here, or None."""
    if os.geteuid() != 0:
        return "run as root (it makes network namespaces)"
    for tool in ("ip", "nsenter", "unshare", "iptables"):
        if shutil.which(tool) is None:
            return f"needs {tool} (make system-deps)"
    if plugin_dir() is None:
        return "needs the CNI plugins bridge, host-local, loopback, portmap (make system-deps)"
    return None


def plugin_dir() -> str | None:
    for d in PLUGIN_DIRS:
        if all(os.access(os.path.join(d, p), os.X_OK)
               for p in ("bridge", "host-local", "loopback", "portmap")):
            return d
    return None


def bench_conflist(work: Path) -> dict[str, Any]:
    """bridge + host-local + portmap, kube-flannel-shaped (loopback is go-cni's)."""
    return {"cniVersion": "1.0.0", "name": NETWORK,
            # kube-flannel's delegate shape (issue 8): hairpinMode and flannel's MTU too.
            "plugins": [bridge_plugin(SUBNET, work / "ipam", hairpinMode=True, mtu=1450),
                        {"type": "portmap", "capabilities": {"portMappings": True}}]}


class Work:
    """Paths inside the bench's temp dir."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.conf_dir = root / "net.d"
        self.netns_dir = root / "netns"          # cri-shim's pod netns
        self.raw_netns_dir = root / "netns-raw"  # the raw chain's pod netns
        self.ipam_dir = root / "ipam"
        self.cache_dir = root / "cni-cache"
        self.bin_dir = root / "bin"              # the flannel plugin's wrapper
        for d in (self.conf_dir, self.netns_dir, self.raw_netns_dir, self.bin_dir):
            d.mkdir(parents=True, exist_ok=True)

    def write_conflist(self, conflist: dict[str, Any]) -> Path:
        path = self.conf_dir / "10-bench.conflist"
        path.write_text(json.dumps(conflist, indent=2))
        return path

    def ip_files(self, network: str = NETWORK) -> list[str]:
        d = self.ipam_dir / network
        if not d.is_dir():
            return []
        return [p.name for p in d.iterdir()
                if p.name != "lock" and not p.name.startswith("last_reserved_ip")]

    def pinned(self) -> list[str]:
        return [str(p) for d in (self.netns_dir, self.raw_netns_dir) if d.is_dir()
                for p in d.iterdir()]


def veths() -> list[str]:
    """veth links in the current (node) netns."""
    out = sh("ip", "-o", "link", "show", "type", "veth", check=False)
    return [line.split(": ")[1].split("@")[0] for line in out.splitlines() if ": " in line]


# -- the supervisor ------------------------------------------------------------------


def supervise(script: str, argv: Sequence[str], *, keep: bool = False) -> int:
    """Make the node netns and temp dir, run ``script --inside DIR argv`` in the node
    netns, and always remove everything afterwards. Returns the bench's exit code."""
    problem = missing_prerequisite()
    if problem:
        print(f"bench: {problem}", file=sys.stderr)
        return 2
    root = Path(tempfile.mkdtemp(prefix="cri-shim-bench."))
    node = f"crishim-bench-{secrets.token_hex(4)}"
    child: subprocess.Popen | None = None
    stopping = {"signal": 0}

    def on_signal(signum: int, _frame: Any) -> None:
        # The bench ignores a second SIGINT while it cleans up, so passing this one
        # on as well is harmless when the terminal already sent it.
        stopping["signal"] = signum
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGINT if signum == signal.SIGINT else signal.SIGTERM)

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        Namespace(name=node)
        child = subprocess.Popen(["nsenter", f"--net=/var/run/netns/{node}", sys.executable,
                                  script, "--inside", str(root), "--node", node, *argv])
        rc = child.wait()
        return 130 if stopping["signal"] == signal.SIGINT and rc != 0 else rc
    finally:
        if child is not None and child.poll() is None:
            child.terminate()
            try:
                child.wait(timeout=20)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        cleanup(root, node, keep=keep)
        for s, handler in old.items():
            signal.signal(s, handler)


def cleanup(root: Path, node: str, *, keep: bool = False) -> None:
    """Kill what the bench started, unpin its netns, delete the node, remove the dir."""
    for name in PID_FILES:
        _kill_pidfile(root / name, root)
    work_netns = [d for d in (root / "netns", root / "netns-raw") if d.is_dir()]
    left = 0
    for d in work_netns:
        for p in d.iterdir():
            left += 1
            subprocess.run(["umount", "-l", str(p)], capture_output=True)
            try:
                p.unlink()
            except OSError:
                pass
    if left:
        print(f"bench: cleanup unpinned {left} pod netns left behind", file=sys.stderr)
    sh("ip", "netns", "del", node, check=False)
    if keep:
        print(f"bench: kept {root}", file=sys.stderr)
    else:
        shutil.rmtree(root, ignore_errors=True)


def _kill_pidfile(pidfile: Path, root: Path) -> None:
    """SIGTERM, then SIGKILL, the process in *pidfile* if it still runs our command
    (its command line names our temp dir): never a stranger that reused the pid."""
    try:
        pid = int(pidfile.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return
    if str(root).encode() not in cmdline:
        return
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not Path(f"/proc/{pid}").exists() or _is_zombie(pid):
                return
            time.sleep(0.05)


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")
    except (OSError, IndexError):
        return True
