"""The floor: the CNI chain run directly, with no cri-shim code on the path.

What a caller that does nothing but the required work does for one pod, the way
containerd (go-cni) and libcni would:

1. pin a netns: create the file, ``unshare --net=FILE true`` (util-linux makes the
   namespace in a child and bind-mounts it; cri_shim/netns.py does the same);
2. ADD the loopback network (go-cni's built-in ``cni-loopback``, ifname ``lo``), then
   each plugin of the conflist in order (``eth0``), threading ``prevResult``;
3. DEL: the loopback network, then the conflist's plugins in reverse with the last
   ADD result as ``prevResult`` (spec >= 0.4.0; libcni's rule);
4. unpin: lazy unmount and unlink.

Each plugin is one ``subprocess`` run with the process environment plus the six
``CNI_*`` variables and the stdin libcni would marshal (the plugin's object plus
``name``, ``cniVersion``, ``prevResult`` and ``runtimeConfig`` with the declared
capabilities; compact JSON with sorted keys, as Go marshals a map). The result is
kept in memory: libcni's cache file write is bookkeeping, not the floor.

This module must not import ``cri_shim`` or ``cni``: it is what they are measured against.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import json
import os
import shutil
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

# go-cni's built-in loopback network (what cri-shim and containerd add first).
LOOPBACK_CONFLIST: dict[str, Any] = {"cniVersion": "0.3.1", "name": "cni-loopback",
                                     "plugins": [{"type": "loopback"}]}

_MNT_DETACH = 2
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_UNSHARE = shutil.which("unshare", path=os.environ.get("PATH", "") + ":/usr/bin:/bin") or "unshare"


class ChainError(RuntimeError):
    """A plugin failed, or a netns could not be pinned."""


def pin(path: str) -> None:
    """Create a network namespace bind-mounted on *path* (in a child: ``unshare``)."""
    fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0o444)
    os.close(fd)
    proc = subprocess.run([_UNSHARE, f"--net={path}", "true"], capture_output=True, close_fds=True)
    if proc.returncode != 0:
        unpin(path)
        raise ChainError(f"unshare --net={path}: {proc.stderr.decode(errors='replace').strip()}")


def unpin(path: str) -> None:
    """Lazy-unmount and unlink a pinned netns; a missing one is fine."""
    if _libc.umount2(os.fsencode(path), _MNT_DETACH) != 0:
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOENT):
            raise ChainError(f"umount {path}: {os.strerror(err)}")
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def marshal(obj: Any) -> bytes:
    """JSON as Go's encoding/json writes a map: compact, keys sorted."""
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


@dataclass(frozen=True)
class Network:
    """One conflist, parsed just enough to build each plugin's stdin."""

    name: str
    cni_version: str
    plugins: tuple[dict[str, Any], ...]
    ifname: str

    @classmethod
    def from_conflist(cls, conflist: Mapping[str, Any], ifname: str) -> "Network":
        return cls(conflist["name"], conflist["cniVersion"], tuple(conflist["plugins"]), ifname)

    def stdin(self, plugin: Mapping[str, Any], prev_result: Any, caps: Mapping[str, Any]) -> bytes:
        conf = dict(plugin)
        conf["name"], conf["cniVersion"] = self.name, self.cni_version
        if prev_result is not None:
            conf["prevResult"] = prev_result
        declared = plugin.get("capabilities") or {}
        runtime_config = {k: v for k, v in caps.items() if declared.get(k) and v is not None}
        if runtime_config:
            conf["runtimeConfig"] = runtime_config
        return marshal(conf)

    @property
    def prev_result_on_del(self) -> bool:
        major_minor = tuple(int(x) for x in self.cni_version.split(".")[:2])
        return major_minor >= (0, 4)


@dataclass
class Attachment:
    """One pod's netns and the last ADD result of each network (for DEL)."""

    container_id: str
    netns: str
    cni_args: str
    results: dict[str, Any] = field(default_factory=dict)   # ifname -> result
    steps: dict[str, float] = field(default_factory=dict)   # step -> seconds


class RawChain:
    """Runs the chain for pods; thread-safe. Pods not deleted yet are remembered (a
    lock guards that set only) so ``delete_all`` can tear them down after a failure
    or Ctrl-C."""

    _live: dict[str, tuple["RawChain", Attachment]] = {}
    _live_lock = threading.Lock()

    def __init__(self, networks: Sequence[Network], bin_dirs: Sequence[str], netns_dir: str,
                 capability_args: Mapping[str, Any] | None = None, timeout: float = 60.0) -> None:
        self.networks = tuple(networks)
        self.bin_dirs = tuple(bin_dirs)
        self.netns_dir = netns_dir
        # What cri-shim offers for a pod without host ports (only declared ones are sent).
        self.caps = dict(capability_args if capability_args is not None else {"portMappings": []})
        self.timeout = timeout
        self._paths = {p["type"]: self._find(p["type"]) for n in self.networks for p in n.plugins}
        os.makedirs(netns_dir, exist_ok=True)

    def _find(self, plugin_type: str) -> str:
        for d in self.bin_dirs:
            path = os.path.join(d, plugin_type)
            if os.path.isfile(path):
                return path
        raise ChainError(f"plugin {plugin_type} is in none of {', '.join(self.bin_dirs)}")

    def _exec(self, att: Attachment, net: Network, plugin: Mapping[str, Any], command: str,
              stdin: bytes) -> bytes:
        env = dict(os.environ, CNI_COMMAND=command, CNI_CONTAINERID=att.container_id,
                   CNI_NETNS=att.netns, CNI_IFNAME=net.ifname, CNI_ARGS=att.cni_args,
                   CNI_PATH=os.pathsep.join(self.bin_dirs))
        start = time.perf_counter()
        proc = subprocess.run([self._paths[plugin["type"]]], input=stdin, capture_output=True,
                              env=env, close_fds=True, timeout=self.timeout)
        att.steps[f"{command} {plugin['type']}"] = (att.steps.get(f"{command} {plugin['type']}", 0.0)
                                                     + time.perf_counter() - start)
        if proc.returncode != 0:
            raise ChainError(f"{plugin['type']} {command} for {att.container_id[:12]} failed "
                             f"({proc.returncode}): {proc.stdout.decode(errors='replace').strip()} "
                             f"{proc.stderr.decode(errors='replace').strip()}")
        return proc.stdout

    def add(self, pod_name: str, namespace: str = "bench", uid: str = "") -> Attachment:
        """Pin a netns and ADD every network; returns what DEL needs. On failure the
        half-made pod is torn down before the error is raised."""
        container_id = uuid.uuid4().hex + uuid.uuid4().hex
        cni_args = ";".join(f"{k}={v}" for k, v in (
            ("IgnoreUnknown", "1"), ("K8S_POD_NAMESPACE", namespace), ("K8S_POD_NAME", pod_name),
            ("K8S_POD_INFRA_CONTAINER_ID", container_id), ("K8S_POD_UID", uid or f"uid-{pod_name}")))
        att = Attachment(container_id, os.path.join(self.netns_dir, f"cni-{uuid.uuid4()}"), cni_args)
        start = time.perf_counter()
        pin(att.netns)
        att.steps["pin"] = time.perf_counter() - start
        try:
            for net in self.networks:
                prev: Any = None
                for plugin in net.plugins:
                    out = self._exec(att, net, plugin, "ADD", net.stdin(plugin, prev, self.caps))
                    prev = json.loads(out)
                att.results[net.ifname] = prev
        except BaseException:
            self.delete(att)
            raise
        with self._live_lock:
            self._live[container_id] = (self, att)
        return att

    def delete(self, att: Attachment) -> None:
        """DEL every network (each plugin list in reverse, with prevResult), then unpin.
        All DELs run; the first failure is raised after the unpin."""
        with self._live_lock:
            self._live.pop(att.container_id, None)
        failure: ChainError | None = None
        for net in self.networks:
            prev = att.results.get(net.ifname) if net.prev_result_on_del else None
            for plugin in reversed(net.plugins):
                try:
                    self._exec(att, net, plugin, "DEL", net.stdin(plugin, prev, self.caps))
                except ChainError as exc:
                    failure = failure or exc
        start = time.perf_counter()
        unpin(att.netns)
        att.steps["unpin"] = time.perf_counter() - start
        if failure is not None:
            raise failure

    @classmethod
    def delete_all(cls) -> int:
        """DEL every pod some RawChain added and nobody deleted; returns how many."""
        with cls._live_lock:
            left = list(cls._live.values())
        for chain, att in left:
            try:
                chain.delete(att)
            except ChainError:
                pass   # the supervisor's sweep still unpins it; the node netns goes
        return len(left)

    @staticmethod
    def pod_ip(att: Attachment, ifname: str = "eth0") -> str:
        """eth0's first IP address (without the prefix length)."""
        result = att.results.get(ifname) or {}
        ips = result.get("ips") or []
        return ips[0]["address"].split("/")[0] if ips else ""
