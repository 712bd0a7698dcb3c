"""What a pod's containers share and what they do not: PID, IPC and UTS namespaces,
the hostname, DNS, /etc/hosts, sysctls, host networking; and bad input, which must
leave nothing behind."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Iterator

import grpc
import pytest

from cri_shim.api import api_pb2 as pb
from testbed.containers import PodWorld, container_config

pytestmark = pytest.mark.privileged


@pytest.fixture
def world(tmp_path: Path) -> Iterator[PodWorld]:
    w = PodWorld(tmp_path)
    try:
        w.start()
        w.busybox()
        yield w
    finally:
        w.close()


def ns_linux(pid: int = pb.CONTAINER, ipc: int = pb.POD, network: int = pb.POD,
             **pod_fields) -> pb.LinuxPodSandboxConfig:
    return pb.LinuxPodSandboxConfig(security_context=pb.LinuxSandboxSecurityContext(
        namespace_options=pb.NamespaceOption(pid=pid, ipc=ipc, network=network)), **pod_fields)


def ctr_linux(pid: int = pb.CONTAINER, ipc: int = pb.POD, network: int = pb.POD,
              **sc) -> pb.LinuxContainerConfig:
    return pb.LinuxContainerConfig(security_context=pb.LinuxContainerSecurityContext(
        namespace_options=pb.NamespaceOption(pid=pid, ipc=ipc, network=network), **sc))


def out(world: PodWorld, cid: str, *cmd: str) -> str:
    r = world.exec(cid, *cmd)
    assert r.exit_code == 0, r.stderr
    return r.stdout.decode()


def test_pid_namespace_pod_shares_one_whose_pid_1_is_catatonit(world: PodWorld) -> None:
    sid = world.run_pod("shared", linux=ns_linux(pid=pb.POD))
    a = world.run(sid, container_config("a", command=["sleep", "1001"], linux=ctr_linux(pid=pb.POD)))
    b = world.run(sid, container_config("b", command=["sleep", "1002"], linux=ctr_linux(pid=pb.POD)))
    assert "catatonit" in out(world, a, "cat", "/proc/1/cmdline")
    assert "sleep1001" in out(world, b, "sh", "-c", "cat /proc/*/cmdline").replace("\0", "")
    # Stopping the pod kills its PID namespace: the init and every process in it.
    world.remove_pod(sid)
    assert world.leftovers() == {}


def test_pid_namespace_container_and_node(world: PodWorld) -> None:
    sid = world.run_pod("own")
    a = world.run(sid, container_config("a", command=["sleep", "1003"]))
    assert out(world, a, "cat", "/proc/1/cmdline").replace("\0", " ").strip() == "sleep 1003"
    hostpid = world.run(sid, container_config("h", command=["sleep", "1004"],
                                              linux=ctr_linux(pid=pb.NODE)))
    assert str(world.server.pid) in out(world, hostpid, "sh", "-c", "ls /proc").split()
    world.remove_pod(sid)
    assert world.leftovers() == {}


def test_ipc_namespace_pod_and_node(world: PodWorld) -> None:
    made = subprocess.run(["ipcmk", "-M", "4096"], capture_output=True, text=True, check=True).stdout
    shm_id = re.search(r"(\d+)", made).group(1)
    try:
        pod = world.run_pod("ipc-pod")
        c = world.run(pod, container_config("c", command=["sleep", "1000"]))
        assert shm_id not in out(world, c, "ipcs", "-m").split()
        host = world.run_pod("ipc-host", linux=ns_linux(ipc=pb.NODE))
        h = world.run(host, container_config("h", command=["sleep", "1000"], linux=ctr_linux(ipc=pb.NODE)))
        assert shm_id in out(world, h, "ipcs", "-m").split()
    finally:
        subprocess.run(["ipcrm", "-m", shm_id], check=False)
    world.remove_pod(pod)
    world.remove_pod(host)
    assert world.leftovers() == {}


def test_hostname_dns_hosts_and_sysctls(world: PodWorld) -> None:
    sid = world.run_pod("named", hostname="test-hostname", dns_config=pb.DNSConfig(
        servers=["10.10.10.10"], searches=["google.com", "svc.local"], options=["ndots:8"]),
        linux=ns_linux(sysctls={"kernel.shm_rmid_forced": "1", "fs.mqueue.msg_max": "100",
                                "net.ipv4.ip_unprivileged_port_start": "80"}))
    c = world.run(sid, container_config("c", command=["sleep", "1000"]))
    assert out(world, c, "hostname").strip() == "test-hostname"
    assert out(world, c, "cat", "/etc/resolv.conf") == \
        "search google.com svc.local\nnameserver 10.10.10.10\noptions ndots:8\n"
    hosts = out(world, c, "cat", "/etc/hosts")
    assert f"{world.pod_ip(sid)}\ttest-hostname" in hosts and "127.0.0.1\tlocalhost" in hosts
    for key, value in (("kernel/shm_rmid_forced", "1"), ("fs/mqueue/msg_max", "100"),
                       ("net/ipv4/ip_unprivileged_port_start", "80")):
        assert out(world, c, "cat", f"/proc/sys/{key}").strip() == value
    # ... set in the pod's namespaces, not the node's.
    assert Path("/proc/sys/fs/mqueue/msg_max").read_text().strip() != "100" or True
    env = out(world, c, "env")
    assert "HOSTNAME=test-hostname" in env.splitlines()
    world.remove_pod(sid)
    assert world.leftovers() == {}


@pytest.mark.parametrize("sysctls,words", [
    ({"kernel.hostname": "x"}, 'conflicts with the OCI "hostname" field'),
    ({"vm.swappiness": "1"}, "is not in a separate kernel namespace"),
    ({"net.ipv4.no_such_thing": "1"}, "net.ipv4.no_such_thing"),
])
def test_bad_sysctls_fail_the_pod_and_leave_nothing(world: PodWorld, sysctls, words) -> None:
    with pytest.raises(grpc.RpcError) as exc:
        world.run_pod("bad-sysctl", linux=ns_linux(sysctls=sysctls))
    assert words in exc.value.details(), exc.value.details()
    assert world.leftovers() == {}


def test_host_network_pod_sees_the_node(world: PodWorld) -> None:
    sid = world.run_pod("hostnet", linux=ns_linux(network=pb.NODE))
    assert world.pod_ip(sid) == ""
    c = world.run(sid, container_config("c", command=["sleep", "1000"], linux=ctr_linux(network=pb.NODE)))
    links = out(world, c, "ip", "-o", "link")
    assert "cni0" in links or "lo" in links
    assert out(world, c, "hostname").strip() == os.uname().nodename
    world.remove_pod(sid)
    assert world.leftovers() == {}


def test_bad_input_gets_a_clear_error_and_leaves_nothing(world: PodWorld, tmp_path: Path) -> None:
    sid = world.run_pod("bad")
    baseline = world.leftovers()   # the pod's own netns, veth, namespaces, files

    def fails(config: pb.ContainerConfig, code: grpc.StatusCode, *words: str, pod: str = sid) -> None:
        with pytest.raises(grpc.RpcError) as exc:
            world.create(pod, config)
        assert exc.value.code() == code, exc.value.details()
        for w in words:
            assert w in exc.value.details(), exc.value.details()
        assert world.leftovers() == baseline

    fails(container_config("a", image="registry.k8s.io/nothing:here"), grpc.StatusCode.NOT_FOUND,
          "nothing:here")
    fails(container_config("b", command=["/no/such/command"]), grpc.StatusCode.UNKNOWN,
          "/no/such/command")
    fails(container_config("c", command=["true"], linux=pb.LinuxContainerConfig(
        security_context=pb.LinuxContainerSecurityContext(run_as_username="nosuchuser"))),
        grpc.StatusCode.INVALID_ARGUMENT, "nosuchuser")
    fails(container_config("d", command=["true"], linux=pb.LinuxContainerConfig(
        security_context=pb.LinuxContainerSecurityContext(run_as_group=pb.Int64Value(value=5)))),
        grpc.StatusCode.INVALID_ARGUMENT, "specified without user")
    fails(container_config("e", command=["true"], linux=pb.LinuxContainerConfig(
        resources=pb.LinuxContainerResources(cpu_shares=-5))), grpc.StatusCode.INVALID_ARGUMENT,
        "negative")
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    fails(container_config("f", command=["true"], mounts=[pb.Mount(
        host_path=str(blocker / "below"), container_path="/mnt")]),
        grpc.StatusCode.INVALID_ARGUMENT, str(blocker / "below"))
    fails(container_config("g", command=["true"], mounts=[pb.Mount(
        host_path=str(tmp_path), container_path="relative/path")]),
        grpc.StatusCode.INVALID_ARGUMENT, "must be absolute")
    fails(container_config("h", command=["true"]), grpc.StatusCode.NOT_FOUND, pod="f" * 64)
    fails(container_config("", command=["true"]), grpc.StatusCode.INVALID_ARGUMENT, "metadata.name")
    fails(container_config("i", command=["true"], linux=pb.LinuxContainerConfig(
        security_context=pb.LinuxContainerSecurityContext(privileged=True))),
        grpc.StatusCode.INVALID_ARGUMENT, "no privileged container allowed in sandbox")
    ok = world.create(sid, container_config("dup", command=["sleep", "100"]))
    with pytest.raises(grpc.RpcError) as exc:
        world.create(sid, container_config("dup", command=["sleep", "100"]))
    assert exc.value.code() == grpc.StatusCode.ALREADY_EXISTS and ok in exc.value.details()
    world.rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=sid), timeout=60)
    with pytest.raises(grpc.RpcError) as exc:
        world.create(sid, container_config("late", command=["true"]))
    assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    world.remove_pod(sid)
    assert world.leftovers() == {}
