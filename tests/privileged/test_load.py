"""Load and races with containers in the pods (issue 14): 64 pods with a container
each made at once, then stopped and removed at once; two runs of one pod at once; a
run racing a stop. Everything succeeds or fails cleanly, and nothing is left."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from cri_shim.api import api_pb2 as pb
from testbed.containers import PodWorld, container_config
from testbed.pods import pod_config

pytestmark = pytest.mark.privileged

PODS = 64


@pytest.fixture
def world(tmp_path):
    w = PodWorld(tmp_path).start()
    w.busybox()
    try:
        yield w
    finally:
        w.close()


def test_64_pods_with_a_container_at_once_then_gone_at_once(world: PodWorld) -> None:
    def make(i: int) -> tuple[str, str]:
        config = pod_config(f"load-{i}", log_directory=str(world.work / "logs" / f"load-{i}"))
        sandbox_id = world.rt.RunPodSandbox(pb.RunPodSandboxRequest(config=config), timeout=240).pod_sandbox_id
        container_id = world.rt.CreateContainer(pb.CreateContainerRequest(
            pod_sandbox_id=sandbox_id, sandbox_config=config,
            config=container_config("c", command=["sleep", "600"])), timeout=240).container_id
        world.rt.StartContainer(pb.StartContainerRequest(container_id=container_id), timeout=240)
        return sandbox_id, container_id

    with ThreadPoolExecutor(PODS) as pool:
        made = list(pool.map(make, range(PODS)))
    ips = [world.pod_ip(s) for s, _ in made]
    assert len(set(ips)) == PODS and all(ips)
    running = world.rt.ListContainers(pb.ListContainersRequest(filter=pb.ContainerFilter(
        state=pb.ContainerStateValue(state=pb.CONTAINER_RUNNING))), timeout=60).containers
    assert len(running) == PODS

    def gone(pair: tuple[str, str]) -> None:
        sandbox_id, _ = pair
        world.rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=240)
        world.rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=240)

    with ThreadPoolExecutor(PODS) as pool:
        list(pool.map(gone, made))
    assert world.rt.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=60).items == []
    assert world.rt.ListContainers(pb.ListContainersRequest(), timeout=60).containers == []
    assert world.leftovers() == {}


def test_two_runs_of_one_pod_at_once_make_one_sandbox(world: PodWorld) -> None:
    config = pod_config("twin", log_directory=str(world.work / "logs" / "twin"))
    barrier = threading.Barrier(2)
    outcomes: list = []

    def run() -> None:
        barrier.wait()
        try:
            outcomes.append(world.rt.RunPodSandbox(pb.RunPodSandboxRequest(config=config), timeout=60).pod_sandbox_id)
        except grpc.RpcError as exc:
            outcomes.append(exc.code())
    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = [o for o in outcomes if isinstance(o, str)]
    assert len(ids) == 1 and [o for o in outcomes if not isinstance(o, str)] == [grpc.StatusCode.ALREADY_EXISTS]
    assert len(world.server.pinned()) == 1                 # never two netns
    world.remove_pod(ids[0])
    assert world.leftovers() == {}


def test_a_run_racing_a_stop_of_the_same_pod(world: PodWorld) -> None:
    """StopPodSandbox of a sandbox still being made: NOT_FOUND or OK, and in the end
    the sandbox is whole or gone, never half."""
    for round_ in range(5):
        config = pod_config(f"race-{round_}", log_directory=str(world.work / "logs" / f"race-{round_}"))
        made: list[str] = []
        t = threading.Thread(target=lambda: made.append(world.rt.RunPodSandbox(
            pb.RunPodSandboxRequest(config=config), timeout=60).pod_sandbox_id))
        t.start()
        # Stop whatever the listing shows while the run goes on (kubelet's relist).
        while t.is_alive():
            for item in world.rt.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=30).items:
                world.rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=item.id), timeout=60)
        t.join()
        (sandbox_id,) = made
        state = world.rt.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id),
                                          timeout=30).status.state
        assert state in (pb.SANDBOX_READY, pb.SANDBOX_NOTREADY)
        world.remove_pod(sandbox_id)
    assert world.leftovers() == {}
