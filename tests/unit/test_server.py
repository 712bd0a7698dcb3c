"""The servicer in-process (no socket): translation and the ListPodSandbox item cache."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from test_manager import Env, write_conflist

from cri_shim.api import api_pb2 as pb
from cri_shim.server import CRIServicer


class Ctx:
    def __init__(self, time_remaining: float | None = None) -> None:
        self._remaining = time_remaining

    def abort(self, code, message):
        raise RuntimeError(code, message)

    def time_remaining(self) -> float | None:
        return self._remaining

    def is_active(self) -> bool:
        return True


@pytest.fixture
def svc(tmp_path: Path) -> tuple[Env, CRIServicer]:
    env = Env(tmp_path)
    write_conflist(env.conf_dir)
    return env, CRIServicer(env.manager)


def listed(svc: CRIServicer, **flt) -> list[tuple[str, int, str]]:
    items = svc.ListPodSandbox(pb.ListPodSandboxRequest(filter=pb.PodSandboxFilter(**flt)), Ctx()).items
    return [(i.metadata.name, i.state, i.labels.get("app", "")) for i in items]


def test_list_follows_every_change(svc) -> None:
    env, s = svc
    a = env.run("a", labels={"app": "x"}, annotations={"note": "1"})
    env.run("b", labels={"app": "y"})
    assert listed(s) == [("a", pb.SANDBOX_READY, "x"), ("b", pb.SANDBOX_READY, "y")]
    assert listed(s) == [("a", pb.SANDBOX_READY, "x"), ("b", pb.SANDBOX_READY, "y")]   # cached
    env.manager.stop(a)
    assert listed(s) == [("a", pb.SANDBOX_NOTREADY, "x"), ("b", pb.SANDBOX_READY, "y")]
    assert listed(s, label_selector={"app": "y"}) == [("b", pb.SANDBOX_READY, "y")]
    env.manager.remove(a)
    assert listed(s) == [("b", pb.SANDBOX_READY, "y")]
    item = s.ListPodSandbox(pb.ListPodSandboxRequest(), Ctx()).items[0]
    assert item.metadata.namespace == "default" and item.created_at > 0 and len(item.id) == 64


def test_status_reports_ips_and_namespace_options(svc) -> None:
    env, s = svc
    sandbox_id = env.run("web", linux={"security_context": {"namespace_options": {"pid": "CONTAINER"}}})
    st = s.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id, verbose=True), Ctx())
    assert st.status.network.ip == "10.0.0.2"
    assert st.status.linux.namespaces.options.pid == pb.CONTAINER
    assert st.info["info"].startswith("{")
    env.manager.stop(sandbox_id)
    st = s.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id), Ctx())
    assert st.status.network.ip == "" and st.status.state == pb.SANDBOX_NOTREADY


def test_the_clients_deadline_reaches_the_plugins(svc) -> None:
    env, s = svc
    config = pb.PodSandboxConfig(metadata=pb.PodSandboxMetadata(name="p", namespace="d", uid="u"))
    s.RunPodSandbox(pb.RunPodSandboxRequest(config=config), Ctx(time_remaining=3.0))
    assert all(0 < c.timeout <= 3.0 for c in env.exec.of("ADD"))
    config.metadata.name = "q"
    with pytest.raises(RuntimeError) as exc:
        s.RunPodSandbox(pb.RunPodSandboxRequest(config=config), Ctx(time_remaining=0.0))
    code, message = exc.value.args
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED and "deadline" in message


def test_huge_error_messages_are_cut_for_the_trailer(svc) -> None:
    env, s = svc
    env.exec.script("bridge", "ADD", stderr=b"x" * 100_000, returncode=1)
    config = pb.PodSandboxConfig(metadata=pb.PodSandboxMetadata(name="p", namespace="d", uid="u"))
    with pytest.raises(RuntimeError) as exc:
        s.RunPodSandbox(pb.RunPodSandboxRequest(config=config), Ctx())
    code, message = exc.value.args
    assert len(message.encode()) <= 4096 and "bytes cut" in message and "netplugin failed" in message
