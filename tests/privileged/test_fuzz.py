"""Hostile input (issue 14), property-based: random and malformed PodSandboxConfig,
ContainerConfig and image references, and random bytes on the socket, against a real
server with Debian's plugins in a throwaway node. Every call gets a proper status (no
"internal error", which is a bug's), the server never dies, whatever was made is
removed, and nothing outside the test's own directories is created or mounted.

``make test`` runs a short version; ``make fuzz`` the long one (CRI_SHIM_FUZZ=long).
"""

from __future__ import annotations

import os
import socket
from typing import Iterator

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cri_shim.api import api_pb2 as pb
from testbed.containers import PodWorld, container_config
from testbed.pods import pod_config

pytestmark = pytest.mark.privileged

LONG = os.environ.get("CRI_SHIM_FUZZ") == "long"
EXAMPLES = 400 if LONG else 25
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=not LONG,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# Codes a malformed request may get; INTERNAL only for a host failure, never a bug's.
OK_CODES = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.ALREADY_EXISTS,
            grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND,
            grpc.StatusCode.UNKNOWN, grpc.StatusCode.RESOURCE_EXHAUSTED,
            grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.UNIMPLEMENTED,
            grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE}

text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=300)
nasty = st.one_of(text, st.sampled_from(["", "/", "..", "../../etc", "a/b", "\x00", "x" * 5000,
                                         "/proc", "/etc/passwd", "-", "kube-system", " "]))
small = st.integers(min_value=-(2 ** 31), max_value=2 ** 31 - 1)


@st.composite
def pod_configs(draw: st.DrawFn) -> pb.PodSandboxConfig:
    cfg = pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name=draw(nasty), namespace=draw(nasty), uid=draw(nasty),
                                       attempt=draw(st.integers(0, 2 ** 32 - 1))),
        hostname=draw(nasty), log_directory=draw(st.sampled_from(["", "relative/logs", "/proc/x"]) | nasty))
    for k, v in draw(st.dictionaries(nasty, nasty, max_size=4)).items():
        cfg.labels[k] = v
    for k, v in draw(st.dictionaries(nasty, nasty, max_size=4)).items():
        cfg.annotations[k] = v
    if draw(st.booleans()):
        cfg.dns_config.servers.extend(draw(st.lists(nasty, max_size=3)))
        cfg.dns_config.searches.extend(draw(st.lists(nasty, max_size=3)))
        cfg.dns_config.options.extend(draw(st.lists(nasty, max_size=3)))
    for _ in range(draw(st.integers(0, 3))):
        cfg.port_mappings.add(protocol=draw(small), container_port=draw(small), host_port=draw(small),
                              host_ip=draw(nasty))
    ns = cfg.linux.security_context.namespace_options
    ns.network, ns.pid, ns.ipc = draw(small), draw(small), draw(small)
    cfg.linux.cgroup_parent = draw(nasty)
    for k, v in draw(st.dictionaries(nasty, nasty, max_size=3)).items():
        cfg.linux.sysctls[k] = v
    return cfg


@st.composite
def container_configs(draw: st.DrawFn) -> pb.ContainerConfig:
    cfg = container_config(draw(nasty), command=draw(st.lists(nasty, max_size=3)))
    cfg.args.extend(draw(st.lists(nasty, max_size=3)))
    cfg.working_dir = draw(nasty)
    if draw(st.booleans()):
        cfg.image.image = draw(nasty)
    for _ in range(draw(st.integers(0, 3))):
        cfg.mounts.add(host_path=draw(st.sampled_from(["/", "/proc", "/sys", "/etc", "/nonexistent",
                                                        "relative"]) | nasty),
                       container_path=draw(st.sampled_from(["/", "/proc", "/dev", ".."]) | nasty),
                       propagation=draw(small), readonly=draw(st.booleans()))
    for _ in range(draw(st.integers(0, 3))):
        cfg.envs.add(key=draw(nasty), value=draw(nasty))
    cfg.log_path = draw(st.sampled_from(["", "../../escape.log", "/abs.log"]) | nasty)
    sc = cfg.linux.security_context
    sc.run_as_user.value = draw(st.integers(0, 2 ** 63 - 1))
    sc.capabilities.add_capabilities.extend(draw(st.lists(nasty, max_size=2)))
    sc.seccomp.profile_type = draw(small)
    sc.seccomp.localhost_ref = draw(nasty)
    cfg.linux.resources.memory_limit_in_bytes = draw(st.integers(-(2 ** 63), 2 ** 63 - 1))
    cfg.linux.resources.cpu_shares = draw(st.integers(-(2 ** 63), 2 ** 63 - 1))
    return cfg


def host_view() -> dict[str, list[str]]:
    """What a stray call could change outside the test's directories."""
    def lines(path: str) -> list[str]:
        with open(path) as f:
            return sorted(line.split()[4] for line in f if "/tmp/pytest-of-" not in line)
    def listing(d: str) -> list[str]:
        return sorted(os.listdir(d)) if os.path.isdir(d) else []
    return {"mounts": lines("/proc/self/mountinfo"), "netns": listing("/run/netns"),
            "cni": listing("/var/lib/cni"), "etc_cni": listing("/etc/cni/net.d"),
            "logs": listing("/var/log/pods")}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PodWorld]:
    before = host_view()
    w = PodWorld(tmp_path_factory.mktemp("fuzz")).start()
    w.busybox()
    try:
        yield w
    finally:
        alive = w.server.proc is not None and w.server.proc.poll() is None
        w.close()
        assert alive, "the server died"
        assert host_view() == before


def check(world: PodWorld, exc: grpc.RpcError) -> None:
    assert exc.code() in OK_CODES, (exc.code(), exc.details())
    assert not (exc.details() or "").startswith("internal error:"), exc.details()   # a bug's


def clean(world: PodWorld) -> None:
    for c in world.rt.ListContainers(pb.ListContainersRequest(), timeout=60).containers:
        world.rt.StopContainer(pb.StopContainerRequest(container_id=c.id, timeout=0), timeout=60)
        world.rt.RemoveContainer(pb.RemoveContainerRequest(container_id=c.id), timeout=60)
    for s in world.rt.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=60).items:
        world.rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=s.id), timeout=60)
        world.rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=s.id), timeout=60)


@FUZZ
@given(cfg=pod_configs())
def test_random_pod_configs(world: PodWorld, cfg: pb.PodSandboxConfig) -> None:
    try:
        sandbox_id = world.rt.RunPodSandbox(pb.RunPodSandboxRequest(config=cfg), timeout=60).pod_sandbox_id
        world.rt.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id, verbose=True),
                                  timeout=30)
    except grpc.RpcError as exc:
        check(world, exc)
    finally:
        clean(world)
    world.rt.Version(pb.VersionRequest(), timeout=10)
    assert world.leftovers() == {}


@FUZZ
@given(cfg=container_configs())
def test_random_container_configs(world: PodWorld, cfg: pb.ContainerConfig) -> None:
    pod = pod_config("fuzz-pod", log_directory=str(world.work / "logs"))
    sandbox_id = world.rt.RunPodSandbox(pb.RunPodSandboxRequest(config=pod), timeout=60).pod_sandbox_id
    try:
        container_id = world.rt.CreateContainer(pb.CreateContainerRequest(
            pod_sandbox_id=sandbox_id, config=cfg, sandbox_config=pod), timeout=60).container_id
        world.rt.StartContainer(pb.StartContainerRequest(container_id=container_id), timeout=60)
    except grpc.RpcError as exc:
        check(world, exc)
    finally:
        clean(world)
    assert world.leftovers() == {}


@FUZZ
@given(ref=nasty, tag=nasty)
def test_random_image_references(world: PodWorld, ref: str, tag: str) -> None:
    for call in (lambda: world.img.ImageStatus(pb.ImageStatusRequest(image=pb.ImageSpec(image=ref)), timeout=30),
                 lambda: world.img.RemoveImage(pb.RemoveImageRequest(image=pb.ImageSpec(image=ref)), timeout=30),
                 # a registry on a port nothing listens on in the node: no traffic leaves it
                 lambda: world.img.PullImage(pb.PullImageRequest(image=pb.ImageSpec(
                     image=f"127.0.0.1:9/{ref.strip('/') or 'x'}:{tag or 'latest'}")), timeout=30)):
        try:
            call()
        except grpc.RpcError as exc:
            check(world, exc)
    # busybox is still there and whole
    assert world.img.ImageStatus(pb.ImageStatusRequest(image=pb.ImageSpec(
        image="registry.k8s.io/e2e-test-images/busybox:1.29-2")), timeout=30).image.id


@FUZZ
@given(data=st.binary(max_size=4096))
def test_random_bytes_on_the_socket(world: PodWorld, data: bytes) -> None:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5)
        sock.connect(str(world.server.socket))
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
            sock.recv(65536)
        except OSError:
            pass
    world.rt.Version(pb.VersionRequest(), timeout=10)
