"""Hard edges of the sandbox manager: teardown that cannot wedge, deadlines, and the
node failing us (netns, disk). Fake plugin runner and fake netns: no root needed."""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

import grpc
import pytest
from test_manager import Env, write_conflist

import libcni
from cri_shim.errors import NetnsError, NetworkError, StoreError, grpc_status
from cri_shim.store import NOTREADY, READY, MemoryStore, SandboxRecord


@pytest.fixture
def env(tmp_path: Path) -> Env:
    e = Env(tmp_path)
    write_conflist(e.conf_dir)
    return e


# -- DEL of what is already gone (go-cni's Remove) ---------------------------------------

@pytest.mark.parametrize("msg,details", [
    ("Link not found", ""),                           # netlink's "not found"
    ("failed to delete", 'chain "CNI-HOSTPORT" not found'),
])
def test_del_answering_not_found_counts_as_done(env: Env, msg: str, details: str) -> None:
    sandbox_id = env.run()
    env.exec.script("bridge", "DEL", error=(7, msg, details))
    env.manager.stop(sandbox_id)
    assert env.manager.get(sandbox_id).state == NOTREADY
    assert env.pinned() == [] and env.cached() == []
    env.manager.remove(sandbox_id)
    assert env.manager.list() == []


def test_enoent_is_done_only_when_the_netns_is_gone(env: Env) -> None:
    sandbox_id = env.run()
    env.exec.script("bridge", "DEL", error=(5, "open /proc/1/ns: no such file or directory", ""))
    with pytest.raises(NetworkError):   # the netns is still there: a real failure
        env.manager.stop(sandbox_id)
    assert env.manager.get(sandbox_id).state == READY
    netns = env.manager.get(sandbox_id).netns_path
    env.netns.unpin(netns)               # gone (the node rebooted): CNI_NETNS is empty
    env.manager.stop(sandbox_id)
    assert env.manager.get(sandbox_id).state == NOTREADY
    assert [c.cni_env["CNI_NETNS"] for c in env.exec.of("DEL")][-3:] == ["", "", ""]


def test_other_del_failures_still_keep_the_teardown_owed(env: Env) -> None:
    sandbox_id = env.run()
    env.exec.script("portmap", "DEL", error=(7, "not found", ""))    # gone: fine
    env.exec.script("bridge", "DEL", error=(11, "locked", ""))       # real: owed
    with pytest.raises(NetworkError, match="locked"):
        env.manager.stop(sandbox_id)
    assert env.manager.get(sandbox_id).state == READY and env.pinned()


# -- deadlines ---------------------------------------------------------------------------

def test_plugins_get_what_is_left_of_the_deadline(env: Env) -> None:
    sandbox_id = env.manager.run(env.spec("web"), deadline=time.monotonic() + 5)
    timeouts = [c.timeout for c in env.exec.of("ADD")]
    assert all(t is not None and 0 < t <= 5 for t in timeouts), timeouts
    env.exec.calls.clear()
    env.manager.stop(sandbox_id)   # no deadline: the per-exec timeout
    assert {c.timeout for c in env.exec.of("DEL")} == {env.config.cni.plugin_timeout}


def test_plugin_killed_at_the_deadline_rolls_back_and_is_deadline_exceeded(env: Env) -> None:
    def slow_portmap(call):
        raise libcni.ExecTimeout("portmap", "ADD", call.timeout)   # RawExec killed it
    env.exec.scripts[("portmap", "ADD")] = slow_portmap
    with pytest.raises(NetworkError) as exc:
        env.manager.run(env.spec("web"), deadline=time.monotonic() + 2)
    assert isinstance(exc.value.cause, libcni.DeadlineExceeded)
    code, message = grpc_status(exc.value)
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "caller's deadline passed" in message and 'plugin "portmap"' in message
    # Rolled back, with the undo's own time (not the spent deadline).
    dels = env.exec.of("DEL")
    assert {c.plugin for c in dels} == {"loopback", "portmap", "bridge"}
    assert {c.timeout for c in dels} == {env.config.cni.plugin_timeout}
    assert env.pinned() == [] and env.cached() == [] and env.store.records == {}
    assert env.manager.list() == []


def test_deadline_already_passed_runs_no_plugin(env: Env) -> None:
    with pytest.raises(NetworkError) as exc:
        env.manager.run(env.spec("web"), deadline=time.monotonic() - 1)
    assert grpc_status(exc.value)[0] == grpc.StatusCode.DEADLINE_EXCEEDED
    assert env.exec.of("ADD") == []
    assert env.pinned() == [] and env.store.records == {}


@pytest.mark.parametrize("exc", [libcni.ExecTimeout("bridge", "ADD", 60.0),
                                 libcni.DeadlineExceeded("bridge", "ADD", 1.5),
                                 libcni.DeadlineExceeded("bridge", "DEL", None)])
def test_timeouts_map_to_deadline_exceeded(exc: libcni.CNIError) -> None:
    assert grpc_status(NetworkError("x", exc))[0] == grpc.StatusCode.DEADLINE_EXCEEDED
    assert grpc_status(exc)[0] == grpc.StatusCode.DEADLINE_EXCEEDED


# -- the node failing us -----------------------------------------------------------------

class FailingNetns:
    """The fake netns, with pin or unpin failing as a kernel would."""

    def __init__(self, inner, *, pin_errno: int = 0, unpin_errno: int = 0) -> None:
        self.inner, self.pin_errno, self.unpin_errno = inner, pin_errno, unpin_errno

    def new_path(self, netns_dir: str) -> str:
        return self.inner.new_path(netns_dir)

    def pin(self, path: str, *, loopback_up: bool = False) -> None:
        if self.pin_errno:
            raise NetnsError(f"cannot create network namespace at {path}", path, self.pin_errno)
        self.inner.pin(path, loopback_up=loopback_up)

    def unpin(self, path: str) -> None:
        if self.unpin_errno:
            raise NetnsError(f"cannot unmount netns {path}", path, self.unpin_errno)
        self.inner.unpin(path)

    def is_pinned(self, path: str) -> bool:
        return self.inner.is_pinned(path)


@pytest.mark.parametrize("err,code", [(errno.ENOSPC, grpc.StatusCode.RESOURCE_EXHAUSTED),
                                      (errno.EPERM, grpc.StatusCode.FAILED_PRECONDITION),
                                      (errno.EIO, grpc.StatusCode.INTERNAL)])
def test_pin_failure_names_the_path_and_leaves_nothing(env: Env, err: int, code) -> None:
    env.netns = FailingNetns(env.netns, pin_errno=err)
    env.manager = env.new_manager()
    with pytest.raises(NetnsError) as exc:
        env.run()
    got, message = grpc_status(exc.value)
    assert got == code
    assert message.startswith(f"cannot create network namespace at {env.netns_dir}/cni-")
    assert message.endswith(": " + os.strerror(err))
    assert env.exec.of("ADD") == [] and env.store.records == {} and env.manager.list() == []


def test_unpin_failure_keeps_the_teardown_owed(env: Env) -> None:
    sandbox_id = env.run()
    failing = FailingNetns(env.netns, unpin_errno=errno.EBUSY)
    env.netns = failing
    manager = env.manager
    manager._netns = failing
    with pytest.raises(NetnsError) as exc:
        manager.stop(sandbox_id)
    code, message = grpc_status(exc.value)
    assert code == grpc.StatusCode.UNAVAILABLE
    assert message == f"cannot unmount netns {manager.get(sandbox_id).netns_path}: Device or resource busy"
    assert manager.get(sandbox_id).state == READY
    failing.unpin_errno = 0
    manager.stop(sandbox_id)
    assert manager.get(sandbox_id).state == NOTREADY and env.pinned() == []


class FullDisk(MemoryStore):
    """A store whose disk fills up after *ok* writes."""

    def __init__(self, ok: int) -> None:
        super().__init__()
        self.ok = ok

    def put(self, rec: SandboxRecord) -> None:
        if self.ok <= 0:
            raise StoreError(f"cannot write sandbox record /root/sandboxes/{rec.id}.json",
                             f"/root/sandboxes/{rec.id}.json", errno.ENOSPC)
        self.ok -= 1
        super().put(rec)


def test_failed_last_write_undoes_the_whole_sandbox(env: Env) -> None:
    env.store = FullDisk(ok=1)   # the intent is written; the READY record is not
    env.manager = env.new_manager()
    with pytest.raises(StoreError) as exc:
        env.run()
    code, message = grpc_status(exc.value)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "cannot write sandbox record" in message and "No space left on device" in message
    # The networks were attached, so they are detached again: nothing stays.
    assert {c.plugin for c in env.exec.of("DEL")} == {"loopback", "portmap", "bridge"}
    assert env.pinned() == [] and env.cached() == [] and env.store.records == {}
    assert env.manager.list() == []


def test_failed_intent_write_makes_nothing(env: Env) -> None:
    env.store = FullDisk(ok=0)
    env.manager = env.new_manager()
    with pytest.raises(StoreError):
        env.run()
    assert env.exec.calls == [] and env.pinned() == [] and env.manager.list() == []
    env.store.ok = 10
    env.run()   # the name is free again
