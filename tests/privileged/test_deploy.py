"""What a node daemon install needs: the systemd unit (checked by systemd itself) and
the readiness notice that Type=notify waits for."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys

import pytest

from .harness import REPO, Shim, bridge_conflist

pytestmark = pytest.mark.privileged

UNIT = REPO / "deploy" / "cri-shim.service"


def test_the_systemd_unit_verifies(tmp_path) -> None:
    text = UNIT.read_text()
    for line in ("Type=notify", "KillMode=process", "Delegate=yes", "OOMScoreAdjust=-999"):
        assert f"\n{line}\n" in text
    assert "\nLimitNOFILE=" in text
    # systemd-analyze checks that ExecStart's binary exists: point it at ours.
    ours = shutil.which("cri-shim", path=os.path.dirname(sys.executable))
    assert ours, "cri-shim's entry point is not installed in the venv"
    unit = tmp_path / "cri-shim.service"
    unit.write_text(text.replace("/usr/local/bin/cri-shim", ours))
    proc = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stderr.strip() == "", proc.stderr


def test_ready_once_the_socket_serves_and_stopping_at_the_end(shim: Shim, tmp_path, monkeypatch) -> None:
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(30)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        shim.write_conf("10-test.conflist", bridge_conflist("testnet", "10.88.0.0/24", shim.ipam_dir))
        shim.start()
        assert sock.recv(100) == b"READY=1"
        # The server's children (the netns pinner here; runc and conmon too) do not get it.
        children = subprocess.run(["pgrep", "-P", str(shim.pid)], capture_output=True,
                                  text=True).stdout.split()
        assert children
        for pid in children:
            with open(f"/proc/{pid}/environ", "rb") as f:
                assert b"NOTIFY_SOCKET=" not in f.read()
        shim.stop()
        assert sock.recv(100) == b"STOPPING=1"
