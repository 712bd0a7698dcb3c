"""cri-shim serving inside a node namespace, with all its state in one work dir.

``Server`` writes a containerd-style TOML config whose every path lies under *work*
(conf dir, bin dirs, libcni's cache, the netns dir, root and state, the socket), starts
``python -m cri_shim serve --config`` under ``nsenter --net=<node>`` and waits until it
answers ``Version`` (or reports NetworkReady). Its log is ``<work>/shim.log``. The
``leftovers`` helpers say what the server under test left behind: pinned netns, veths,
records, cache files, host-local IPs.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import grpc

from cri_shim.api import api_pb2 as pb
from cri_shim.api import api_pb2_grpc as pb_grpc

from .netns import Namespace
from .process import REPO, env, stop

__all__ = ["PLUGIN_DIR", "TEST_PLUGIN_DIR", "Server"]

PLUGIN_DIR = "/usr/lib/cni"                                            # Debian's plugins
TEST_PLUGIN_DIR = str(REPO / "tests" / "privileged" / "plugins")      # shim-test
CGROUP_PARENT = "cri-shim"   # cri-shim's cgroup parent for pods kubelet gave none


class Server:
    """One cri-shim process in *node* (a ``Namespace``, or anything with ``.path``).

    *bin_dirs* default to Debian's plugins and the test plugins; *cni_options* are
    extra ``key = value`` lines for the CNI table, *extra_toml* text appended to the
    config; *src* is the checkout cri-shim runs from (the bench measures candidates
    with it); *pid_file* records the pid for a supervisor that must stop it whatever
    happens to its caller.
    """

    def __init__(self, node: Namespace | Any, work: Path, *,
                 bin_dirs: Sequence[str] = (PLUGIN_DIR, TEST_PLUGIN_DIR),
                 cni_options: Sequence[str] = (), extra_toml: str = "", src: Path = REPO,
                 log_level: str = "debug", pid_file: Path | None = None) -> None:
        self.node = node
        self.work = work
        self.bin_dirs = tuple(bin_dirs)
        self.cni_options = tuple(cni_options)
        self.extra_toml = extra_toml
        self.src = src
        self.log_level = log_level
        self.pid_file = pid_file
        self.conf_dir = work / "net.d"
        self.netns_dir = work / "netns"
        self.ipam_dir = work / "ipam"
        self.cache_dir = work / "cni-cache"
        self.root = work / "root"
        self.state = work / "state"
        self.socket = work / "cri.sock"
        self.log_path = work / "shim.log"
        self.config_path = work / "config.toml"
        self.proc: subprocess.Popen | None = None
        self.channel: grpc.Channel | None = None
        self.conf_dir.mkdir(parents=True, exist_ok=True)
        # Container cgroups already there (another run's) are not this server's.
        self._foreign_cgroups = set(self._cgroups_under_parent())

    # -- configuration --------------------------------------------------------------

    def toml(self) -> str:
        bins = ", ".join(f'"{d}"' for d in self.bin_dirs)
        return f'''version = 2
root = "{self.root}"
state = "{self.state}"
[grpc]
  address = "{self.socket}"
[plugins."io.containerd.grpc.v1.cri".cni]
  bin_dirs = [{bins}]
  conf_dir = "{self.conf_dir}"
  cache_dir = "{self.cache_dir}"
  netns_dir = "{self.netns_dir}"
''' + "".join(f"  {line}\n" for line in self.cni_options) + self.extra_toml

    def write_conf(self, filename: str, conf: dict[str, Any] | str) -> Path:
        """A file in the server's CNI conf dir."""
        path = self.conf_dir / filename
        path.write_text(conf if isinstance(conf, str) else json.dumps(conf, indent=2))
        return path

    # -- the process ----------------------------------------------------------------

    def start(self, *, timeout: float = 30) -> "Server":
        """Start the server and wait until it answers on its socket."""
        self.config_path.write_text(self.toml())
        self.proc = subprocess.Popen(
            ["nsenter", f"--net={self.node.path}", sys.executable, "-m", "cri_shim", "serve",
             "--config", str(self.config_path), "--log-level", self.log_level],
            stdout=open(self.log_path, "ab"), stderr=subprocess.STDOUT,
            env=env(PYTHONPATH=str(self.src)), cwd=str(self.src),
            # Its own session: a Ctrl-C on a terminal reaches the caller, which tears the
            # pods down through this server before it stops it.
            start_new_session=True)
        if self.pid_file is not None:
            self.pid_file.write_text(str(self.proc.pid))
        deadline = time.monotonic() + timeout
        while True:   # a stale socket from a killed run may be there: wait for an answer
            if self.proc.poll() is not None:
                raise RuntimeError(f"cri-shim exited {self.proc.returncode}:\n{self.log_tail()}")
            if self.socket.exists():
                channel = grpc.insecure_channel(f"unix://{self.socket}")
                try:
                    pb_grpc.RuntimeServiceStub(channel).Version(pb.VersionRequest(), timeout=0.5)
                    self.channel = channel
                    break
                except grpc.RpcError:
                    channel.close()
            if time.monotonic() > deadline:
                raise RuntimeError(f"cri-shim does not answer on {self.socket}:\n{self.log_tail()}")
            time.sleep(0.05)
        self.runtime = pb_grpc.RuntimeServiceStub(self.channel)
        self.image = pb_grpc.ImageServiceStub(self.channel)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid   # nsenter execs the server: the same pid

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop the server (pods are left as they are, as a restart would)."""
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        stop(self.proc, sig, timeout=20)
        self.proc = None
        remove_cgroup_parent()

    def ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """``cri-shim ctl -r unix://<socket> ARGS``."""
        proc = subprocess.run([sys.executable, "-m", "cri_shim", "ctl", "-r",
                               f"unix://{self.socket}", *args],
                              capture_output=True, text=True, timeout=120,
                              env=env(PYTHONPATH=str(self.src)))
        if check and proc.returncode != 0:
            raise AssertionError(f"ctl {' '.join(args)} failed: {proc.stderr}\n{self.log_tail()}")
        return proc

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def log_offset(self) -> int:
        return self.log_path.stat().st_size if self.log_path.exists() else 0

    # -- what is left behind --------------------------------------------------------

    def pinned(self) -> list[str]:
        return sorted(p.name for p in self.netns_dir.iterdir()) if self.netns_dir.exists() else []

    def ip_files(self, network: str) -> list[str]:
        d = self.ipam_dir / network
        if not d.exists():
            return []
        return sorted(p.name for p in d.iterdir()
                      if p.name != "lock" and not p.name.startswith("last_reserved_ip"))

    def veths(self) -> list[str]:
        """The veths in the node namespace (each pod on a bridge has one)."""
        return self.node.veths()

    def pod_chains(self) -> list[str]:
        """iptables chains the plugins made for one pod and left in the node (bridge's
        ipMasq ``CNI-<hash>``, portmap's ``CNI-DN-<hash>``; the shared
        ``CNI-HOSTPORT-*`` chains stay by design)."""
        out = []
        for table in ("nat", "filter"):
            proc = subprocess.run(["nsenter", f"--net={self.node.path}", "iptables-save", "-t", table],
                                  capture_output=True, text=True)
            out += [f"{table}:{m}" for m in re.findall(r"^:(CNI-(?:DN-)?[0-9a-f]{16,})\s", proc.stdout, re.M)]
        return out

    def state_files(self) -> list[str]:
        d = self.root / "sandboxes"
        return sorted(p.name for p in d.iterdir()) if d.exists() else []

    def cache_files(self) -> list[str]:
        d = self.cache_dir / "results"
        return sorted(p.name for p in d.iterdir()) if d.exists() else []

    def mounts(self) -> list[str]:
        """Mount points under the work dir (rootfs overlays, pod namespaces, /dev/shm)."""
        out = []
        with open("/proc/self/mountinfo") as f:
            for line in f:
                point = line.split()[4].replace("\\040", " ")
                if point.startswith(str(self.work) + "/"):
                    out.append(point)
        return sorted(out)

    def runtime_states(self) -> list[str]:
        """Containers the OCI runtimes still hold under the server's runtime roots."""
        out = []
        base = self.state / "runtime"
        for root in sorted(base.iterdir()) if base.exists() else []:
            binary = root.name
            proc = subprocess.run([binary, "--root", str(root), "list", "-q"], capture_output=True,
                                  text=True)
            out += [f"{binary}:{c}" for c in proc.stdout.split()]
        return out

    def monitors(self) -> list[int]:
        """conmon (and PID-init) processes started for this server's containers."""
        out = []
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if cmdline and os.path.basename(cmdline[0]) in (b"conmon", b"unshare") and \
                    any(str(self.state).encode() in a for a in cmdline):
                out.append(int(pid))
        return out

    @staticmethod
    def _cgroups_under_parent() -> list[str]:
        out = []
        for top in Path("/sys/fs/cgroup").iterdir():
            d = top / CGROUP_PARENT
            if d.is_dir():
                out += [f"{top.name}/{c.name}" for c in d.iterdir() if c.is_dir()]
        return sorted(out)

    def container_cgroups(self) -> list[str]:
        """cgroup dirs of this server's containers under cri-shim's default parent
        (those there before the server was made are left out)."""
        return [c for c in self._cgroups_under_parent() if c not in self._foreign_cgroups]

    def container_files(self) -> list[str]:
        """Container records, bundles and writable layers left on disk."""
        out = []
        for d in (self.root / "containers", self.state / "containers", self.state / "pods"):
            if d.exists():
                out += [f"{d.name}/{p.name}" for p in d.iterdir() if p.name != "records"]
        records = self.root / "containers" / "records"
        if records.exists():
            out += [f"records/{p.name}" for p in records.iterdir()]
        return sorted(out)

    def leftovers(self, network: str = "") -> dict[str, list]:
        """Everything the server's pods and containers left: netns, veths in the node,
        records, libcni cache files, (for *network*) host-local's IP files, mounts,
        runtime state, conmon processes, cgroups, container files and the plugins'
        per-pod iptables chains."""
        found: dict[str, list] = {
            "netns": self.pinned(), "veth": self.veths(), "state": self.state_files(),
            "cache": self.cache_files(), "mounts": self.mounts(),
            "runtime": self.runtime_states(), "monitors": self.monitors(),
            "cgroups": self.container_cgroups(), "containers": self.container_files(),
            "iptables": self.pod_chains()}
        if network:
            found["ip"] = self.ip_files(network)
        return {k: v for k, v in found.items() if v}

    def force_clean(self) -> None:
        """Last resort after a test or a run: kill the containers' monitors, delete the
        runtimes' containers, unmount and unpin whatever is still there."""
        from cri_shim import netns
        for pid in self.monitors():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        base = self.state / "runtime"
        for root in sorted(base.iterdir()) if base.exists() else []:
            for c in subprocess.run([root.name, "--root", str(root), "list", "-q"],
                                    capture_output=True, text=True).stdout.split():
                subprocess.run([root.name, "--root", str(root), "delete", "--force", c],
                               capture_output=True)
        for point in reversed(self.mounts()):
            subprocess.run(["umount", "-l", point], capture_output=True)
        for name in self.pinned():
            netns.unpin(str(self.netns_dir / name))
        for cg in self.container_cgroups():
            try:
                os.rmdir(f"/sys/fs/cgroup/{cg.split('/')[0]}/{CGROUP_PARENT}/{cg.split('/', 1)[1]}")
            except OSError:
                pass
        remove_cgroup_parent()


def remove_cgroup_parent() -> None:
    """Remove cri-shim's default cgroup parent in every hierarchy where it is empty
    (the server makes it for containers of pods without a parent, and leaves it, as
    runc leaves a parent it made)."""
    for top in Path("/sys/fs/cgroup").iterdir():
        try:
            os.rmdir(top / CGROUP_PARENT)
        except OSError:
            pass
