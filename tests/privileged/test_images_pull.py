"""ImageService end to end: cri-shim in a throwaway node namespace pulls from local
registries there (Debian's docker-registry), the images built by the rig from busybox.

Every upstream name is sent to a local registry through containerd's hosts.toml, so
nothing reaches outside the namespace.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Iterator

import grpc
import pytest

from cri_shim.api import api_pb2 as pb
from testbed import imagebuild
from testbed.netns import Namespace
from testbed.registry import Registry
from testbed.server import Server

pytestmark = pytest.mark.privileged

BUSYBOX = "registry.k8s.io/e2e-test-images/busybox:1.29-2"


class World:
    """A node namespace with registries, images pushed to them, and cri-shim."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.node = Namespace("crishim-img")
        self.registries: list[Registry] = []
        self.server: Server | None = None
        self.certs = work / "certs.d"

    def registry(self, **kw) -> Registry:
        reg = Registry(self.node, self.work, **kw).start()
        self.registries.append(reg)
        return reg

    def mirror(self, upstream: str, reg: Registry) -> None:
        d = self.certs / upstream
        d.mkdir(parents=True, exist_ok=True)
        (d / "hosts.toml").write_text(f'server = "https://{upstream}"\n'
                                      f'[host."http://{reg.host}"]\n  capabilities = ["pull", "resolve"]\n')

    def start(self, extra: str = "") -> Server:
        self.server = Server(self.node, self.work / "shim", extra_toml=(
            f'[plugins."io.containerd.grpc.v1.cri".registry]\n  config_path = "{self.certs}"\n' + extra))
        return self.server.start()

    def pull(self, image: str, **auth) -> str:
        assert self.server is not None
        return self.server.image.PullImage(pb.PullImageRequest(
            image=pb.ImageSpec(image=image), auth=pb.AuthConfig(**auth)), timeout=120).image_ref

    def status(self, image: str) -> pb.ImageStatusResponse:
        assert self.server is not None
        return self.server.image.ImageStatus(pb.ImageStatusRequest(
            image=pb.ImageSpec(image=image), verbose=True), timeout=30)

    def images_dir(self) -> Path:
        return self.work / "shim" / "root" / "images"

    def leftovers(self) -> dict[str, list[str]]:
        d = self.images_dir()
        return {k: v for k, v in {
            "ingest": os.listdir(d / "content" / "ingest"),
            "tmp-snapshots": [n for n in os.listdir(d / "snapshots") if n.startswith(".")],
        }.items() if v}

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
        for reg in self.registries:
            reg.stop()
        self.node.delete()


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path)
    try:
        yield w
    finally:
        w.close()


@pytest.fixture
def busybox(tmp_path: Path) -> imagebuild.ImageLayout:
    return imagebuild.busybox_image(tmp_path / "layout", tag="1.29-2", user="www-data",
                                    files={"www/index.html": b"hello from the pod\n"},
                                    layers=[{"etc/motd": b"second layer\n"}], extra_config={
                                        "StopSignal": "SIGQUIT"})


def test_pull_status_list_remove(world: World, busybox) -> None:
    reg = world.registry()
    imagebuild.push(busybox, reg, "e2e-test-images/busybox")
    world.mirror("registry.k8s.io", reg)
    srv = world.start()
    image_ref = world.pull(BUSYBOX)
    assert image_ref == busybox.config_digest   # the image id, as containerd answers
    st = world.status(BUSYBOX)
    assert st.image.id == image_ref and st.image.size > 0
    assert list(st.image.repo_tags) == [BUSYBOX]
    assert list(st.image.repo_digests) == [f"registry.k8s.io/e2e-test-images/busybox@{busybox.digest}"]
    assert st.image.username == "www-data" and not st.image.HasField("uid")
    info = json.loads(st.info["info"])
    assert info["imageSpec"]["config"]["StopSignal"] == "SIGQUIT" and info["chainID"].startswith("sha256:")
    # Every way to name it finds it.
    for name in (image_ref, image_ref[7:], image_ref[7:20],
                 f"registry.k8s.io/e2e-test-images/busybox@{busybox.digest}"):
        assert world.status(name).image.id == image_ref, name
    assert world.status("registry.k8s.io/e2e-test-images/busybox:other").image.id == ""
    listed = srv.image.ListImages(pb.ListImagesRequest(), timeout=30).images
    assert [i.id for i in listed] == [image_ref]
    assert srv.image.ListImages(pb.ListImagesRequest(filter=pb.ImageFilter(
        image=pb.ImageSpec(image=BUSYBOX))), timeout=30).images[0].id == image_ref
    # The layers are unpacked, one overlay lower dir each.
    snaps = world.images_dir() / "snapshots"
    fs = [snaps / d / "fs" for d in os.listdir(snaps)]
    assert len(fs) == 2 and any((f / "www/index.html").exists() for f in fs)
    assert any((f / "bin/busybox").exists() for f in fs)
    used = srv.image.ImageFsInfo(pb.ImageFsInfoRequest(), timeout=30).image_filesystems[0]
    # Each inode once (busybox's applets are hard links of one file), the content
    # store and the image records besides the snapshots.
    inodes = {os.lstat(os.path.join(d, n)).st_ino for d, dirs, files in os.walk(snaps)
              for n in dirs + files}
    assert used.used_bytes.value > 1_000_000 and used.inodes_used.value > len(inodes) > 20
    assert used.fs_id.mountpoint == str(snaps)
    # A second pull of a present image: nothing fetched again.
    before = len(list((world.images_dir() / "content" / "blobs" / "sha256").iterdir()))
    assert world.pull(BUSYBOX) == image_ref
    assert len(list((world.images_dir() / "content" / "blobs" / "sha256").iterdir())) == before
    # Survives a restart.
    srv.stop()
    srv = world.start()
    assert world.status(BUSYBOX).image.id == image_ref
    srv.image.RemoveImage(pb.RemoveImageRequest(image=pb.ImageSpec(image=BUSYBOX)), timeout=30)
    assert world.status(image_ref).image.id == ""
    assert os.listdir(snaps) == [] and os.listdir(world.images_dir() / "content/blobs/sha256") == []
    srv.image.RemoveImage(pb.RemoveImageRequest(image=pb.ImageSpec(image=BUSYBOX)), timeout=30)
    assert world.leftovers() == {}


def test_formats_docker_v2s2_zstd_and_a_multi_platform_index(world: World, tmp_path: Path) -> None:
    reg = world.registry()
    plain = imagebuild.busybox_image(tmp_path / "a", tag="v1", files={"which": b"a\n"})
    imagebuild.push(plain, reg, "app", "v2s2", fmt="v2s2")
    imagebuild.push(plain, reg, "app", "zstd", compress="zstd")
    multi = imagebuild.multi_platform(tmp_path / "m", tag="multi", files={"which": b"m\n"})
    imagebuild.push(multi, reg, "app", "multi")
    imagebuild.push(multi, reg, "app", "multi-docker", fmt="v2s2")
    world.start()
    for tag in ("v2s2", "zstd", "multi", "multi-docker"):
        image = f"{reg.host}/app:{tag}"
        world.pull(image)
        st = world.status(image).image
        assert image in st.repo_tags, tag
    assert world.status(f"{reg.host}/app:v2s2").image.id == world.status(f"{reg.host}/app:zstd").image.id
    # The index's amd64 entry, not another platform's.
    multi_status = world.status(f"{reg.host}/app:multi")
    assert json.loads(multi_status.info["info"])["imageSpec"]["architecture"] == "amd64"
    assert world.leftovers() == {}


def test_auth_basic_and_token(world: World, busybox) -> None:
    basic = world.registry(port=5001, auth="htpasswd")
    token = world.registry(port=5002, auth="token")
    for reg in (basic, token):
        imagebuild.push(busybox, reg, "private/app", "1")
    world.start()
    for reg in (basic, token):
        image = f"{reg.host}/private/app:1"
        with pytest.raises(grpc.RpcError) as exc:
            world.pull(image)
        assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED, exc.value.details()
        assert reg.host in exc.value.details()
        with pytest.raises(grpc.RpcError) as exc:
            world.pull(image, username="testuser", password="wrong")
        assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert world.pull(image, username="testuser", password="testpassword") == busybox.config_digest
    # base64 "user:password" works too (crictl --auth).
    import base64
    world.server.image.RemoveImage(pb.RemoveImageRequest(image=pb.ImageSpec(image=busybox.config_digest)))
    assert world.pull(f"{basic.host}/private/app:1",
                      auth=base64.b64encode(b"testuser:testpassword").decode()) == busybox.config_digest


def test_credentials_from_the_registry_table(world: World, busybox) -> None:
    reg = world.registry(port=5003, auth="htpasswd")
    imagebuild.push(busybox, reg, "private/app", "1")
    world.start(f'[plugins."io.containerd.grpc.v1.cri".registry.configs."{reg.host}".auth]\n'
                '  username = "testuser"\n  password = "testpassword"\n')
    assert world.pull(f"{reg.host}/private/app:1") == busybox.config_digest


def test_blob_redirects_are_followed(world: World, busybox) -> None:
    reg = world.registry(port=5004, redirect=True)
    imagebuild.push(busybox, reg, "app", "1")
    world.start()
    assert world.pull(f"{reg.host}/app:1") == busybox.config_digest


def test_bad_input_and_faults_leave_nothing(world: World, busybox, tmp_path: Path) -> None:
    reg = world.registry()
    imagebuild.push(busybox, reg, "app", "good")
    arm = imagebuild.multi_platform(tmp_path / "arm", tag="arm", platforms=[("arm64", "v8")])
    imagebuild.push(arm, reg, "app", "arm-only")
    world.start()

    def fails(image: str, code: grpc.StatusCode, *words: str) -> None:
        with pytest.raises(grpc.RpcError) as exc:
            world.pull(image)
        assert exc.value.code() == code, exc.value.details()
        for w in words:
            assert w in exc.value.details(), exc.value.details()

    fails("Bad/Name", grpc.StatusCode.INVALID_ARGUMENT, "must be lowercase")
    fails(f"{reg.host}/app:missing", grpc.StatusCode.NOT_FOUND, f"{reg.host}/app:missing")
    fails(f"{reg.host}/nothing/here:1", grpc.StatusCode.NOT_FOUND)
    fails("127.0.0.1:5999/app:1", grpc.StatusCode.UNAVAILABLE, "http://127.0.0.1:5999/v2")
    fails(f"{reg.host}/app:arm-only", grpc.StatusCode.NOT_FOUND, "no manifest for platform linux/amd64",
          "linux/arm64/v8")
    # A corrupt layer blob in the registry: DATA_LOSS, nothing listed, no temp file.
    layer = busybox.layers[1].digest
    blob = reg.root / "docker/registry/v2/blobs/sha256" / layer[7:9] / layer[7:] / "data"
    good = blob.read_bytes()
    blob.write_bytes(good[:-10] + b"0123456789")
    fails(f"{reg.host}/app:good", grpc.StatusCode.DATA_LOSS, layer)
    assert world.server.image.ListImages(pb.ListImagesRequest(), timeout=30).images == []
    assert world.leftovers() == {}
    blob.write_bytes(good)
    assert world.pull(f"{reg.host}/app:good") == busybox.config_digest


def test_tags_removal_keeps_the_image_while_named(world: World, busybox) -> None:
    reg = world.registry()
    imagebuild.push(busybox, reg, "app", "a")
    imagebuild.push(busybox, reg, "app", "b")
    srv = world.start()
    a, b = f"{reg.host}/app:a", f"{reg.host}/app:b"
    assert world.pull(a) == world.pull(b)
    assert sorted(world.status(a).image.repo_tags) == [a, b]
    srv.image.RemoveImage(pb.RemoveImageRequest(image=pb.ImageSpec(image=a)), timeout=30)
    assert world.status(a).image.id == "" and world.status(b).image.repo_tags == [b]
    srv.image.RemoveImage(pb.RemoveImageRequest(image=pb.ImageSpec(image=busybox.config_digest)),
                          timeout=30)
    assert srv.image.ListImages(pb.ListImagesRequest(), timeout=30).images == []


def test_concurrent_pulls_share_and_a_remove_during_a_pull_is_safe(world: World, tmp_path: Path) -> None:
    reg = world.registry()
    big = imagebuild.big_image(tmp_path / "big", layers=3, layer_mib=8)
    imagebuild.push(big, reg, "big", "1")
    world.start()
    image = f"{reg.host}/big:1"
    outcomes: list = []

    def pull() -> None:
        try:
            outcomes.append(world.pull(image))
        except grpc.RpcError as exc:
            outcomes.append(exc)
    threads = [threading.Thread(target=pull) for _ in range(4)]
    for t in threads:
        t.start()
    world.server.image.RemoveImage(pb.RemoveImageRequest(image=pb.ImageSpec(image=image)), timeout=30)
    for t in threads:
        t.join()
    assert outcomes == [big.config_digest] * 4
    assert world.status(image).image.id == big.config_digest
    assert world.leftovers() == {}


def test_import_docker_and_oci_archives(world: World, busybox, tmp_path: Path) -> None:
    srv = world.start()
    docker = imagebuild.archive(busybox, tmp_path / "save.tar", "docker", name="busybox")
    oci = imagebuild.archive(busybox, tmp_path / "oci.tar", "oci")
    out = srv.ctl("import", str(docker)).stdout
    assert "docker.io/library/busybox:1.29-2" in out and busybox.config_digest in out
    assert world.status("busybox:1.29-2").image.id == busybox.config_digest
    srv.ctl("import", str(oci))
    listed = srv.ctl("images").stdout
    assert "docker.io/library/busybox" in listed and busybox.config_digest[7:20] in listed
    bad = tmp_path / "bad.tar"
    bad.write_bytes(b"not a tar")
    proc = srv.ctl("import", str(bad), check=False)
    assert proc.returncode == 1 and "INVALID_ARGUMENT" in proc.stderr and "bad.tar" in proc.stderr


def test_a_full_disk_fails_cleanly(world: World, tmp_path: Path) -> None:
    reg = world.registry()
    big = imagebuild.big_image(tmp_path / "big", layers=2, layer_mib=8)
    imagebuild.push(big, reg, "big", "1")
    images = world.work / "shim" / "root" / "images"
    images.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(images)], check=True)
    try:
        world.start()
        with pytest.raises(grpc.RpcError) as exc:
            world.pull(f"{reg.host}/big:1")
        assert exc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc.value.details()
        assert "No space left on device" in exc.value.details()
        assert world.leftovers() == {}
        world.server.stop()
    finally:
        subprocess.run(["umount", str(images)], check=True)


def test_ctl_image_commands_print_what_crictl_prints(world: World, busybox) -> None:
    reg = world.registry()
    imagebuild.push(busybox, reg, "e2e-test-images/busybox")
    world.mirror("registry.k8s.io", reg)
    srv = world.start()
    assert srv.ctl("pull", BUSYBOX).stdout.strip() == f"Image is up to date for {busybox.config_digest}"
    table = srv.ctl("images").stdout.splitlines()
    assert table[0].split() == ["IMAGE", "TAG", "IMAGE", "ID", "SIZE"]
    assert table[1].split()[:3] == ["registry.k8s.io/e2e-test-images/busybox", "1.29-2",
                                    busybox.config_digest[7:20]]
    assert srv.ctl("images", "-q").stdout.split() == [busybox.config_digest]
    inspected = json.loads(srv.ctl("inspecti", BUSYBOX).stdout)
    assert inspected["status"]["id"] == busybox.config_digest and "imageSpec" in inspected["info"]
    fs = json.loads(srv.ctl("imagefsinfo").stdout)["status"]["imageFilesystems"][0]
    assert int(fs["usedBytes"]["value"]) > 0
    assert srv.ctl("rmi", BUSYBOX).stdout.strip() == f"Deleted: {BUSYBOX}"
    proc = srv.ctl("rmi", BUSYBOX, check=False)
    assert proc.returncode == 1 and "no such image" in proc.stderr


def test_a_many_layer_archive_imports_every_time(world: World, tmp_path: Path) -> None:
    """The layers of one archive are read side by side from the one file: every import
    of a 7-layer docker save must verify (a shared, unlocked TarFile mixed them up)."""
    srv = world.start()
    many = imagebuild.big_image(tmp_path / "many", layers=6, layer_mib=2, tag="many")
    saved = imagebuild.archive(many, tmp_path / "many.tar", "docker", name="many")
    for _ in range(4):
        srv.ctl("import", str(saved))
        assert world.status("many:many").image.id == many.config_digest
        srv.image.RemoveImage(pb.RemoveImageRequest(image=pb.ImageSpec(image=many.config_digest)),
                              timeout=30)
    assert world.leftovers() == {}


def test_a_lone_manifest_for_another_platform_is_refused(world: World, tmp_path: Path) -> None:
    reg = world.registry()
    arm = imagebuild.busybox_image(tmp_path / "arm", tag="arm", arch="arm64")
    imagebuild.push(arm, reg, "app", "arm")
    world.start()
    with pytest.raises(grpc.RpcError) as exc:
        world.pull(f"{reg.host}/app:arm")
    assert exc.value.code() == grpc.StatusCode.NOT_FOUND
    assert "the image is for linux/arm64, this machine is linux/amd64" in exc.value.details()
    assert world.server.image.ListImages(pb.ListImagesRequest(), timeout=30).images == []


def test_kubelet_credentials_for_a_server_are_not_sent_to_a_mirror(world: World, busybox) -> None:
    """As containerd: PullImageRequest.auth with a server_address goes only to that
    host; the mirror gets the registry table's entry for its own host."""
    mirror = world.registry(port=5006, auth="htpasswd")
    imagebuild.push(busybox, mirror, "e2e-test-images/busybox")
    world.mirror("registry.k8s.io", mirror)
    # Only the mirror answers: registry.k8s.io itself is unreachable in the namespace.
    creds = dict(username="testuser", password="testpassword")
    world.start()
    with pytest.raises(grpc.RpcError) as exc:
        world.pull(BUSYBOX, server_address="registry.k8s.io", **creds)
    assert exc.value.code() in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAVAILABLE)
    assert world.pull(BUSYBOX, **creds) == busybox.config_digest   # no server named: every host
    world.server.image.RemoveImage(pb.RemoveImageRequest(image=pb.ImageSpec(image=BUSYBOX)), timeout=30)
    world.server.stop()
    world.start(f'[plugins."io.containerd.grpc.v1.cri".registry.configs."{mirror.host}".auth]\n'
                '  username = "testuser"\n  password = "testpassword"\n')
    assert world.pull(BUSYBOX) == busybox.config_digest


@pytest.mark.parametrize("when", ["downloading", "unpacking"])
def test_a_server_killed_mid_pull_leaves_no_half_blob_or_snapshot(world: World, tmp_path: Path,
                                                                  when: str) -> None:
    """kill -9 while a 5-layer pull is writing blobs (or unpacking them): the next start
    drops the partial blobs and half-made snapshots, the image is not listed, and the
    same pull then succeeds whole."""
    reg = world.registry()
    big = imagebuild.big_image(tmp_path / "big", layers=5, layer_mib=10)
    imagebuild.push(big, reg, "big", "1")
    srv = world.start()
    ref = f"{reg.host}/big:1"
    got: list = []
    t = threading.Thread(target=lambda: got.append(_try(lambda: world.pull(ref))))
    t.start()
    d = world.images_dir()
    deadline = time.monotonic() + 60

    def busy() -> bool:
        if when == "downloading":
            return bool(os.listdir(d / "content" / "ingest")) if (d / "content" / "ingest").exists() else False
        return (d / "snapshots").exists() and any(n.startswith(".") for n in os.listdir(d / "snapshots"))
    while not busy():
        assert time.monotonic() < deadline and t.is_alive(), f"never {when}:\n{srv.log_tail()}"
    os.kill(srv.pid, 9)
    t.join(30)
    srv.stop()
    srv.start()
    assert world.leftovers() == {}                       # no partial blob, no half snapshot
    listed = srv.image.ListImages(pb.ListImagesRequest(), timeout=30).images
    assert [i for i in listed if ref in i.repo_tags] == []   # not listed half made
    assert world.pull(ref) == big.config_digest
    assert world.status(ref).image.id == big.config_digest
    assert world.leftovers() == {}


def _try(call):
    try:
        return call()
    except grpc.RpcError as exc:
        return exc.code()
