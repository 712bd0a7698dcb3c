"""The critest images (testbed.critestimages): built once, pushed to a local registry
in a throwaway node namespace, found under every upstream name through the hosts.toml
mirrors, and pulled by cri-shim from there; what critest relies on inside them is
checked in the layers (nginx's libraries, nnp's setuid bit, busybox's applets, users).
"""

from __future__ import annotations

import io
import re
import subprocess
import tarfile
import tomllib
from pathlib import Path
from typing import Iterator

import pytest

from cri_shim.api import api_pb2 as pb
from testbed import critestimages as ci
from testbed.imagebuild import OCI_INDEX, OCI_MANIFEST, ImageLayout
from testbed.netns import Namespace
from testbed.registry import Registry
from testbed.server import Server

pytestmark = pytest.mark.privileged

ACCEPT = ", ".join((OCI_INDEX, OCI_MANIFEST))
CRITEST_APPLETS = ("top", "sh", "echo", "sleep", "pgrep", "ls", "id", "ipcs", "pidof", "brctl",
                   "ping", "hostname", "netstat", "cat", "touch", "mount", "dd", "grep", "httpd")


class Published:
    """The images, a node namespace with a registry holding them, the mirrors."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.images = ci.build_all(work)
        self.node = Namespace("crishim-cti")
        self.registry: Registry | None = None
        self.certs = work / "certs.d"

    def publish(self) -> None:
        self.registry = Registry(self.node, self.work).start()
        self.digests = ci.push_all(self.images, self.registry)
        self.mirrors = ci.mirror(self.registry, self.certs)

    def close(self) -> None:
        if self.registry is not None:
            self.registry.stop()
        self.node.delete()


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Published]:
    world = Published(tmp_path_factory.mktemp("critest-images"))
    try:
        world.publish()
        yield world
    finally:
        world.close()


def layer_files(image: ImageLayout, index: int = -1) -> dict[str, tuple[tarfile.TarInfo, bytes]]:
    """Path -> (tarinfo, data) of one layer of *image* (default: its top one)."""
    out = {}
    with tarfile.open(fileobj=io.BytesIO(image.blob(image.layers[index].digest))) as tar:
        for info in tar:
            data = tar.extractfile(info).read() if info.isfile() else b""
            out[info.name] = (info, data)
    return out


def test_the_build_covers_critest_and_is_reused(published: Published) -> None:
    assert set(published.images) == set(ci.IMAGES)
    assert ci.build_all(published.work) == published.images            # the process cache
    ci._BUILT.clear()                                                    # the directory cache
    reopened = ci.build_all(published.work)
    assert {n: i.digest for n, i in reopened.items()} == {n: i.digest for n, i in published.images.items()}


def test_every_upstream_name_resolves_through_its_mirror(published: Published) -> None:
    assert sorted(p.parent.name for p in published.mirrors) == sorted(ci.UPSTREAMS)
    for name in ci.IMAGES:
        host = name.split("/", 1)[0]
        hosts = tomllib.loads((published.certs / host / "hosts.toml").read_text())
        assert hosts["server"] == f"https://{host}"
        (endpoint, caps), = ((k, v["capabilities"]) for k, v in hosts["host"].items())
        assert "pull" in caps and "resolve" in caps
        repo, tag = ci.local_ref(name)
        assert published.registry is not None
        r = published.registry.request("GET", f"{endpoint}/v2/{repo}/manifests/{tag}",
                                       headers={"Accept": ACCEPT})
        assert r.status == 200, (name, r.body[:200])
        image = published.images[name]
        assert r.headers["docker-content-digest"] == image.digest == published.digests[name], name
        assert r.headers["content-type"] == image.media_type, name
        # critest's build publishes indexes; hostnet-nginx-<arch> is one manifest
        assert image.media_type == (OCI_MANIFEST if name == ci.HOSTNET_NGINX else OCI_INDEX), name


def test_ids_are_shared_where_critest_expects_one_image(published: Published) -> None:
    def image_id(name: str) -> str:
        return ci.amd64(published.images[name]).config_digest
    assert image_id(ci.PAUSE) == image_id(ci.PAUSE_GCR)
    assert published.digests[ci.PAUSE] == published.digests[ci.PAUSE_GCR]
    cri = "gcr.io/k8s-staging-cri-tools"
    assert len({image_id(f"{cri}/test-image-tags:{t}") for t in ("1", "2", "3")}) == 1
    assert image_id(f"{cri}/test-image-tag:test") == image_id(f"{cri}/test-image-tag:all")
    marked = [f"{cri}/test-image-{m}:latest" for m in ("latest", "1", "2", "3")]
    assert len({image_id(n) for n in marked}) == 4
    # every other name is an image of its own
    names = set(ci.IMAGES) - {ci.PAUSE_GCR, f"{cri}/test-image-tag:all",
                              f"{cri}/test-image-tags:2", f"{cri}/test-image-tags:3"}
    assert len({image_id(n) for n in names}) == len(names)


def _elf(path: Path, flag: str) -> str:
    return subprocess.run(["readelf", flag, "-W", str(path)], capture_output=True, text=True,
                          check=True).stdout


def test_nginx_has_every_library_it_needs(published: Published, tmp_path: Path) -> None:
    for name, port in ((ci.NGINX, 80), (ci.HOSTNET_NGINX, 12003)):
        image = ci.amd64(published.images[name])
        files = layer_files(image)
        config = image.config()["config"]
        assert config["Cmd"] == ["/usr/sbin/nginx"] and "Entrypoint" not in config
        conf = files["etc/nginx/nginx.conf"][1].decode()
        for line in ("daemon off;", "pid /var/run/nginx.pid;", f"listen {port};", "error_log stderr",
                     "access_log /proc/self/fd/1;", "user nginx;"):
            assert line in conf, (name, line)
        assert b"Welcome to nginx!" in files["usr/share/nginx/html/index.html"][1]
        assert files["var/run"][0].linkname == "../run"
        for d in ("var/log/nginx", "var/lib/nginx", "var/cache/nginx", "run"):
            assert files[d][0].isdir(), d
        base = {p for p, _ in layer_files(image, 0).items()}
        assert {"bin/sh", "bin/cat", "bin/sleep", "etc/passwd"} <= base
        assert "nginx:x:101:101:" in layer_files(image, 0)["etc/passwd"][1].decode()
        # The loader and the ELF NEEDED closure, resolved in the layer as ld.so would
        # (Debian's default dirs; no ld.so.cache in the image).
        elves = {p: d for p, (i, d) in files.items() if i.isfile() and d[:4] == b"\x7fELF"}
        out = tmp_path / Path(name).name.replace(":", "_")
        out.mkdir()
        interp = re.search(r"interpreter: (\S+)\]", _elf(_write(out, "nginx", elves["usr/sbin/nginx"]), "-l"))
        assert interp and interp.group(1).lstrip("/") in elves
        loader = interp.group(1).lstrip("/")
        todo, seen = ["usr/sbin/nginx"], set()
        while todo:
            path = todo.pop()
            seen.add(path)
            needed = re.findall(r"\(NEEDED\)\s+Shared library: \[(.+?)\]",
                                _elf(_write(out, path.replace("/", "_"), elves[path]), "-d"))
            for lib in needed:
                if lib == Path(loader).name:                 # ld.so answers for itself
                    continue
                found = [f"{d}/{lib}" for d in ("lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu",
                                                 "lib", "usr/lib") if f"{d}/{lib}" in elves]
                assert found, f"{name}: {path} needs {lib}, not in the layer"
                todo += [f for f in found[:1] if f not in seen]
        assert {"lib/x86_64-linux-gnu/libc.so.6", "lib/x86_64-linux-gnu/libssl.so.3"} <= seen


def _write(d: Path, name: str, data: bytes) -> Path:
    (d / name).write_bytes(data)
    return d / name


def test_nnp_is_setuid_root_and_on_path(published: Published, tmp_path: Path) -> None:
    image = ci.amd64(published.images[ci.NONEWPRIVS])
    info, data = layer_files(image)["usr/local/bin/nnp"]
    assert (info.mode, info.uid, info.gid) == (0o4755, 0, 0)
    config = image.config()["config"]
    assert config["Cmd"] == ["nnp"]
    path = next(e for e in config["Env"] if e.startswith("PATH="))
    assert "/usr/local/bin" in path.split("=", 1)[1].split(":")
    nnp = _write(tmp_path, "nnp", data)
    nnp.chmod(0o755)
    assert subprocess.run([str(nnp)], capture_output=True, text=True, check=True).stdout == "Effective uid: 0\n"
    assert b"Effective uid: %d" in data and b"Effective uid" in ci.NNP_C.encode()


def test_busybox_and_the_user_images(published: Published) -> None:
    image = ci.amd64(published.images[ci.BUSYBOX])
    base = layer_files(image, 0)
    assert [a for a in CRITEST_APPLETS if f"bin/{a}" not in base] == []
    assert image.config()["config"]["Cmd"] == ["sh"]
    cri = "gcr.io/k8s-staging-cri-tools"
    users = {"uid": "1002", "username": "www-data", "uid-group": "1003:1004",
             "username-group": "www-data:1004"}
    for kind, user in users.items():
        image = ci.amd64(published.images[f"{cri}/test-image-user-{kind}:latest"])
        assert image.config()["config"]["User"] == user, kind
    predefined = ci.amd64(published.images[ci.PREDEFINED_GROUP])
    assert predefined.config()["config"]["User"] == "1000"
    etc = layer_files(predefined, 0)
    assert re.search(r"^[^:]+:x:1000:1000:", etc["etc/passwd"][1].decode(), re.M)
    groups = {line.split(":")[2]: line.split(":")[3] for line in etc["etc/group"][1].decode().split()}
    user = re.search(r"^([^:]+):x:1000:", etc["etc/passwd"][1].decode(), re.M).group(1)
    assert "1000" in groups and user in groups["50000"].split(",")
    httpd = ci.amd64(published.images[ci.HTTPD])
    script = layer_files(httpd)["usr/local/bin/httpd-foreground"][1].decode()
    assert httpd.config()["config"]["Cmd"] == ["httpd-foreground"] and "echo \"httpd" in script
    pause = ci.amd64(published.images[ci.PAUSE])
    assert pause.config()["config"]["Entrypoint"] == ["/pause", "-P"]
    assert list(layer_files(pause)) == ["pause"] and len(pause.layers) == 1


def test_cri_shim_pulls_every_image_through_the_mirrors(published: Published) -> None:
    server = Server(published.node, published.work / "shim", extra_toml=(
        f'[plugins."io.containerd.grpc.v1.cri".registry]\n  config_path = "{published.certs}"\n'))
    try:
        server.start()
        for name in ci.IMAGES:
            ref = server.image.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=name)),
                                         timeout=120).image_ref
            assert ref == ci.amd64(published.images[name]).config_digest, name
        listed = server.image.ListImages(pb.ListImagesRequest(), timeout=30).images
        tags = {tag: i.id for i in listed for tag in i.repo_tags}
        assert set(tags) == set(ci.IMAGES)
        pause = [i for i in listed if i.id == tags[ci.PAUSE]][0]
        assert sorted(pause.repo_tags) == sorted([ci.PAUSE, ci.PAUSE_GCR])
    finally:
        server.stop()
