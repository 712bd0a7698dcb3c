"""The Prometheus endpoint (``[metrics] address``): scraped inside the node namespace,
the numbers move with the calls and plugin execs that happened."""

from __future__ import annotations

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cri_shim.api import api_pb2 as pb

from .harness import Shim, bridge_conflist, pod_config

pytestmark = pytest.mark.privileged

SUBNET = "10.88.0.0/24"
METRICS = '[metrics]\n  address = "127.0.0.1:1338"\n'   # the node's own loopback


def scrape(shim: Shim) -> dict[tuple[str, frozenset], float]:
    with shim.node.connect("127.0.0.1", 1338) as sock:
        sock.settimeout(10)
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.") and b" 200 " in head.split(b"\r\n")[0]
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: dict, name: str, **labels: str) -> float:
    """The sum over the samples of *name* whose labels include *labels*."""
    return sum(v for (n, ls), v in samples.items()
               if n == name and set(labels.items()) <= set(ls))


def test_metrics_move_with_calls_and_plugin_execs(shim: Shim) -> None:
    shim.extra_toml = METRICS
    shim.write_conf("10-test.conflist", bridge_conflist("testnet", SUBNET, shim.ipam_dir))
    shim.start()
    before = scrape(shim)
    assert value(before, "grpc_server_handled_total", grpc_method="RunPodSandbox") == 0
    assert value(before, "process_resident_memory_bytes") > 0
    sandbox_id = shim.runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=pod_config("m"))).pod_sandbox_id
    with pytest.raises(grpc.RpcError):
        shim.runtime.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id="0" * 64))
    up = scrape(shim)
    rps = dict(grpc_service="runtime.v1.RuntimeService", grpc_method="RunPodSandbox", grpc_type="unary")
    assert value(up, "grpc_server_started_total", **rps) == 1
    assert value(up, "grpc_server_handled_total", grpc_code="OK", **rps) == 1
    assert value(up, "grpc_server_handling_seconds_count", **rps) == 1
    assert value(up, "grpc_server_handling_seconds_sum", **rps) > 0
    assert value(up, "grpc_server_handled_total", grpc_method="PodSandboxStatus",
                 grpc_code="NotFound") == 1
    assert value(up, "cri_shim_network_plugin_operations_total", plugin="bridge", operation_type="ADD") == 1
    assert value(up, "cri_shim_network_plugin_operations_duration_seconds_count",
                 plugin="bridge", operation_type="ADD") == 1
    assert value(up, "cri_shim_network_plugin_operations_errors_total") == 0
    assert value(up, "cri_shim_sandboxes", state="ready") == 1

    shim.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=sandbox_id))
    down = scrape(shim)
    assert value(down, "cri_shim_network_plugin_operations_total", plugin="bridge", operation_type="DEL") >= 1
    assert value(down, "cri_shim_sandboxes", state="ready") == 0
    assert value(down, "cri_shim_sandboxes", state="notready") == 1
    shim.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id))
    assert value(scrape(shim), "cri_shim_sandboxes") == 0


def test_a_failing_plugin_counts_as_an_error(shim: Shim) -> None:
    shim.extra_toml = METRICS
    shim.write_conf("10-test.conflist", bridge_conflist(
        "testnet", SUBNET, shim.ipam_dir, portmap=False,
        extra=[{"type": "shim-test", "failOnAdd": {"code": 7, "msg": "no good"}}]))
    shim.start()
    with pytest.raises(grpc.RpcError):
        shim.runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=pod_config("bad")))
    got = scrape(shim)
    assert value(got, "cri_shim_network_plugin_operations_errors_total", plugin="shim-test",
                 operation_type="ADD") == 1
    assert value(got, "cri_shim_network_plugin_operations_errors_total", plugin="bridge") == 0
    assert value(got, "cri_shim_network_plugin_operations_total", plugin="bridge",
                 operation_type="DEL") == 1          # the chain was rolled back
    assert value(got, "grpc_server_handled_total", grpc_method="RunPodSandbox", grpc_code="OK") == 0
    assert value(got, "cri_shim_sandboxes") == 0


def test_containers_by_state(tmp_path) -> None:
    from testbed.containers import PodWorld, container_config
    world = PodWorld(tmp_path, extra_toml=METRICS).start()
    try:
        world.busybox()
        sandbox_id = world.run_pod("c")
        container_id = world.run(sandbox_id, container_config("sleeper", command=["sleep", "300"]))
        got = scrape(world.server)
        assert value(got, "cri_shim_containers", state="running") == 1
        assert value(got, "grpc_server_handled_total", grpc_service="runtime.v1.RuntimeService",
                     grpc_method="StartContainer", grpc_code="OK") == 1
        world.stop(container_id, timeout=1)
        got = scrape(world.server)
        assert value(got, "cri_shim_containers", state="running") == 0
        assert value(got, "cri_shim_containers", state="exited") == 1
    finally:
        world.close()
