"""What happened when a pod got (or gave back) its IP: recorded as it happens, stored
with the sandbox, shown by ``cri-shim ctl explain`` and in ``PodSandboxStatus``'s
verbose info (so ``crictl inspectp`` has it too).

A trace is plain JSON (it lives in the sandbox record, so it survives a restart):

``{"operation": "RunPodSandbox", "started_ns": ..., "config": {...}, "steps": [...],
"outcome": {...}, "recording_ms": 0.04}``

``config`` is what was read: the runtime config file, the CNI conf dir, ``max_conf_num``
and each file there with what became of it (``chosen``, ``skipped`` with the reason,
``not read`` past ``max_conf_num``). Each step has ``kind`` (``netns``, ``exec``),
``at_ms`` (from the start) and ``ms``; an exec step has the plugin, its path, the
command, the CNI_* environment, the stdin as the plugin got it and what it printed
(and its stderr, when it wrote any: flannel writes there the config it gave its
delegate).

Bounded: at most ``MAX_STEPS`` steps (the rest counted in ``dropped_steps``),
``MAX_TEXT`` characters of each stdin, output and stderr (cut in the middle, marked;
bytes that are not UTF-8 kept as ``\\xNN``), and ``MAX_BYTES`` of JSON in all (texts of
the latest steps dropped first).
"""

from __future__ import annotations

import json
import os
import threading
import time
import weakref
from typing import Any

import libcni

__all__ = ["Trace", "Recorder", "MAX_STEPS", "MAX_TEXT", "conf_dir_files"]

MAX_STEPS = 48
MAX_TEXT = 4096
MAX_BYTES = 64 << 10   # the whole trace as JSON; beyond it texts are dropped, latest first


def _cut(data: bytes) -> str:
    text = data.decode("utf-8", "backslashreplace")
    if len(text) <= MAX_TEXT:
        return text
    keep = MAX_TEXT // 2
    return f"{text[:keep]} ... [{len(text) - 2 * keep} characters cut] ... {text[-keep:]}"


class Trace:
    """One operation's record; thread-safe (a pod's networks are set up concurrently)."""

    def __init__(self, operation: str, config: dict[str, Any] | None = None,
                 networks: dict[str, str] | None = None) -> None:
        self.t0 = time.monotonic()
        self.networks = networks or {}   # ifname -> network name
        self.data: dict[str, Any] = {"operation": operation, "started_ns": time.time_ns(),
                                     "config": config or {}, "steps": [], "outcome": {}}
        self.cost = 0.0   # seconds spent recording
        self._lock = threading.Lock()

    def step(self, kind: str, started: float, seconds: float, **detail: Any) -> None:
        t = time.perf_counter()
        entry = {"kind": kind, "at_ms": round((started - self.t0) * 1e3, 2),
                 "ms": round(seconds * 1e3, 2), **detail}
        with self._lock:
            steps = self.data["steps"]
            if len(steps) < MAX_STEPS:
                steps.append(entry)
            else:
                self.data["dropped_steps"] = self.data.get("dropped_steps", 0) + 1
            self.cost += time.perf_counter() - t

    def exec_step(self, record: libcni.PluginExec) -> None:
        t = time.perf_counter()
        env = {k: v for k, v in record.env.items() if k.startswith("CNI_")}
        detail = {"plugin": record.plugin, "path": record.path, "command": record.command,
                  "ifname": record.ifname, "network": self.networks.get(record.ifname, ""), "env": env,
                  "stdin": _cut(record.stdin), "output": _cut(record.stdout),
                  "outcome": record.outcome}
        if record.stderr.strip():
            detail["stderr"] = _cut(record.stderr)
        with self._lock:
            self.cost += time.perf_counter() - t
        self.step("exec", record.started, record.duration, **detail)

    def finish(self, **outcome: Any) -> dict[str, Any]:
        """The trace as JSON, with *outcome* (what the operation ended with)."""
        t = time.perf_counter()
        with self._lock:
            self.data["outcome"].update(outcome)
            self.data["ms"] = round((time.monotonic() - self.t0) * 1e3, 2)
            self.data["steps"].sort(key=lambda s: s["at_ms"])
            _fit(self.data)
            self.cost += time.perf_counter() - t
            self.data["recording_ms"] = round(self.cost * 1e3, 3)
            return self.data


def _fit(data: dict[str, Any]) -> None:
    """Keep *data* under ``MAX_BYTES`` of JSON: drop the texts of the latest steps
    first (the early ones say how it began), marking each."""
    # Most traces are a few kilobytes: sized without encoding them (a text's JSON is
    # at most 6 bytes a character; each step's other fields well under 2 KiB).
    texts = sum(len(step.get(k, "")) for step in data["steps"] for k in ("stdin", "output", "stderr"))
    if 6 * texts + 2048 * (len(data["steps"]) + 1) <= MAX_BYTES or len(json.dumps(data)) <= MAX_BYTES:
        return
    for step in reversed(data["steps"]):
        for key in ("stderr", "output", "stdin"):
            if key in step:
                step[key] = f"[dropped: the trace is kept under {MAX_BYTES} bytes]"
        if len(json.dumps(data)) <= MAX_BYTES:
            return


class Recorder:
    """Routes libcni's plugin-exec reports to the trace of the sandbox they are for
    (``CNI_CONTAINERID`` is the sandbox id)."""

    def __init__(self) -> None:
        self._active: dict[str, Trace] = {}
        self._lock = threading.Lock()
        ref = weakref.ref(self)

        def observe(record: libcni.PluginExec) -> None:
            me = ref()
            if me is None:
                libcni.remove_observer(observe)   # the recorder is gone
            else:
                me.observe(record)
        libcni.add_observer(observe)

    def begin(self, sandbox_id: str, trace: Trace) -> Trace:
        with self._lock:
            self._active[sandbox_id] = trace
        return trace

    def end(self, sandbox_id: str) -> None:
        with self._lock:
            self._active.pop(sandbox_id, None)

    def observe(self, record: libcni.PluginExec) -> None:
        with self._lock:
            trace = self._active.get(record.container_id)
        if trace is not None:
            trace.exec_step(record)


def conf_dir_files(status: Any, max_conf_num: int) -> list[dict[str, str]]:
    """Every file of the CNI conf dir, in the order libcni reads them, and what became
    of it: *status* is ``PodNetwork.status()`` (its networks and skipped files)."""
    chosen = {n.source: n.name for n in status.networks if n.source}
    skipped = {s.path: s.reason for s in status.skipped}
    try:
        names = sorted(n for n in os.listdir(status.conf_dir)
                       if os.path.splitext(n)[1] in libcni.CONF_EXTENSIONS)
    except OSError as exc:
        return [{"path": status.conf_dir, "status": "unreadable", "reason": exc.strerror or str(exc)}]
    out = []
    for name in names:
        path = os.path.join(status.conf_dir, name)
        if path in chosen:
            out.append({"path": path, "status": "chosen", "network": chosen[path]})
        elif path in skipped:
            out.append({"path": path, "status": "skipped", "reason": skipped[path]})
        else:
            out.append({"path": path, "status": "not read",
                        "reason": f"max_conf_num = {max_conf_num}: enough networks before it"})
    return out
