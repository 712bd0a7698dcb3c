"""Where a container's cgroups are, and what they say (CPU, memory, OOM kills).

cgroup v1 (one hierarchy per controller, as on this project's machines, hybrid with a
controller-less v2 tree beside it) and v2 (one unified tree) are both read. The
directories come from the spec's ``cgroupsPath``, in either driver's form: cgroupfs
(``/kubepods/besteffort/pod<uid>/<id>``) or systemd (``slice:prefix:name``, the slice
expanded as systemd nests it: ``a-b-c.slice`` lives in ``a.slice/a-b.slice/``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

__all__ = ["Hierarchies", "CgroupStats", "cgroup_relpath", "read_stats", "remove"]


_NOT_CONTROLLERS = {"rw", "ro", "xattr", "clone_children", "noprefix", "cpuset_v2_mode"}


@dataclass(frozen=True)
class Hierarchies:
    """Mount points: ``v1`` controller -> dir; ``unified`` the v2 mount ("" if none);
    ``pure_v2`` when v2 is the only hierarchy."""

    v1: dict[str, str]
    unified: str
    pure_v2: bool

    @classmethod
    def of_this_machine(cls, mountinfo: str = "/proc/self/mountinfo") -> "Hierarchies":
        v1: dict[str, str] = {}
        unified = ""
        with open(mountinfo) as f:
            for line in f:
                left, _, right = line.partition(" - ")
                fields, extra = left.split(), right.split()
                if len(fields) < 5 or len(extra) < 3:
                    continue
                point = fields[4]
                if extra[0] == "cgroup2":
                    unified = unified or point
                elif extra[0] == "cgroup":
                    for opt in extra[2].split(","):
                        if opt not in _NOT_CONTROLLERS and ("=" not in opt or opt.startswith("name=")):
                            v1.setdefault(opt, point)
        return cls(v1, unified, pure_v2=not v1 and bool(unified))

    def dir(self, controller: str, rel: str) -> str:
        """The directory of *rel* for *controller* ("" when there is no such hierarchy)."""
        if self.pure_v2:
            return os.path.join(self.unified, rel.lstrip("/"))
        base = self.v1.get(controller, "")
        return os.path.join(base, rel.lstrip("/")) if base else ""


def cgroup_relpath(cgroups_path: str, systemd: bool) -> str:
    """The path of a spec's ``cgroupsPath`` below each hierarchy's root."""
    if not systemd:
        return "/" + cgroups_path.lstrip("/")
    slice_, _, rest = cgroups_path.partition(":")
    prefix, _, name = rest.partition(":")
    parts = []
    if slice_ and slice_ != "-.slice":
        stem = slice_[:-len(".slice")] if slice_.endswith(".slice") else slice_
        pieces = stem.split("-")
        parts = ["-".join(pieces[:i + 1]) + ".slice" for i in range(len(pieces))]
    unit = f"{prefix}-{name}.scope" if prefix else f"{name}.scope"
    return "/" + "/".join([*parts, unit])


@dataclass(frozen=True)
class CgroupStats:
    cpu_usage_ns: int = 0
    memory_usage: int = 0
    memory_working_set: int = 0
    memory_rss: int = 0
    page_faults: int = 0
    major_page_faults: int = 0
    oom_kills: int = 0


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def _keyed(text: str) -> dict[str, int]:
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if value.strip().lstrip("-").isdigit():
            out[key] = int(value)
    return out


def read_stats(h: Hierarchies, rel: str) -> CgroupStats:
    """The container's usage now; zeros for what cannot be read (it exited)."""
    if h.pure_v2:
        d = h.dir("", rel)
        cpu = _keyed(_read(os.path.join(d, "cpu.stat")))
        stat = _keyed(_read(os.path.join(d, "memory.stat")))
        usage = int(_read(os.path.join(d, "memory.current")).strip() or 0)
        events = _keyed(_read(os.path.join(d, "memory.events")))
        return CgroupStats(cpu.get("usage_usec", 0) * 1000, usage,
                           max(usage - stat.get("inactive_file", 0), 0), stat.get("anon", 0),
                           stat.get("pgfault", 0), stat.get("pgmajfault", 0),
                           events.get("oom_kill", 0))
    cpu_text = _read(os.path.join(h.dir("cpuacct", rel), "cpuacct.usage")).strip()
    mem = h.dir("memory", rel)
    stat = _keyed(_read(os.path.join(mem, "memory.stat")))
    usage = int(_read(os.path.join(mem, "memory.usage_in_bytes")).strip() or 0)
    oom = _keyed(_read(os.path.join(mem, "memory.oom_control")))
    return CgroupStats(int(cpu_text or 0), usage,
                       max(usage - stat.get("total_inactive_file", 0), 0),
                       stat.get("total_rss", 0), stat.get("total_pgfault", 0),
                       stat.get("total_pgmajfault", 0), oom.get("oom_kill", 0))


def remove(h: Hierarchies, rel: str) -> None:
    """Remove the container's cgroup dirs if the runtime left any (empty dirs only:
    a cgroup with processes cannot be removed, and is left as it is)."""
    dirs = {h.dir("", rel)} if h.pure_v2 else {h.dir(c, rel) for c in h.v1}
    if h.unified and not h.pure_v2:
        dirs.add(os.path.join(h.unified, rel.lstrip("/")))
    for d in sorted(x for x in dirs if x):
        # Children first: rmdir of a cgroup dir works only once it has none.
        for sub, _, _ in sorted(os.walk(d), key=lambda t: -len(t[0])):
            try:
                os.rmdir(sub)
            except OSError:
                pass
