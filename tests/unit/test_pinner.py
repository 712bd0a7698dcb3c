"""The pinner client's handling of a helper that stops answering (no root needed: the
helper is a stand-in that reads a request and never replies)."""

from __future__ import annotations

import errno
import subprocess
import sys
import time

import pytest

from cri_shim import pinner

WEDGED = "import sys, time\nfor line in sys.stdin:\n    time.sleep(3600)\n"


def wedged_pinner(monkeypatch) -> tuple[pinner.Pinner, list[subprocess.Popen]]:
    started: list[subprocess.Popen] = []

    def start(self: pinner.Pinner) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-c", WEDGED], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True, bufsize=1)
        started.append(proc)
        return proc
    monkeypatch.setattr(pinner.Pinner, "_start", start)
    monkeypatch.setattr(pinner, "REQUEST_TIMEOUT", 0.3)
    return pinner.Pinner(), started


def test_a_wedged_helper_times_out_is_killed_and_replaced(monkeypatch) -> None:
    p, started = wedged_pinner(monkeypatch)
    undone = []
    t = time.monotonic()
    with pytest.raises(OSError) as exc:
        p._request("PIN net - /run/netns/x", lambda: undone.append(True))
    assert exc.value.errno == errno.ETIMEDOUT
    assert "did not answer PIN in 0.3 s" in str(exc.value)
    assert time.monotonic() - t < 5
    assert undone == [True]                      # what it may have half done is undone
    assert started[0].poll() is not None         # the wedged helper is gone
    with pytest.raises(OSError):
        p.sysctl("net", "/run/netns/x", "net/ipv4/ip_forward", "1")
    assert len(started) == 2                     # the next request got a fresh helper
    assert started[1].poll() is not None
    p.close()
