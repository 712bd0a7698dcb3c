"""Containers end to end: cri-shim in a throwaway node namespace runs real containers
through conmon and runc, from an image the rig builds from Debian's busybox-static.

The seed's whole path first: a pod gets its IP from the CNI chain, a container in it
serves HTTP, the node fetches the page from the pod IP and through a hostPort, the
log shows the request, and stop and remove leave nothing.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Iterator

import grpc
import pytest

from cri_shim.api import api_pb2 as pb
from cri_shim.api import api_pb2_grpc as pb_grpc
from testbed.containers import BUSYBOX, PodWorld, container_config

pytestmark = pytest.mark.privileged


@pytest.fixture
def world(tmp_path: Path) -> Iterator[PodWorld]:
    w = PodWorld(tmp_path)
    try:
        w.start()
        w.busybox(files={"www/index.html": b"hello from the pod\n"})
        yield w
    finally:
        w.close()


def log_lines(path: str) -> list[tuple[str, str, str]]:
    out = []
    for line in Path(path).read_text().splitlines():
        ts, stream, tag, content = line.split(" ", 3)
        out.append((stream, tag, content))
    return out


def test_the_seed_path_a_pod_ip_serves_http_and_a_host_port_reaches_it(world: PodWorld) -> None:
    sid = world.run_pod("web", port_mappings=[pb.PortMapping(container_port=80, host_port=8080)])
    ip = world.pod_ip(sid)
    assert ip.startswith("10.88.7.")
    cid = world.run(sid, container_config("httpd", command=["httpd", "-f", "-vv", "-p", "80",
                                                            "-h", "/www"], log_path="httpd.log"))
    assert world.state(cid) == "CONTAINER_RUNNING"
    page = ""
    for _ in range(50):
        page = world.node.run("wget", "-qO-", "-T", "2", f"http://{ip}/index.html", check=False)
        if page:
            break
        time.sleep(0.1)
    assert page == "hello from the pod\n"
    gateway = ip.rsplit(".", 1)[0] + ".1"   # the bridge's address: a node address
    assert world.node.run("wget", "-qO-", "-T", "5", f"http://{gateway}:8080/index.html") == page
    st = world.status(cid).status
    assert st.log_path == str(world.work / "logs" / "web" / "httpd.log")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and "response:200" not in Path(st.log_path).read_text():
        time.sleep(0.1)
    lines = log_lines(st.log_path)   # busybox httpd -vv logs each request to stderr
    assert any(stream == "stderr" and c.endswith("url:/index.html") for stream, _, c in lines), lines
    assert all(tag == "F" for _, tag, _ in lines)
    world.stop(cid, timeout=5)
    st = world.wait_state(cid, "CONTAINER_EXITED")
    assert st.finished_at >= st.started_at > st.created_at > 0
    world.remove(cid)
    world.remove_pod(sid)
    assert world.leftovers() == {}


def test_kubelets_calls_in_kubelets_order(world: PodWorld) -> None:
    """create, start, status polls, stop with the grace period, remove; the status
    fields kubelet reads at each step."""
    sid = world.run_pod("app")
    config = container_config("app", command=["sh", "-c", "trap 'exit 0' TERM; echo up; "
                                              "while true; do sleep 0.1; done"],
                              log_path="app/0.log", labels={"tier": "web"},
                              annotations={"io.kubernetes.container.hash": "abc"})
    cid = world.create(sid, config)
    st = world.status(cid).status
    assert pb.ContainerState.Name(st.state) == "CONTAINER_CREATED" and st.created_at > 0
    assert st.image.image == BUSYBOX and st.image_ref and st.image_id.startswith("sha256:")
    assert st.labels["tier"] == "web" and st.annotations["io.kubernetes.container.hash"] == "abc"
    assert st.metadata.name == "app"
    world.start_container(cid)
    st = world.wait_state(cid, "CONTAINER_RUNNING")
    assert st.started_at > 0
    listed = world.rt.ListContainers(pb.ListContainersRequest(filter=pb.ContainerFilter(
        pod_sandbox_id=sid, label_selector={"tier": "web"})), timeout=30).containers
    assert [c.id for c in listed] == [cid]
    assert world.rt.ListContainers(pb.ListContainersRequest(filter=pb.ContainerFilter(
        state=pb.ContainerStateValue(state=pb.CONTAINER_EXITED))), timeout=30).containers == []
    start = time.monotonic()
    world.stop(cid, timeout=30)   # the image's trap exits at SIGTERM: no 30 s wait
    assert time.monotonic() - start < 10
    st = world.wait_state(cid, "CONTAINER_EXITED")
    assert (st.exit_code, st.reason) == (0, "Completed")
    assert ("stdout", "F", "up") in log_lines(st.log_path)
    world.remove(cid)
    world.remove(cid)   # idempotent
    world.stop("0" * 64)   # an unknown container: OK
    with pytest.raises(grpc.RpcError) as exc:
        world.status(cid)
    assert exc.value.code() == grpc.StatusCode.NOT_FOUND
    world.remove_pod(sid)
    assert world.leftovers() == {}


def test_exec_sync_output_exit_codes_and_timeouts(world: PodWorld) -> None:
    sid = world.run_pod("exec")
    cid = world.run(sid, container_config("top", command=["top"]))
    r = world.exec(cid, "echo", "-n", "hello")
    assert (r.exit_code, r.stdout, r.stderr) == (0, b"hello", b"")
    r = world.exec(cid, "sh", "-c", "echo out; echo err >&2; exit 3")
    assert (r.exit_code, r.stdout, r.stderr) == (3, b"out\n", b"err\n")
    with pytest.raises(grpc.RpcError) as exc:
        world.exec(cid, "sleep", "4321", timeout=1)
    assert exc.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    r = world.exec(cid, "sh", "-c", "pgrep sleep || true")
    assert r.stdout.strip() == b""   # killed and reaped
    r = world.exec(cid, "sh", "-c", "cat /etc/hostname /etc/resolv.conf; hostname")
    assert r.stdout.decode().splitlines()[0] == "exec" and r.stdout.decode().splitlines()[-1] == "exec"
    with pytest.raises(grpc.RpcError) as exc:
        world.exec(cid, "/no/such/binary")
    assert exc.value.code() == grpc.StatusCode.UNKNOWN and "no/such/binary" in exc.value.details()
    world.remove_pod(sid)   # stops and removes the running container too
    assert world.leftovers() == {}


def test_a_container_outlives_a_restart_and_one_that_exited_meanwhile_shows_its_code(
        world: PodWorld) -> None:
    sid = world.run_pod("survivor")
    long = world.run(sid, container_config("long", command=["sleep", "1000"]))
    short = world.run(sid, container_config("short", command=["sh", "-c", "sleep 2; exit 7"]))
    pid = json.loads(world.status(long, verbose=True).info["info"])["pid"]
    world.server.stop()
    time.sleep(3)   # the short one exits while no server runs
    world.server.start()
    world.rt, world.img = world.server.runtime, world.server.image
    assert world.state(long) == "CONTAINER_RUNNING"
    assert json.loads(world.status(long, verbose=True).info["info"])["pid"] == pid
    os.kill(pid, 0)   # the same process, never restarted
    st = world.status(short).status
    assert (pb.ContainerState.Name(st.state), st.exit_code, st.reason) == ("CONTAINER_EXITED", 7, "Error")
    world.stop(long, timeout=1)
    assert world.wait_state(long, "CONTAINER_EXITED").exit_code == 137   # sleep ignores TERM as PID 1
    world.remove_pod(sid)
    assert world.leftovers() == {}


def test_exec_sync_output_is_capped(world: PodWorld) -> None:
    """At what kubelet takes (a 16 MiB answer), both streams together."""
    sid = world.run_pod("cap")
    cid = world.run(sid, container_config("top", command=["top"]))
    channel = grpc.insecure_channel(f"unix://{world.server.socket}", options=[
        ("grpc.max_receive_message_length", 16 << 20)])   # kubelet's maxMsgSize
    try:
        r = pb_grpc.RuntimeServiceStub(channel).ExecSync(pb.ExecSyncRequest(
            container_id=cid, cmd=["sh", "-c", "echo first >&2; yes 0123456789abcdef | head -c 20000000"],
            timeout=60), timeout=90)
    finally:
        channel.close()
    assert r.exit_code == 0 and r.stderr == b"first\n"
    assert len(r.stdout) + len(r.stderr) == (16 << 20) - (4 << 10)
    world.remove_pod(sid)
    assert world.leftovers() == {}


def test_ctl_container_commands_as_crictl(world: PodWorld, tmp_path: Path) -> None:
    """cri-shim ctl's create/start/ps/logs/exec -s/inspect/stop/rm, with crictl's files."""
    logs = tmp_path / "ctl-logs"
    pod = tmp_path / "pod.json"
    pod.write_text(json.dumps({"metadata": {"name": "ctlpod", "namespace": "default", "uid": "u1"},
                               "log_directory": str(logs)}))
    ctr = tmp_path / "ctr.yaml"
    ctr.write_text("metadata:\n  name: box\nimage:\n  image: " + BUSYBOX + "\n"
                   "command: [sh, -c, 'echo hello; echo oops >&2; sleep 1000']\nlog_path: box.log\n")
    srv = world.server
    sid = srv.ctl("runp", str(pod)).stdout.strip()
    world.pods.append(sid)
    cid = srv.ctl("create", sid, str(ctr), str(pod)).stdout.strip()
    assert len(cid) == 64
    assert srv.ctl("start", cid).stdout.strip() == cid
    table = srv.ctl("ps").stdout.splitlines()
    assert table[0].split()[:5] == ["CONTAINER", "IMAGE", "CREATED", "STATE", "NAME"]
    assert cid[:13] in table[1] and "Running" in table[1] and "box" in table[1]
    assert srv.ctl("ps", "-q").stdout.split() == [cid]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and "oops" not in srv.ctl("logs", cid).stderr:
        time.sleep(0.1)
    logged = srv.ctl("logs", cid)
    assert (logged.stdout, logged.stderr) == ("hello\n", "oops\n")
    # ctl's own -t/--timeout (the call's) and exec's --timeout, stop's -t (the grace) apart
    ran = srv.ctl("-t", "30", "exec", "-s", "--timeout", "20", cid, "sh", "-c", "echo in; exit 4",
                  check=False)
    assert (ran.returncode, ran.stdout) == (4, "in\n"), ran.stderr
    inspected = json.loads(srv.ctl("inspect", cid).stdout)
    assert inspected["status"]["state"] == "CONTAINER_RUNNING" and inspected["info"]["pid"] > 0
    refused = srv.ctl("rm", cid, check=False)
    assert refused.returncode == 1 and "is running" in refused.stderr
    assert srv.ctl("stop", "-t", "1", cid).stdout.strip() == cid
    assert "Exited" in srv.ctl("ps", "-a").stdout
    assert srv.ctl("rm", cid).stdout.strip() == cid
    assert srv.ctl("ps", "-a", "-q").stdout.split() == []
    world.remove_pod(sid)
    assert world.leftovers() == {}
