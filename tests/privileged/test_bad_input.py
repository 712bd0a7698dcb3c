"""Every way the input can be wrong: a clear error, the right code, nothing left behind."""

from __future__ import annotations

import grpc
import pytest

from cri_shim.api import api_pb2 as pb

from .harness import Shim, bridge_conflist, pod_config

pytestmark = pytest.mark.privileged

SUBNET = "10.88.0.0/24"


def run_error(shim: Shim, cfg: pb.PodSandboxConfig) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as exc:
        shim.runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=cfg))
    return exc.value


def network_ready(shim: Shim) -> pb.RuntimeCondition:
    conds = shim.runtime.Status(pb.StatusRequest()).status.conditions
    return next(c for c in conds if c.type == "NetworkReady")


def test_no_conf_dir(shim: Shim) -> None:
    shim.conf_dir.rmdir()
    shim.start()
    cond = network_ready(shim)
    assert not cond.status
    assert cond.reason == "NetworkPluginNotReady"
    assert cond.message == "Network plugin returns error: cni plugin not initialized"
    err = run_error(shim, pod_config())
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "cni plugin not initialized" in err.details()
    assert shim.leftovers() == {}


def test_malformed_conflist_is_skipped_and_reported(shim: Shim) -> None:
    shim.write_conf("10-broken.conflist", '{"cniVersion": "1.0.0", "name": "x", "plugins": [')
    shim.start()
    assert not network_ready(shim).status
    err = run_error(shim, pod_config())
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "10-broken.conflist" in err.details()
    info = shim.runtime.Status(pb.StatusRequest(verbose=True)).info
    assert "10-broken.conflist" in info["cniconfig"]
    assert shim.leftovers() == {}


def test_missing_plugin_binary(shim: Shim) -> None:
    conf = bridge_conflist("testnet", SUBNET, shim.ipam_dir, portmap=False,
                           extra=[{"type": "no-such-plugin"}])
    shim.write_conf("10-test.conflist", conf)
    shim.start()
    err = run_error(shim, pod_config())
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert 'failed to find plugin "no-such-plugin"' in err.details()
    # Whether we refuse before running bridge or undo it afterwards, nothing is left.
    assert shim.leftovers("testnet") == {}


def test_plugin_error_reaches_the_client_and_everything_is_undone(shim: Shim) -> None:
    failing = {"type": "shim-test",
               "failOnAdd": {"code": 7, "msg": "no good", "details": "field xyz is wrong"}}
    shim.write_conf("10-test.conflist",
                    bridge_conflist("testnet", SUBNET, shim.ipam_dir, portmap=False, extra=[failing]))
    shim.start()
    err = run_error(shim, pod_config())
    assert err.code() == grpc.StatusCode.UNKNOWN
    assert "shim-test" in err.details()
    assert "no good" in err.details() and "field xyz is wrong" in err.details()
    assert "CNI error code 7" in err.details()
    # bridge had allocated an IP and made a veth before shim-test failed: all undone.
    assert shim.leftovers("testnet") == {}
    assert shim.runtime.ListPodSandbox(pb.ListPodSandboxRequest()).items == []


def test_plugin_printing_garbage(shim: Shim) -> None:
    shim.write_conf("10-test.conflist", bridge_conflist(
        "testnet", SUBNET, shim.ipam_dir, portmap=False, extra=[{"type": "shim-test", "garbage": True}]))
    shim.start()
    err = run_error(shim, pod_config())
    assert "shim-test" in err.details() and "ADD" in err.details()
    assert shim.leftovers("testnet") == {}


@pytest.mark.parametrize("cfg, words", [
    (pb.PodSandboxConfig(), "metadata is required"),
    (pb.PodSandboxConfig(metadata=pb.PodSandboxMetadata(namespace="d")), "metadata.name is required"),
    (pb.PodSandboxConfig(metadata=pb.PodSandboxMetadata(name="n")), "metadata.namespace is required"),
])
def test_invalid_pod_config(shim: Shim, cfg: pb.PodSandboxConfig, words: str) -> None:
    shim.write_conf("10-test.conflist", bridge_conflist("testnet", SUBNET, shim.ipam_dir))
    shim.start()
    err = run_error(shim, cfg)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert words in err.details()
    assert shim.leftovers("testnet") == {}


def test_unknown_sandbox_id(shim: Shim) -> None:
    shim.start()
    with pytest.raises(grpc.RpcError) as exc:
        shim.runtime.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id="f" * 64))
    assert exc.value.code() == grpc.StatusCode.NOT_FOUND
    assert "f" * 64 in exc.value.details()


def test_duplicate_sandbox_name(shim: Shim) -> None:
    shim.write_conf("10-test.conflist", bridge_conflist("testnet", SUBNET, shim.ipam_dir))
    shim.start()
    first = shim.runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=pod_config("dup"))).pod_sandbox_id
    err = run_error(shim, pod_config("dup"))
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS
    assert first in err.details()
    shim.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=first))
    assert shim.leftovers("testnet") == {}
