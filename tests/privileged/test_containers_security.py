"""A container's security context, as containerd applies it: users and groups from the
image, capabilities, privileged, read-only rootfs, masked and read-only paths,
seccomp, no_new_privs, and the mounts' access and propagation."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Iterator

import grpc
import pytest

from cri_shim.api import api_pb2 as pb
from testbed import imagebuild
from testbed.containers import PodWorld, container_config

pytestmark = pytest.mark.privileged

PASSWD = imagebuild.PASSWD + "app:x:1000:1000:app:/home/app:/bin/sh\n"
GROUP = imagebuild.GROUP + "app:x:1000:\nextra:x:50000:app\n"


@pytest.fixture
def world(tmp_path: Path) -> Iterator[PodWorld]:
    w = PodWorld(tmp_path)
    try:
        w.start()
        w.busybox(passwd=PASSWD, group=GROUP)
        setuid = imagebuild.busybox_image(tmp_path / "setuid-layout", tag="1", user="www-data",
                                          passwd=PASSWD, group=GROUP,
                                          files={"usr/local/bin/euid": (imagebuild.euid_exit_program(), 0o4755)})
        w.import_image(setuid, "registry.test/setuid:1")
        yield w
    finally:
        w.close()


def sc(**fields) -> pb.LinuxContainerConfig:
    fields.setdefault("namespace_options", pb.NamespaceOption(pid=pb.CONTAINER))
    return pb.LinuxContainerConfig(security_context=pb.LinuxContainerSecurityContext(**fields))


def run(world: PodWorld, sid: str, name: str, *cmd: str, **fields) -> str:
    return world.run(sid, container_config(name, command=list(cmd) or ["sleep", "1000"], **fields))


def out(world: PodWorld, cid: str, *cmd: str, ok: bool = True) -> str:
    r = world.exec(cid, *cmd)
    if ok:
        assert r.exit_code == 0, r.stderr
    return (r.stdout + r.stderr).decode()


def test_users_and_groups_from_the_image(world: PodWorld) -> None:
    sid = world.run_pod("users")
    a = run(world, sid, "uid", linux=sc(run_as_user=pb.Int64Value(value=1001)))
    assert out(world, a, "id").strip() == "uid=1001 gid=0(root) groups=0(root)"
    b = run(world, sid, "name", linux=sc(run_as_username="app", supplemental_groups=[1234]))
    assert out(world, b, "id", "-G").split() == ["1000", "1234", "50000"]
    st = world.status(b).status
    assert (st.user.linux.uid, st.user.linux.gid, list(st.user.linux.supplemental_groups)) == \
        (1000, 1000, [1000, 1234, 50000])
    c = run(world, sid, "strict", linux=sc(run_as_user=pb.Int64Value(value=1000),
                                           supplemental_groups=[1234],
                                           supplemental_groups_policy=pb.Strict))
    assert out(world, c, "id", "-G").split() == ["1000", "1234"]
    d = run(world, sid, "group", linux=sc(run_as_user=pb.Int64Value(value=1001),
                                          run_as_group=pb.Int64Value(value=1002)))
    assert out(world, d, "sh", "-c", "echo $(id -u):$(id -g)").strip() == "1001:1002"
    e = world.run(sid, container_config("imageuser", image="registry.test/setuid:1",
                                        command=["sleep", "1000"]))
    assert out(world, e, "id", "-u").strip() == "33"   # the image's USER www-data
    world.remove_pod(sid)
    assert world.leftovers() == {}


def test_capabilities_privileged_and_all(world: PodWorld) -> None:
    sid = world.run_pod("caps")
    plain = run(world, sid, "plain")
    assert "brctl" in out(world, plain, "brctl", "addbr", "br-x", ok=False)
    added = run(world, sid, "added", linux=sc(capabilities=pb.Capability(add_capabilities=["NET_ADMIN"])))
    out(world, added, "brctl", "addbr", "br-y")
    dropped = run(world, sid, "dropped", linux=sc(capabilities=pb.Capability(drop_capabilities=["ALL"])))
    assert "CapBnd:\t0000000000000000" in out(world, dropped, "cat", "/proc/self/status")
    everything = run(world, sid, "all", linux=sc(capabilities=pb.Capability(add_capabilities=["ALL"])))
    assert "CapBnd:\t0000000000000000" not in out(world, everything, "cat", "/proc/self/status")
    world.remove_pod(sid)
    priv_pod = world.run_pod("priv", linux=pb.LinuxPodSandboxConfig(
        security_context=pb.LinuxSandboxSecurityContext(privileged=True)))
    priv = run(world, priv_pod, "priv", linux=sc(privileged=True))
    out(world, priv, "brctl", "addbr", "br-z")
    assert "Seccomp:\t0" in out(world, priv, "cat", "/proc/self/status")
    assert out(world, priv, "sh", "-c", "ls /dev | wc -l").strip() != "0"
    world.remove_pod(priv_pod)
    assert world.leftovers() == {}


def test_readonly_rootfs_masked_and_readonly_paths(world: PodWorld) -> None:
    sid = world.run_pod("ro")
    ro = run(world, sid, "ro", linux=sc(readonly_rootfs=True))
    assert "Read-only file system" in out(world, ro, "touch", "/test.go", ok=False)
    rw = run(world, sid, "rw")
    out(world, rw, "touch", "/test.go")
    masked = run(world, sid, "masked", linux=sc(masked_paths=["/bin/ls"], readonly_paths=["/tmp"]))
    # By path: Debian's busybox-static runs "ls" itself without looking at /bin/ls.
    r = world.exec(masked, "/bin/sh", "-c", "/bin/ls")
    assert r.exit_code != 0 and r.stderr == b"/bin/sh: /bin/ls: Permission denied\n"
    assert world.exec(masked, "/bin/cat", "/etc/hostname").exit_code == 0   # busybox itself is not
    r = world.exec(masked, "touch", "/tmp/test")
    assert r.stderr == b"touch: /tmp/test: Read-only file system\n"
    world.remove_pod(sid)
    assert world.leftovers() == {}


def test_seccomp_default_unconfined_and_localhost(world: PodWorld, tmp_path: Path) -> None:
    sid = world.run_pod("seccomp")
    default = run(world, sid, "default", linux=sc(seccomp=pb.SecurityProfile()))
    assert "Seccomp:\t2" in out(world, default, "cat", "/proc/self/status")
    none = run(world, sid, "none")
    assert "Seccomp:\t0" in out(world, none, "cat", "/proc/self/status")
    profile = tmp_path / "block-chmod.json"
    profile.write_text(json.dumps({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["chmod", "fchmodat", "fchmodat2"], "action": "SCMP_ACT_ERRNO"}]}))
    local = run(world, sid, "local", linux=sc(seccomp=pb.SecurityProfile(
        profile_type=pb.SecurityProfile.Localhost, localhost_ref=str(profile))))
    assert "Operation not permitted" in out(world, local, "chmod", "400", "/tmp", ok=False)
    with pytest.raises(grpc.RpcError) as exc:
        run(world, sid, "missing", linux=sc(seccomp=pb.SecurityProfile(
            profile_type=pb.SecurityProfile.Localhost, localhost_ref=str(tmp_path / "nope.json"))))
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "nope.json" in exc.value.details()
    world.remove_pod(sid)
    assert world.leftovers() == {}


def test_no_new_privs_stops_a_setuid_binary(world: PodWorld) -> None:
    """A setuid-root program (exiting with its effective uid) run as www-data (33)."""
    sid = world.run_pod("nnp")
    free = world.run(sid, container_config("free", image="registry.test/setuid:1",
                                           command=["sleep", "1000"]))
    assert world.exec(free, "/usr/local/bin/euid").exit_code == 0        # raised to root
    held = world.run(sid, container_config("held", image="registry.test/setuid:1",
                                           command=["sleep", "1000"], linux=sc(no_new_privs=True)))
    assert world.exec(held, "/usr/local/bin/euid").exit_code == 33       # kept as it was
    world.remove_pod(sid)
    assert world.leftovers() == {}


def test_mounts_access_and_propagation(world: PodWorld, tmp_path: Path) -> None:
    host = tmp_path / "host"
    (host / "sub").mkdir(parents=True)
    (host / "file.txt").write_text("from the node")
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(host / "sub")], check=True)
    shared = tmp_path / "shared"
    shared.mkdir()
    subprocess.run(["mount", "--bind", str(shared), str(shared)], check=True)
    subprocess.run(["mount", "--make-rshared", str(shared)], check=True)
    link = tmp_path / "link"
    link.symlink_to(host)
    try:
        sid = world.run_pod("mounts", linux=pb.LinuxPodSandboxConfig(
            security_context=pb.LinuxSandboxSecurityContext(privileged=True)))
        mounts = [pb.Mount(host_path=str(host), container_path="/ro", readonly=True),
                  pb.Mount(host_path=str(link), container_path="/via-link"),
                  pb.Mount(host_path=str(shared), container_path="/shared",
                           propagation=pb.PROPAGATION_BIDIRECTIONAL)]
        cid = world.create(sid, container_config("m", command=["sleep", "1000"], mounts=mounts,
                                                 linux=sc(privileged=True)))
        st = world.status(cid).status
        assert [(m.container_path, m.host_path, m.readonly, m.propagation) for m in st.mounts] == \
            [(m.container_path, m.host_path, m.readonly, m.propagation) for m in mounts]
        world.start_container(cid)
        assert out(world, cid, "cat", "/ro/file.txt") == "from the node"
        assert "Read-only file system" in out(world, cid, "touch", "/ro/x", ok=False)
        out(world, cid, "touch", "/ro/sub/x")     # a submount of a ro bind stays writable
        assert out(world, cid, "cat", "/via-link/file.txt") == "from the node"
        out(world, cid, "sh", "-c", "mkdir -p /shared/inner && mount -t tmpfs tmpfs /shared/inner")
        assert subprocess.run(["findmnt", str(shared / "inner")], capture_output=True).returncode == 0
        with pytest.raises(grpc.RpcError) as exc:   # a source whose mount is not shared
            world.create(sid, container_config("bad", command=["true"], mounts=[pb.Mount(
                host_path=str(host), container_path="/x", propagation=pb.PROPAGATION_BIDIRECTIONAL)],
                linux=sc(privileged=True)))
        assert "is not a shared mount" in exc.value.details()
        world.remove_pod(sid)
    finally:
        subprocess.run(["umount", "-R", str(shared)], check=False)
        subprocess.run(["umount", str(host / "sub")], check=False)
    assert world.leftovers() == {}
