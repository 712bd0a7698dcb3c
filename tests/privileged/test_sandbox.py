"""A pod sandbox's life with Debian's real plugins, in a throwaway node namespace."""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import sys
import time

import grpc
import pytest

from cri_shim.api import api_pb2 as pb

from .harness import REPO, Shim, bridge_conflist, pod_config

pytestmark = pytest.mark.privileged

SUBNET = "10.88.0.0/24"


def run(shim: Shim, cfg: pb.PodSandboxConfig) -> str:
    return shim.runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=cfg)).pod_sandbox_id


def status(shim: Shim, sandbox_id: str) -> pb.PodSandboxStatusResponse:
    return shim.runtime.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id, verbose=True))


def test_run_status_ping_stop_remove(shim: Shim) -> None:
    shim.write_conf("10-test.conflist", bridge_conflist("testnet", SUBNET, shim.ipam_dir))
    shim.start()
    sandbox_id = run(shim, pod_config("web"))
    assert len(sandbox_id) == 64 and int(sandbox_id, 16) >= 0

    st = status(shim, sandbox_id)
    ip = st.status.network.ip
    assert ipaddress.ip_address(ip) in ipaddress.ip_network(SUBNET)
    assert st.status.state == pb.SANDBOX_READY
    assert st.status.metadata.name == "web" and st.status.created_at > 0
    assert st.status.labels["io.kubernetes.pod.name"] == "web"
    info = json.loads(st.info["info"])
    netns_path = info["netNamespacePath"]
    assert os.path.exists(netns_path)
    assert info["cniResult"]["eth0"]["ips"][0]["address"].startswith(ip + "/")

    # The pod answers from the node, through the bridge.
    shim.node.run("ping", "-c", "1", "-W", "2", ip)
    assert shim.ip_files("testnet") == [ip]
    assert len(shim.veths()) == 1
    assert sorted(shim.cache_files()) == sorted([f"cni-loopback-{sandbox_id}-lo",
                                                  f"testnet-{sandbox_id}-eth0"])

    shim.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=sandbox_id))
    st = status(shim, sandbox_id)
    assert st.status.state == pb.SANDBOX_NOTREADY
    assert st.status.network.ip == ""
    assert shim.ip_files("testnet") == [] and shim.veths() == [] and shim.pinned() == []
    assert shim.cache_files() == []
    # kubelet's garbage collector stops again: fine.
    shim.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=sandbox_id))

    shim.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id))
    assert shim.runtime.ListPodSandbox(pb.ListPodSandboxRequest()).items == []
    assert shim.leftovers("testnet") == {}
    # Unknown ids: stop and remove are OK, status is NOT_FOUND.
    shim.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=sandbox_id))
    shim.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id))
    with pytest.raises(grpc.RpcError) as exc:
        status(shim, sandbox_id)
    assert exc.value.code() == grpc.StatusCode.NOT_FOUND


def test_remove_without_stop_tears_down(shim: Shim) -> None:
    shim.write_conf("10-test.conflist", bridge_conflist("testnet", SUBNET, shim.ipam_dir))
    shim.start()
    a, b = run(shim, pod_config("a")), run(shim, pod_config("b"))
    ip_a, ip_b = status(shim, a).status.network.ip, status(shim, b).status.network.ip
    assert ip_a != ip_b
    shim.node.run("ping", "-c", "1", "-W", "2", ip_b)
    shim.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=a))
    assert shim.ip_files("testnet") == [ip_b]
    shim.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=b))
    assert shim.leftovers("testnet") == {}


def test_restarted_server_keeps_its_sandboxes(shim: Shim) -> None:
    shim.write_conf("10-test.conflist", bridge_conflist("testnet", SUBNET, shim.ipam_dir))
    shim.start()
    sandbox_id = run(shim, pod_config("web"))
    ip = status(shim, sandbox_id).status.network.ip
    shim.stop()
    shim.start()
    items = shim.runtime.ListPodSandbox(pb.ListPodSandboxRequest()).items
    assert [(i.id, i.state) for i in items] == [(sandbox_id, pb.SANDBOX_READY)]
    assert status(shim, sandbox_id).status.network.ip == ip
    shim.node.run("ping", "-c", "1", "-W", "2", ip)
    shim.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=sandbox_id))
    shim.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id))
    assert shim.leftovers("testnet") == {}


def start_slow_run(shim: Shim, sleep: float) -> grpc.Future:
    """A RunPodSandbox whose chain ends in a plugin sleeping *sleep* seconds, returned
    once bridge has allocated the pod's IP (the server is mid-set-up)."""
    sleeper = {"type": "shim-test", "sleepOnAdd": sleep}
    shim.write_conf("10-test.conflist", bridge_conflist("testnet", SUBNET, shim.ipam_dir,
                                                        portmap=False, extra=[sleeper]))
    shim.start()
    future = shim.runtime.RunPodSandbox.future(pb.RunPodSandboxRequest(config=pod_config("web")))
    deadline = time.monotonic() + 20
    while not shim.ip_files("testnet") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert shim.ip_files("testnet") and shim.state_files(), "bridge never allocated an IP"
    return future


def test_crash_during_add_is_undone_on_next_start(shim: Shim) -> None:
    """kill -9 while a plugin runs: the next start releases the IP and the netns."""
    future = start_slow_run(shim, 30)
    assert shim.proc is not None
    shim.proc.send_signal(signal.SIGKILL)
    shim.proc.wait()
    future.cancel()
    assert shim.pinned() and shim.state_files()   # what the crash left
    shim.proc = None
    shim.start()
    assert shim.runtime.ListPodSandbox(pb.ListPodSandboxRequest()).items == []
    assert shim.leftovers("testnet") == {}


@pytest.mark.parametrize("delay", [0.0, 0.0005, 0.002])
def test_crash_as_the_netns_is_pinned(shim: Shim, delay: float) -> None:
    """kill -9 the moment the pod's netns appears (before or as the first plugin
    starts): the next start unpins it and releases whatever a plugin took."""
    shim.write_conf("10-test.conflist", bridge_conflist(
        "testnet", SUBNET, shim.ipam_dir, portmap=False, extra=[{"type": "shim-test", "sleepOnAdd": 5}]))
    shim.start()
    running = shim.runtime.RunPodSandbox.future(pb.RunPodSandboxRequest(config=pod_config("early")))
    deadline = time.monotonic() + 20
    while not shim.pinned():
        assert time.monotonic() < deadline, shim.log_tail()
    time.sleep(delay)
    assert shim.proc is not None
    shim.proc.send_signal(signal.SIGKILL)
    shim.proc.wait()
    running.cancel()
    subprocess.run(["pkill", "-f", "shim-test"], check=False)   # a sleeping ADD, if it got that far
    shim.proc = None
    shim.start()
    assert shim.runtime.ListPodSandbox(pb.ListPodSandboxRequest()).items == []
    assert shim.leftovers("testnet") == {}


# (after the last ADD: the record is written 5-10 ms later on this machine, so the
# delays below land on both sides of it)
@pytest.mark.parametrize("delay", [0.0, 0.002, 0.005, 0.01, 0.02, 0.05])
def test_crash_after_the_last_add_before_the_record(shim: Shim, delay: float) -> None:
    """kill -9 just after the chain's last plugin answered (the result being cached,
    the record not yet written, at a few delays): after the restart the sandbox is
    whole and READY with its IP, or undone with nothing left; never half."""
    marks = shim.work / "marks"
    marks.mkdir()
    shim.write_conf("10-test.conflist", bridge_conflist(
        "testnet", SUBNET, shim.ipam_dir, portmap=False,
        extra=[{"type": "shim-test", "markAddDone": str(marks)}]))
    shim.start()
    running = shim.runtime.RunPodSandbox.future(pb.RunPodSandboxRequest(config=pod_config("late")))
    deadline = time.monotonic() + 20
    while not any(marks.iterdir()):
        assert time.monotonic() < deadline, shim.log_tail()
    time.sleep(delay)
    assert shim.proc is not None
    shim.proc.send_signal(signal.SIGKILL)
    shim.proc.wait()
    running.cancel()
    shim.proc = None
    shim.start()
    items = shim.runtime.ListPodSandbox(pb.ListPodSandboxRequest()).items
    print(f"after a kill {delay * 1e3:.0f} ms past the last ADD: "
          f"{'whole and READY' if items else 'undone'}")
    if items:
        (item,) = items
        st = status(shim, item.id).status
        assert st.state == pb.SANDBOX_READY and st.network.ip, st
        assert shim.ip_files("testnet") == [st.network.ip]
        shim.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=item.id))
        shim.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=item.id))
    assert shim.leftovers("testnet") == {}


def test_crash_during_del_is_finished_by_the_next_stop(shim: Shim) -> None:
    """kill -9 while a plugin's DEL runs (before bridge's DEL: DELs run last plugin
    first): after the restart the sandbox is still listed, still holds its IP, and
    the next StopPodSandbox runs the whole DEL chain again; then nothing is left."""
    marks = shim.work / "marks"
    marks.mkdir()
    shim.write_conf("10-test.conflist", bridge_conflist(
        "testnet", SUBNET, shim.ipam_dir, portmap=False,
        extra=[{"type": "shim-test", "sleepOnDel": 30, "markDir": str(marks)}]))
    shim.start()
    sandbox_id = run(shim, pod_config("deleted"))
    ip = status(shim, sandbox_id).status.network.ip
    stopping = shim.runtime.StopPodSandbox.future(pb.StopPodSandboxRequest(pod_sandbox_id=sandbox_id))
    deadline = time.monotonic() + 20
    while not (marks / f"del-{sandbox_id}").exists():
        assert time.monotonic() < deadline, shim.log_tail()
        time.sleep(0.01)
    assert shim.proc is not None
    shim.proc.send_signal(signal.SIGKILL)
    shim.proc.wait()
    stopping.cancel()
    subprocess.run(["pkill", "-f", "shim-test"], check=False)   # the orphaned sleeping DEL
    shim.proc = None
    shim.start()
    (item,) = shim.runtime.ListPodSandbox(pb.ListPodSandboxRequest()).items
    assert item.id == sandbox_id
    assert shim.ip_files("testnet") == [ip]               # bridge's DEL never ran
    # (the DEL is run with the conflist the ADD had, kept in the record, as containerd
    # does with libcni's cache; the test plugin sleeps on the first DEL only)
    shim.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=sandbox_id))
    assert status(shim, sandbox_id).status.state == pb.SANDBOX_NOTREADY
    shim.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id))
    assert shim.leftovers("testnet") == {}


def test_a_repeated_del_after_bridge_lost_the_veth_leaves_no_masquerade_chain(shim: Shim) -> None:
    """A crash inside bridge's DEL after it deleted the veth (simulated: the first
    StopPodSandbox is killed in a plugin's DEL, and the pod's eth0 removed as bridge
    would have): bridge's repeated DEL no longer finds the address its ipMasq rules
    are keyed on and leaves them; cri-shim removes the one chain it can name for sure
    (bridge's CNI-<sha512(network + sandbox id)>), and nothing is left."""
    marks = shim.work / "marks"
    marks.mkdir()
    shim.write_conf("10-test.conflist", bridge_conflist(
        "testnet", SUBNET, shim.ipam_dir, portmap=False,
        extra=[{"type": "shim-test", "sleepOnDel": 30, "markDir": str(marks)}]))
    shim.start()
    sandbox_id = run(shim, pod_config("masq"))
    netns = json.loads(status(shim, sandbox_id).info["info"])["netNamespacePath"]
    assert shim.pod_chains()                               # bridge's ipMasq chain
    stopping = shim.runtime.StopPodSandbox.future(pb.StopPodSandboxRequest(pod_sandbox_id=sandbox_id))
    deadline = time.monotonic() + 20
    while not (marks / f"del-{sandbox_id}").exists():
        assert time.monotonic() < deadline, shim.log_tail()
        time.sleep(0.01)
    assert shim.proc is not None
    shim.proc.send_signal(signal.SIGKILL)
    shim.proc.wait()
    stopping.cancel()
    subprocess.run(["pkill", "-f", "shim-test"], check=False)
    subprocess.run(["nsenter", f"--net={netns}", "ip", "link", "del", "eth0"], check=True)
    shim.proc = None
    shim.start()
    shim.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=sandbox_id))
    shim.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id))
    assert shim.leftovers("testnet") == {}
    assert "masquerade chain" in shim.log()


def test_a_hanging_plugin_ends_at_the_clients_deadline_and_others_are_served(shim: Shim) -> None:
    future = start_slow_run(shim, 8)
    future.cancel()                                        # (that one is undone as it returns)
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as exc:
        shim.runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=pod_config("hung")), timeout=3)
    assert exc.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 6
    # Meanwhile (a plugin of the first run still hangs) the server answers at once.
    for _ in range(5):
        t = time.monotonic()
        shim.runtime.Version(pb.VersionRequest(), timeout=2)
        shim.runtime.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=2)
        assert time.monotonic() - t < 1
    deadline = time.monotonic() + 30                       # the first run's plugin wakes at 8 s
    while shim.leftovers("testnet") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert shim.runtime.ListPodSandbox(pb.ListPodSandboxRequest()).items == []
    assert shim.leftovers("testnet") == {}


def test_a_client_that_goes_mid_run_leaves_no_sandbox(shim: Shim) -> None:
    """The client cancels (or dies) while the chain runs: containerd's context ends and
    the set-up is rolled back; here the set-up finishes and is undone at once, so the
    client, which never learnt the id, has no sandbox to find or leak."""
    future = start_slow_run(shim, 1.0)
    future.cancel()
    deadline = time.monotonic() + 20
    while shim.leftovers("testnet") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert shim.runtime.ListPodSandbox(pb.ListPodSandboxRequest()).items == []
    assert shim.leftovers("testnet") == {}
    assert "the client went away" in shim.log()


def test_host_network_sandbox_has_no_netns_and_no_ip(shim: Shim) -> None:
    shim.start()   # no CNI config at all: host-network pods do not need one
    cfg = pod_config("hostpod", linux=pb.LinuxPodSandboxConfig(
        security_context=pb.LinuxSandboxSecurityContext(
            namespace_options=pb.NamespaceOption(network=pb.NODE))))
    sandbox_id = run(shim, cfg)
    st = status(shim, sandbox_id)
    assert st.status.state == pb.SANDBOX_READY
    assert st.status.network.ip == ""
    assert st.status.linux.namespaces.options.network == pb.NODE
    assert shim.pinned() == []
    shim.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id))
    assert shim.leftovers() == {}


def test_second_server_on_the_same_root_is_refused_before_touching_it(shim: Shim) -> None:
    """Server B on A's root while A is mid-RunPodSandbox: B exits at once, and A's
    sandbox comes up whole (B recovered, repaired and garbage-collected nothing)."""
    future = start_slow_run(shim, 3)
    other = shim.work / "b.sock"
    proc = subprocess.run(["nsenter", f"--net={shim.node.path}", sys.executable, "-m", "cri_shim",
                           "serve", "--config", str(shim.config_path), "--listen", str(other)],
                          capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.returncode == 1, proc.stderr
    assert f"root {shim.work}/root is in use by another cri-shim (pid {shim.proc.pid})" in proc.stderr
    assert not other.exists()
    sandbox_id = future.result(timeout=30).pod_sandbox_id
    st = status(shim, sandbox_id)
    assert st.status.state == pb.SANDBOX_READY
    ip = st.status.network.ip
    shim.node.run("ping", "-c", "1", "-W", "2", ip)
    assert shim.ip_files("testnet") == [ip] and len(shim.pinned()) == 1
    shim.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id))
    assert shim.leftovers("testnet") == {}
