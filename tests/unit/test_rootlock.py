"""One server per root: the claim, its refusal, and its release."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from cri_shim import rootlock


def test_second_claim_is_refused_naming_the_holder(tmp_path) -> None:
    first = rootlock.claim(str(tmp_path))
    with pytest.raises(rootlock.RootInUse) as exc:
        rootlock.claim(str(tmp_path))
    assert str(exc.value) == (f"root {tmp_path} is in use by another cri-shim (pid {os.getpid()}); "
                              "refusing to start (one server per root)")
    first.release()
    rootlock.claim(str(tmp_path)).release()   # free again


def test_claim_is_held_by_the_process_not_inherited(tmp_path) -> None:
    claim = rootlock.claim(str(tmp_path))
    # A child (a plugin, conmon) does not keep the lock: the descriptor is close-on-exec.
    code = ("import sys; sys.path.insert(0, sys.argv[2]); from cri_shim import rootlock; "
            "rootlock.claim(sys.argv[1])")
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    child = subprocess.Popen(["sleep", "5"], close_fds=False)   # inherits all it may
    try:
        claim.release()
        subprocess.run([sys.executable, "-c", code, str(tmp_path), repo], check=True, timeout=30)
    finally:
        child.kill()
        child.wait()


def test_serve_refuses_before_touching_the_root(tmp_path) -> None:
    claim = rootlock.claim(str(tmp_path / "root"))
    (tmp_path / "root" / "sandboxes").mkdir()
    stray = tmp_path / "root" / "sandboxes" / ".x.json.1234.tmp"   # a live server's temp file
    stray.write_text("{}")
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.run([sys.executable, "-m", "cri_shim", "serve", "--root", str(tmp_path / "root"),
                           "--state", str(tmp_path / "state"), "--listen", str(tmp_path / "s.sock"),
                           "--cni-conf-dir", str(tmp_path / "net.d")],
                          capture_output=True, text=True, timeout=60, cwd=repo)
    claim.release()
    assert proc.returncode == 1
    assert "is in use by another cri-shim" in proc.stderr
    assert stray.exists() and not (tmp_path / "s.sock").exists()
