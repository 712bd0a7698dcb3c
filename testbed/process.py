"""Commands and processes: run, wait for, stop."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["REPO", "sh", "env", "stop", "wait_for"]

REPO = Path(__file__).resolve().parents[1]


def sh(*cmd: str, check: bool = True, timeout: float = 120) -> str:
    """Run *cmd*, return its stdout; raise ``RuntimeError`` with its stderr when it
    fails and *check* is set."""
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def env(**extra: str) -> dict[str, str]:
    """The environment for processes we start in our namespaces: no proxy settings
    (their only peers are in these namespaces) and the repo first on ``PYTHONPATH``."""
    base = {k: v for k, v in os.environ.items()
            if k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")}
    base["PYTHONPATH"] = str(REPO)
    base.update(extra)
    return base


def stop(proc: subprocess.Popen | None, sig: int = signal.SIGTERM, timeout: float = 15) -> None:
    """Send *sig*, wait up to *timeout*, then SIGKILL; a gone process is fine."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_for(cond: Callable[[], bool], what: str, log: Callable[[], str] = lambda: "",
             *, proc: subprocess.Popen | None = None, timeout: float = 30) -> None:
    """Poll *cond* until it holds; raise ``RuntimeError`` naming *what* (with *log*'s
    text) at *timeout*, or as soon as *proc* exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"waiting for {what}: the process exited {proc.returncode}\n{log()}")
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what}\n{log()}")
