"""A pod's environment beside its network: IPC and UTS namespaces, the shared files,
``/dev/shm``, the PID namespace's init, and the pod's sysctls.

- UTS and IPC namespaces are pinned in the pod's directory (``<state>/pods/<id>/uts``
  and ``ipc``), as CRI-O's ``pinns`` does; no process holds them. The UTS one gets the
  pod's hostname. A host-network pod keeps the node's UTS namespace (containerd does
  the same); an IPC NODE pod the node's IPC namespace and ``/dev/shm``.
- PID namespace mode POD: containers share one PID namespace, whose PID 1 is
  Debian's ``catatonit -P`` (it reaps and waits), started only for such pods by
  ``unshare --pid --fork --kill-child`` in a session of its own, so it outlives a
  restart of cri-shim; killing the ``unshare`` kills catatonit and with it every
  process of the namespace.
- Sysctls: set once in the namespace they belong to (IPC ones in the pinned IPC
  namespace, ``kernel.domainname`` in the UTS one, ``net.*`` in the netns once the CNI
  chain has run), with runc's rules for what may be set where.

Nothing here knows gRPC; the sandbox manager calls it.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from typing import Any, Mapping

from runtime.monitor import start_time

from . import netns as netns_mod
from .errors import HostError, InvalidArgument
from .podfiles import PodFiles

__all__ = ["PodEnvironment", "PodPlan", "sysctl_namespace", "sysctl_path", "PidInit"]

log = logging.getLogger(__name__)

_IPC_SYSCTLS = {"kernel.msgmax", "kernel.msgmnb", "kernel.msgmni", "kernel.sem", "kernel.shmall",
                "kernel.shmmax", "kernel.shmmni", "kernel.shm_rmid_forced"}
NODE, POD, CONTAINER, TARGET = 2, 0, 1, 3      # CRI's NamespaceMode
_MODES = {"POD": POD, "CONTAINER": CONTAINER, "NODE": NODE, "TARGET": TARGET}


def mode(value: Any) -> int:
    """A NamespaceMode from proto JSON (a name or a number)."""
    return _MODES.get(value, value) if isinstance(value, str) else int(value or 0)


_SWAP = str.maketrans("./", "/.")


def sysctl_name(key: str) -> str:
    """The dotted name of *key*, as runc normalises it: a key whose first separator
    is ``/`` (``net/ipv4/conf/eth0.100/forwarding``) has ``/`` and ``.`` swapped."""
    first = next((c for c in key if c in "./"), "")
    return key.translate(_SWAP) if first == "/" else key


def sysctl_path(key: str) -> str:
    """The path of *key* below /proc/sys."""
    return sysctl_name(key).translate(_SWAP)


def sysctl_namespace(key: str, *, host_network: bool, host_ipc: bool) -> str:
    """Which of the pod's namespaces *key* belongs to (``ipc``, ``uts``, ``net``), by
    runc's rules; raises ``InvalidArgument`` with runc's words otherwise."""
    name = sysctl_name(key)
    if name in _IPC_SYSCTLS or name.startswith("fs.mqueue."):
        if host_ipc:
            raise InvalidArgument(f'sysctl "{key}" is not allowed in the hosts ipc namespace')
        return "ipc"
    if name.startswith("net."):
        if host_network:
            raise InvalidArgument(f'sysctl "{key}" not allowed in host network namespace')
        return "net"
    if name == "kernel.domainname":
        if host_network:
            raise InvalidArgument(f'sysctl "{key}" is not allowed in the hosts uts namespace')
        return "uts"
    if name == "kernel.hostname":
        raise InvalidArgument(f'sysctl "{key}" is not allowed as it conflicts with the OCI '
                              '"hostname" field')
    raise InvalidArgument(f'sysctl "{key}" is not in a separate kernel namespace')


@dataclass(frozen=True)
class PodPlan:
    """What a pod asks for, from its PodSandboxConfig."""

    hostname: str
    host_network: bool
    host_ipc: bool
    pid_mode: int
    dns: tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]] | None
    sysctls: Mapping[str, str]

    @classmethod
    def of(cls, config: Mapping[str, Any]) -> "PodPlan":
        linux = config.get("linux") or {}
        ns = ((linux.get("security_context") or {}).get("namespace_options") or {})
        dns = config.get("dns_config")
        plan = cls(hostname=str(config.get("hostname") or ""),
                   host_network=mode(ns.get("network", 0)) == NODE,
                   host_ipc=mode(ns.get("ipc", 0)) == NODE,
                   pid_mode=mode(ns.get("pid", 0)),
                   dns=(tuple(dns.get("servers", ())), tuple(dns.get("searches", ())),
                        tuple(dns.get("options", ()))) if dns is not None else None,
                   sysctls=dict(linux.get("sysctls") or {}))
        plan.check()
        return plan

    def check(self) -> None:
        """Raise ``InvalidArgument`` for what can never work (before anything is made)."""
        if self.hostname and (len(self.hostname) > 64 or any(c.isspace() or c == "/" for c in
                                                               self.hostname)):
            raise InvalidArgument(f"PodSandboxConfig.hostname {self.hostname!r} is not a hostname")
        for key in self.sysctls:
            sysctl_namespace(key, host_network=self.host_network, host_ipc=self.host_ipc)


@dataclass(frozen=True)
class PidInit:
    """The PID namespace's holder: the ``unshare`` process and catatonit, its child,
    which is PID 1 in there; *start* tells a pid reused since (``/proc/<pid>/stat``)."""

    holder: int
    pid: int
    start: int

    def to_json(self) -> dict[str, int]:
        return {"holder": self.holder, "pid": self.pid, "start": self.start}

    @classmethod
    def from_json(cls, d: Mapping[str, int] | None) -> "PidInit | None":
        return cls(int(d["holder"]), int(d["pid"]), int(d["start"])) if d else None

    def alive(self) -> bool:
        return start_time(self.pid) == self.start


class PodEnvironment:
    """Pod directories live under *pods_dir*; *catatonit* is the PID namespace init."""

    def __init__(self, pods_dir: str, *, catatonit: str = "/usr/bin/catatonit",
                 unshare: str = "unshare", netns: Any = netns_mod) -> None:
        self.pods_dir = pods_dir
        self.catatonit, self.unshare = catatonit, unshare
        self._netns = netns

    def files(self, sandbox_id: str) -> PodFiles:
        return PodFiles(os.path.join(self.pods_dir, sandbox_id))

    # -- set up ---------------------------------------------------------------------

    def set_up(self, sandbox_id: str, plan: PodPlan) -> PidInit | None:
        """Files, namespaces, /dev/shm, the PID init and the IPC/UTS sysctls. On error
        what was made stays for ``tear_down`` (the caller's undo)."""
        files = self.files(sandbox_id)
        try:
            files.write(hostname=plan.hostname, host_network=plan.host_network, dns=plan.dns)
        except OSError as exc:
            raise HostError(f"cannot write the pod's files in {files.directory}", exc.errno) from exc
        if not plan.host_network:
            self._netns.pin_namespace("uts", files.uts, hostname=plan.hostname)
        if not plan.host_ipc:
            self._netns.pin_namespace("ipc", files.ipc)
            try:
                files.mount_shm()
            except OSError as exc:
                raise HostError(str(exc.strerror), exc.errno) from exc
        for key, value in plan.sysctls.items():
            kind = sysctl_namespace(key, host_network=plan.host_network, host_ipc=plan.host_ipc)
            if kind != "net":
                self._netns.set_sysctl(kind, files.ipc if kind == "ipc" else files.uts,
                                       sysctl_path(key), value, name=key)
        return self._start_init(files) if plan.pid_mode == POD else None

    def after_network(self, sandbox_id: str, plan: PodPlan, netns_path: str, ip: str) -> None:
        """The ``net.*`` sysctls, in the netns the CNI chain set up, and the hosts file
        with the pod's address."""
        for key, value in plan.sysctls.items():
            if sysctl_namespace(key, host_network=plan.host_network, host_ipc=plan.host_ipc) == "net":
                self._netns.set_sysctl("net", netns_path, sysctl_path(key), value, name=key)
        if not plan.host_network and ip:
            try:
                self.files(sandbox_id).set_ip(plan.hostname, ip)
            except OSError as exc:
                raise HostError("cannot write the pod's hosts file", exc.errno) from exc

    def _start_init(self, files: PodFiles) -> PidInit:
        argv = [self.unshare, "--pid", "--fork", "--kill-child=SIGKILL", self.catatonit, "-P"]
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, start_new_session=True,
                                    close_fds=True)
        except OSError as exc:
            raise HostError(f"cannot start the pod's PID namespace init ({self.catatonit})",
                            exc.errno) from exc
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            child = _first_child(proc.pid)
            if child and _pid_ns(child) != _pid_ns(os.getpid()):
                init = PidInit(proc.pid, child, start_time(child))
                with open(os.path.join(files.directory, "pid-init"), "w") as f:
                    f.write(f"{proc.pid} {child}\n")
                return init
            if proc.poll() is not None:
                break
            time.sleep(0.002)
        proc.kill()
        proc.wait()
        raise HostError(f"the pod's PID namespace init ({self.catatonit}) did not start")

    # -- tear down ------------------------------------------------------------------

    def stop_init(self, init: PidInit | None) -> None:
        """Kill the PID namespace (its init, and so every process left in it)."""
        if init is None or not init.alive():
            return
        for pid in (init.pid, init.holder):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and init.alive():
            time.sleep(0.005)
        for pid in (init.holder,):   # our child when we started it; reap it if so
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass

    def release(self, sandbox_id: str) -> None:
        """Unpin the IPC and UTS namespaces and unmount /dev/shm (idempotent)."""
        files = self.files(sandbox_id)
        for path in (files.ipc, files.uts):
            self._netns.unpin(path)
        try:
            files.unmount_shm()
        except OSError as exc:
            raise HostError(str(exc.strerror), exc.errno) from exc

    def remove(self, sandbox_id: str) -> None:
        self.release(sandbox_id)
        self.files(sandbox_id).remove()

    def recover_init(self, init: PidInit | None) -> PidInit | None:
        """The init of a pod recorded before a restart, if it still runs."""
        return init if init is not None and init.alive() else None


def _first_child(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            children = f.read().split()
    except OSError:
        return 0
    return int(children[0]) if children else 0


def _pid_ns(pid: int) -> int:
    try:
        return os.stat(f"/proc/{pid}/ns/pid").st_ino
    except OSError:
        return 0
