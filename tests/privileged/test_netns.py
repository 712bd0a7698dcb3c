"""Pinning pod netns through the pinner helper: fast path, failures, and recovery."""

from __future__ import annotations

import os
import subprocess

import pytest

from cri_shim import netns

pytestmark = pytest.mark.privileged


def own_netns() -> int:
    return os.stat("/proc/self/ns/net").st_ino


def test_pin_unpin_and_loopback(tmp_path) -> None:
    before = own_netns()
    path = netns.new_path(str(tmp_path))
    netns.pin(path, loopback_up=True)
    try:
        assert netns.is_pinned(path)
        assert os.stat(path).st_ino != before          # a namespace of its own
        out = subprocess.run(["nsenter", f"--net={path}", "ip", "-o", "link", "show", "lo"],
                             capture_output=True, text=True, check=True).stdout
        assert ",UP," in out
    finally:
        netns.unpin(path)
    assert not os.path.exists(path)
    netns.unpin(path)                                  # idempotent
    assert own_netns() == before                       # the server never moved


def test_existing_path_is_an_error_and_left_alone(tmp_path) -> None:
    path = tmp_path / "cni-taken"
    path.write_text("someone else's")
    with pytest.raises(netns.NetnsError):
        netns.pin(str(path))
    assert path.read_text() == "someone else's"


def test_a_dead_helper_is_replaced(tmp_path) -> None:
    netns.start_helper()
    proc = netns._PINNER._proc
    assert proc is not None
    proc.kill()
    proc.wait()
    path = netns.new_path(str(tmp_path))
    netns.pin(path)
    assert netns.is_pinned(path)
    netns.unpin(path)
