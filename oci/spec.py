"""An OCI runtime spec for a container, built as containerd builds it for CRI: a
default spec (``default_spec``) changed by small functions, each testable alone; the
caller (the CRI side) chooses which to apply and in what order.

The default is containerd's ``populateDefaultUnixSpec`` with what its CRI plugin
changes for every container: no ``/run`` tmpfs, a read-only ``/sys/fs/cgroup``, no
rlimits (the process inherits the runtime's), ``noNewPrivileges`` false, no masked or
read-only paths (the CRI sends its own lists), devices denied but for what runc
always allows.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from .user import Accounts, UserError

__all__ = ["Spec", "Mount", "Device", "Resources", "SpecError", "default_spec", "DEFAULT_CAPS",
           "DEFAULT_PATH", "process_args", "with_env", "with_user", "with_additional_gids",
           "with_capabilities", "all_capabilities", "with_privileged", "with_mounts",
           "with_namespaces", "with_resources", "linux_resources", "with_devices", "device_at",
           "host_devices"]

Spec = dict[str, Any]

OCI_VERSION = "1.0.2-dev"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_CAPS = ("CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD",
                "CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP",
                "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE")
# Every capability the kernel knows, in number order (capability.h).
_ALL_CAPS = ("CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
             "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
             "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW",
             "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT",
             "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
             "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
             "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE",
             "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ",
             "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE")
_SETS = ("bounding", "effective", "permitted")


class SpecError(ValueError):
    """A container config that cannot become a spec; the message names what."""


@dataclass(frozen=True)
class Mount:
    destination: str
    source: str
    type: str = "bind"
    options: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"destination": self.destination, "type": self.type, "source": self.source,
                "options": list(self.options)}


@dataclass(frozen=True)
class Device:
    """A device node to create in the container, and the cgroup rule allowing it."""

    path: str
    type: str           # c, b or p
    major: int
    minor: int
    file_mode: int
    uid: int = 0
    gid: int = 0
    access: str = "rwm"


def _default_mounts() -> list[dict[str, Any]]:
    return [
        {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs",
         "options": ["nosuid", "noexec", "nodev", "ro"]},
        {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
         "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
    ]


def default_spec(rootfs: str = "rootfs") -> Spec:
    return {
        "ociVersion": OCI_VERSION,
        "process": {
            "terminal": False, "user": {"uid": 0, "gid": 0}, "args": [],
            "env": [f"PATH={DEFAULT_PATH}"], "cwd": "/",
            "capabilities": {s: list(DEFAULT_CAPS) for s in _SETS},
            "noNewPrivileges": False,
        },
        "root": {"path": rootfs, "readonly": False},
        "mounts": _default_mounts(),
        "linux": {
            "resources": {"devices": [{"allow": False, "access": "rwm"}]},
            "namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount", "network")],
            "maskedPaths": [],
            "readonlyPaths": [],
        },
        "annotations": {},
    }


# -- process -------------------------------------------------------------------------

def process_args(entrypoint: Sequence[str], cmd: Sequence[str], command: Sequence[str],
                 args: Sequence[str]) -> list[str]:
    """Kubernetes' rules: ``command`` replaces the image's Entrypoint and its Cmd;
    ``args`` alone replaces Cmd and keeps Entrypoint (an Entrypoint of ``[""]`` is
    none). Raises ``SpecError`` when nothing is left to run."""
    if command:
        out = [*command, *args]
    else:
        ep = [] if list(entrypoint) == [""] else list(entrypoint)
        out = [*ep, *(args or cmd)]
    if not out:
        raise SpecError("no command specified")
    return out


def with_env(spec: Spec, entries: Iterable[str]) -> None:
    """Replace-or-append by key, as containerd's ``WithEnv``: an entry without ``=``
    removes that key."""
    env: list[str] = spec["process"].setdefault("env", [])
    for entry in entries:
        key, sep, _ = entry.partition("=")
        found = next((i for i, e in enumerate(env) if e.partition("=")[0] == key), None)
        if not sep:
            if found is not None:
                del env[found]
            continue
        if found is None:
            env.append(entry)
        else:
            env[found] = entry


def with_user(spec: Spec, accounts: Accounts, user: str) -> None:
    """``uid``, ``name``, ``uid:gid``, ``name:group`` (either side a number or a
    name), as containerd's ``WithUser``; the primary gid is the first additional gid.
    Raises ``SpecError`` naming a user or group the image does not have."""
    proc_user = spec["process"]["user"]
    parts = user.split(":")
    if len(parts) > 2 or not parts[0]:
        raise SpecError(f"invalid USER value {user}")
    try:
        if len(parts) == 1:
            entry = accounts.uid_of(parts[0])
            uid, gid = entry.uid, entry.gid
        else:
            uid = int(parts[0]) if parts[0].isdigit() else accounts.uid_of(parts[0]).uid
            gid = accounts.gid_of(parts[1])
    except UserError as exc:
        raise SpecError(str(exc)) from None
    for value in (uid, gid):
        if value > 2**31 - 1:
            raise SpecError(f'invalid USER value "{user}": uid out of range')
    proc_user.update(uid=uid, gid=gid, additionalGids=[gid])


def with_additional_gids(spec: Spec, gids: Iterable[int]) -> None:
    """Add *gids* to the additional gids (sorted, each once, the primary included)."""
    user = spec["process"]["user"]
    merged = set(user.get("additionalGids") or [user.get("gid", 0)]) | set(gids)
    user["additionalGids"] = sorted(merged)


def all_capabilities() -> list[str]:
    """The capabilities this process has (containerd's ``cap.Current()``): what
    "ALL" and privileged containers get."""
    try:
        with open("/proc/self/status") as f:
            line = next(ln for ln in f if ln.startswith("CapEff:"))
        mask = int(line.split()[1], 16)
    except (OSError, StopIteration, ValueError):
        return list(_ALL_CAPS)
    return [c for i, c in enumerate(_ALL_CAPS) if mask >> i & 1]


def with_capabilities(spec: Spec, add: Sequence[str], drop: Sequence[str]) -> None:
    """CRI's add/drop (names without ``CAP_``, ``ALL`` meaning every one): add ALL
    first, then drop ALL, then each name (containerd's ``WithCapabilities``)."""
    caps = spec["process"]["capabilities"]
    if any(a.upper() == "ALL" for a in add):
        for s in _SETS:
            caps[s] = all_capabilities()
    if any(d.upper() == "ALL" for d in drop):
        for s in _SETS:
            caps[s] = []
    for name in add:
        if name.upper() == "ALL":
            continue
        cap = _cap(name)
        for s in _SETS:
            if cap not in caps[s]:
                caps[s].append(cap)
    for name in drop:
        if name.upper() == "ALL":
            continue
        cap = _cap(name)
        for s in (*_SETS, "inheritable"):
            if s in caps:
                caps[s] = [c for c in caps[s] if c != cap]
    caps.pop("ambient", None)


def _cap(name: str) -> str:
    upper = name.upper()
    return upper if upper.startswith("CAP_") else f"CAP_{upper}"


def with_privileged(spec: Spec) -> None:
    """Every capability, no masked or read-only paths, writable sysfs and cgroupfs,
    every device allowed (the host's devices are added by ``with_devices``)."""
    caps = spec["process"]["capabilities"]
    for s in _SETS:
        caps[s] = all_capabilities()
    linux = spec["linux"]
    linux["maskedPaths"], linux["readonlyPaths"] = [], []
    for m in spec["mounts"]:
        if m["type"] in ("sysfs", "cgroup"):
            m["options"] = ["rw" if o == "ro" else o for o in m["options"]]
    linux["resources"]["devices"] = [{"allow": True, "access": "rwm"}]


# -- mounts --------------------------------------------------------------------------

def with_mounts(spec: Spec, mounts: Sequence[Mount]) -> None:
    """Add bind mounts over the defaults, as containerd's ``WithMounts``: a default
    with the same destination goes (every default under ``/dev`` when ``/dev``
    itself is given); the mounts are ordered by depth (fewest ``/`` first, stable)."""
    wanted = {os.path.normpath(m.destination) for m in mounts}
    kept = []
    for m in spec["mounts"]:
        dest = os.path.normpath(m["destination"])
        if dest in wanted or ("/dev" in wanted and dest.startswith("/dev/")):
            continue
        kept.append(m)
    ordered = sorted(mounts, key=lambda m: os.path.normpath(m.destination).count("/"))
    spec["mounts"] = kept + [m.to_json() for m in ordered]
    for m in ordered:
        if "rshared" in m.options:
            spec["linux"]["rootfsPropagation"] = "rshared"
        elif "rslave" in m.options and spec["linux"].get("rootfsPropagation") not in ("rshared",
                                                                                         "rslave"):
            spec["linux"]["rootfsPropagation"] = "rslave"


# -- namespaces ------------------------------------------------------------------------

def with_namespaces(spec: Spec, namespaces: Mapping[str, str | None]) -> None:
    """*namespaces*: kind -> the path to join, "" for a new one, None for the host's
    (the namespace is left out of the spec)."""
    out = []
    for ns in spec["linux"]["namespaces"]:
        kind = ns["type"]
        if kind not in namespaces:
            out.append(ns)
            continue
        path = namespaces[kind]
        if path is None:
            continue
        out.append({"type": kind, "path": path} if path else {"type": kind})
    for kind, path in namespaces.items():
        if path is not None and not any(n["type"] == kind for n in out):
            out.append({"type": kind, "path": path} if path else {"type": kind})
    spec["linux"]["namespaces"] = out


# -- resources and devices ---------------------------------------------------------------

@dataclass(frozen=True)
class Resources:
    cpu_period: int = 0
    cpu_quota: int = 0
    cpu_shares: int = 0
    memory_limit: int = 0
    memory_swap_limit: int = 0
    cpuset_cpus: str = ""
    cpuset_mems: str = ""
    hugepage_limits: tuple[tuple[str, int], ...] = ()
    unified: Mapping[str, str] = field(default_factory=dict)


def linux_resources(r: Resources, *, swap_controller: bool) -> dict[str, Any]:
    """The OCI ``linux.resources`` for *r*: only values that are set (containerd's
    ``WithResources``); a memory limit without a swap limit means no swap."""
    cpu: dict[str, Any] = {}
    if r.cpu_period:
        cpu["period"] = r.cpu_period
    if r.cpu_quota:
        cpu["quota"] = r.cpu_quota
    if r.cpu_shares:
        cpu["shares"] = r.cpu_shares
    if r.cpuset_cpus:
        cpu["cpus"] = r.cpuset_cpus
    if r.cpuset_mems:
        cpu["mems"] = r.cpuset_mems
    memory: dict[str, Any] = {}
    if r.memory_limit:
        memory["limit"] = r.memory_limit
        if swap_controller:
            memory["swap"] = r.memory_swap_limit or r.memory_limit
    elif r.memory_swap_limit and swap_controller:
        memory["swap"] = r.memory_swap_limit
    out: dict[str, Any] = {"cpu": cpu, "memory": memory}
    if r.hugepage_limits:
        out["hugepageLimits"] = [{"pageSize": p, "limit": n} for p, n in r.hugepage_limits]
    if r.unified:
        out["unified"] = dict(r.unified)
    return out


def with_resources(spec: Spec, r: Resources, *, swap_controller: bool) -> None:
    res = spec["linux"]["resources"]
    res.update(linux_resources(r, swap_controller=swap_controller))


def with_devices(spec: Spec, devices: Sequence[Device]) -> None:
    linux = spec["linux"]
    nodes = linux.setdefault("devices", [])
    rules = linux["resources"].setdefault("devices", [])
    for d in devices:
        nodes.append({"path": d.path, "type": d.type, "major": d.major, "minor": d.minor,
                      "fileMode": d.file_mode, "uid": d.uid, "gid": d.gid})
        rules.append({"allow": True, "type": d.type, "major": d.major, "minor": d.minor,
                      "access": d.access})


def device_at(host_path: str, container_path: str, access: str) -> list[Device]:
    """The device node(s) at *host_path* (a directory: every device below it), for
    ``container_path``. Raises ``SpecError`` for a path that is no device."""
    real = os.path.realpath(host_path)
    try:
        st = os.stat(real)
    except OSError as exc:
        raise SpecError(f'get device path: "{host_path}": {exc.strerror}') from None
    if stat.S_ISDIR(st.st_mode):
        out = []
        for dirpath, _, files in os.walk(real):
            for name in sorted(files):
                p = os.path.join(dirpath, name)
                try:
                    sub = os.stat(p)
                except OSError:
                    continue
                if stat.S_ISCHR(sub.st_mode) or stat.S_ISBLK(sub.st_mode):
                    out.append(_device(p, os.path.join(container_path, os.path.relpath(p, real)),
                                       sub, access))
        return out
    if not (stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)):
        raise SpecError(f'get device path: "{host_path}" containerPath: "{container_path}" '
                        "error: not a device node")
    return [_device(real, container_path or real, st, access)]


def _device(host: str, path: str, st: os.stat_result, access: str) -> Device:
    kind = "c" if stat.S_ISCHR(st.st_mode) else "b"
    return Device(path, kind, os.major(st.st_rdev), os.minor(st.st_rdev),
                  stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, access or "rwm")


_HOST_DEVICE_SKIP = {"pts", "shm", "fd", "mqueue", ".lxc", ".lxd-mounts", ".udev"}


def host_devices() -> list[Device]:
    """Every device node under the node's ``/dev`` (what a privileged container gets),
    skipping what containerd skips."""
    out = []
    for dirpath, dirnames, files in os.walk("/dev"):
        dirnames[:] = [d for d in dirnames if d not in _HOST_DEVICE_SKIP]
        for name in sorted(files):
            p = os.path.join(dirpath, name)
            if p == "/dev/console":
                continue
            try:
                st = os.lstat(p)
            except OSError:
                continue
            if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                out.append(_device(p, p, st, "rwm"))
    return out
