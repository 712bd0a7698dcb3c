"""What an unprivileged user on the node gets from a running cri-shim: nothing. Run
as a real unprivileged user (``nobody``, through ``setpriv``), in a work dir anyone may
traverse, so only cri-shim's own modes keep them out."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from cri_shim.api import api_pb2 as pb

from .harness import NodeNamespace, Shim, bridge_conflist, pod_config

pytestmark = pytest.mark.privileged

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]
PY = "/usr/bin/python3"   # Debian's: nobody may run it (a venv's python may be under /root)


@pytest.fixture
def open_shim() -> Iterator[Shim]:
    work = Path(tempfile.mkdtemp(prefix="crishim-perm-", dir="/tmp"))
    work.chmod(0o755)
    (work / "root").mkdir(mode=0o755)      # made by hand, too open: cri-shim tightens it
    (work / "root").chmod(0o755)
    node = NodeNamespace()
    shim = Shim(node, work)
    try:
        yield shim
    finally:
        shim.stop()
        shim.force_clean()
        node.close()
        shutil.rmtree(work, ignore_errors=True)


def as_nobody(*cmd: str, netns: str = "") -> subprocess.CompletedProcess:
    pre = ["nsenter", f"--net={netns}"] if netns else []
    return subprocess.run(pre + NOBODY + list(cmd), capture_output=True, text=True, timeout=30,
                          env={"PATH": "/usr/bin:/bin"})


def test_an_unprivileged_user_cannot_reach_the_socket_state_or_streams(open_shim: Shim) -> None:
    shim = open_shim
    shim.write_conf("10-test.conflist", bridge_conflist("testnet", "10.88.0.0/24", shim.ipam_dir))
    shim.start()
    sandbox_id = shim.runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=pod_config("p"))).pod_sandbox_id

    for d in (shim.root, shim.state):
        assert stat.S_IMODE(os.stat(d).st_mode) == 0o700, d
    st = os.stat(shim.socket)
    assert stat.S_IMODE(st.st_mode) == 0o660 and (st.st_uid, st.st_gid) == (0, 0)

    # The socket: connect refused to nobody (the CRI is root's).
    probe = as_nobody(PY, "-c", "import socket, sys; socket.socket(socket.AF_UNIX).connect(sys.argv[1])",
                      str(shim.socket))
    assert probe.returncode != 0 and "PermissionError" in probe.stderr, probe.stderr
    # The records: not listed, not read.
    records = [p for p in shim.root.rglob("*") if p.is_file() and sandbox_id in p.read_text(errors="ignore")]
    assert records
    assert "Permission denied" in as_nobody("ls", str(shim.root)).stderr
    assert "Permission denied" in as_nobody("cat", str(records[0])).stderr
    assert "Permission denied" in as_nobody("ls", str(shim.state)).stderr

    # The streaming server: nobody can connect to it (it is TCP) but gets nothing without
    # a token; the URL root's client got is single use and not theirs to guess.
    url = shim.runtime.PortForward(pb.PortForwardRequest(pod_sandbox_id=sandbox_id)).url
    base, _, token = url.rpartition("/")
    get = ("import sys, urllib.request, urllib.error\n"
           "try:\n    urllib.request.urlopen(sys.argv[1], timeout=10)\n"
           "except urllib.error.HTTPError as e:\n    print(e.code)\n")
    for guess in (f"{base}/{'x' * len(token)}", f"{base}/", base.rsplit("/", 1)[0] + "/"):
        out = as_nobody(PY, "-c", get, guess, netns=str(shim.node.path))
        assert out.stdout.strip() == "404", (guess, out.stdout, out.stderr)
    shim.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=sandbox_id))
    shim.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id))
    assert "made 0700" in shim.log()          # the hand-made root was too open, and said so
