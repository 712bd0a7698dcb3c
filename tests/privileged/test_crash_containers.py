"""kill -9 of the server in the middle of each container call (issue 14), with a
container beside it that must not notice. runc is wrapped by a script that waits two
seconds before the chosen subcommand, so the window is wide enough to hit; the
server dies inside it, the runc it started finishes or not on its own, and the
server that comes next must leave nothing half made: a container is either whole
(and works) or gone, the witness still runs under the same id, and once the pod is
removed nothing at all is left."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import grpc
import pytest

from cri_shim.api import api_pb2 as pb
from testbed.containers import PodWorld, container_config

pytestmark = pytest.mark.privileged

SLOW_RUNC = """#!/bin/sh
# runc, but waiting before the subcommand named in {ctl} (and saying so in {ctl}.hit)
sub=""
skip=0
for a in "$@"; do
  if [ "$skip" = 1 ]; then skip=0; continue; fi
  case "$a" in
    --root|--log|--log-format) skip=1 ;;
    -*) ;;
    *) sub="$a"; break ;;
  esac
done
if [ -f "{ctl}" ] && [ "$(cat "{ctl}")" = "$sub" ]; then
  : > "{ctl}.hit"
  sleep 2
fi
exec /usr/sbin/runc "$@"
"""


def slow_world(tmp_path: Path) -> tuple[PodWorld, Path]:
    ctl = tmp_path / "slow-on"
    wrapper = tmp_path / "slow-runc"
    wrapper.write_text(SLOW_RUNC.format(ctl=ctl))
    wrapper.chmod(0o755)
    toml = f'''[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
  BinaryName = "{wrapper}"
'''
    return PodWorld(tmp_path, extra_toml=toml).start(), ctl


def crash_during(world: PodWorld, ctl: Path, subcommand: str, call, after: float | None = None) -> object:
    """Run *call* in a thread, kill -9 the server once runc's *subcommand* is waiting
    (or *after* seconds, for a call that runs no runc subcommand), let that runc
    finish, restart the server. Returns what the call got."""
    hit = Path(f"{ctl}.hit")
    hit.unlink(missing_ok=True)
    if after is None:
        ctl.write_text(subcommand)
    got: list = []

    def run() -> None:
        try:
            got.append(call())
        except grpc.RpcError as exc:
            got.append(exc.code())
    t = threading.Thread(target=run)
    t.start()
    deadline = time.monotonic() + 30
    if after is not None:
        time.sleep(after)
    while after is None and not hit.exists():
        assert time.monotonic() < deadline, f"runc {subcommand} never ran:\n{world.server.log_tail()}"
        time.sleep(0.005)
    os.kill(world.server.pid, signal.SIGKILL)
    t.join(30)
    ctl.unlink(missing_ok=True)
    time.sleep(2.5)          # the orphaned runc finishes what it was doing, or not
    world.server.stop()
    world.server.start()
    world.rt, world.img = world.server.runtime, world.server.image
    return got[0] if got else None


# StartContainer runs no runc subcommand (it opens runc's exec.fifo, 1-2 ms): it is hit
# at a few delays after the call instead of inside a waiting runc.
@pytest.mark.parametrize("point,after", [("create", None), ("start", 0.0), ("start", 0.001),
                                         ("start", 0.003), ("kill", None), ("delete", None)])
def test_kill_9_mid_container_call(tmp_path: Path, point: str, after: float | None) -> None:
    world, ctl = slow_world(tmp_path)
    try:
        world.busybox()
        sid = world.run_pod("crash")
        witness = world.run(sid, container_config("witness", command=["sleep", "1000"]))
        target = ""
        if point != "create":
            target = world.create(sid, container_config("target", command=["sleep", "1000"]))
        if point in ("kill", "delete"):
            world.start_container(target)
        if point == "delete":
            world.stop(target, timeout=1)

        calls = {
            "create": lambda: world.create(sid, container_config("target", command=["sleep", "1000"])),
            "start": lambda: world.start_container(target),
            "kill": lambda: world.stop(target, timeout=5),
            "delete": lambda: world.remove(target),
        }
        got = crash_during(world, ctl, point, calls[point], after)
        assert got in (None, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNKNOWN) or isinstance(got, str)

        # The witness did not notice.
        st = world.status(witness).status
        assert st.state == pb.CONTAINER_RUNNING and st.id == witness
        assert world.exec(witness, "echo", "-n", "still").stdout == b"still"
        # The target is whole or gone: whatever is listed works to the end.
        listed = {c.metadata.name: c for c in world.rt.ListContainers(pb.ListContainersRequest(),
                                                                       timeout=30).containers}
        assert set(listed) <= {"witness", "target"}
        if "target" in listed:
            t = listed["target"]
            if t.state == pb.CONTAINER_CREATED:
                world.start_container(t.id)
                assert world.exec(t.id, "true").exit_code == 0
            if world.state(t.id) == "CONTAINER_RUNNING":
                world.stop(t.id, timeout=1)
            assert world.state(t.id) == "CONTAINER_EXITED"
            world.remove(t.id)
        world.remove_pod(sid)
        assert world.leftovers() == {}
    finally:
        world.close()
