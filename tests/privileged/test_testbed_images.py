"""The rig's image builder and local registries (testbed.imagebuild, testbed.registry).

Every registry, token service and client runs in a throwaway namespace made here; the
checks are plain HTTP from inside it, as an image puller there would see the registry.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import stat
import subprocess
import tarfile
from pathlib import Path
from typing import Callable, Iterator

import pytest

from testbed import imagebuild as ib
from testbed.netns import Namespace
from testbed.registry import Registry, Response

pytestmark = pytest.mark.privileged

TOOLS = ("docker-registry", "skopeo", "umoci", "busybox", "openssl", "unshare", "chroot")
ACCEPT = ", ".join([ib.OCI_MANIFEST, ib.OCI_INDEX, ib.DOCKER_MANIFEST, ib.DOCKER_LIST])
CONTAINERS = Path("/var/lib/containers")


def tree(path: Path) -> set[str] | None:
    return {str(p) for p in path.rglob("*")} if path.exists() else None


def processes_in(ns_path: str) -> list[int]:
    """Every process whose network namespace is *ns_path*'s."""
    target = os.stat(ns_path)
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            st = os.stat(f"/proc/{pid}/ns/net")
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino):
            found.append(int(pid))
    return found


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module", autouse=True)
def tools() -> None:
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        message = f"needs {', '.join(missing)} (hack/install-system-deps)"
        if os.environ.get("CRI_SHIM_REQUIRE_ALL") == "1":
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def containers_before() -> set[str] | None:
    return tree(CONTAINERS)


@pytest.fixture(scope="module")
def ns(containers_before: set[str] | None) -> Iterator[Namespace]:
    namespace = Namespace("tbimg")
    try:
        yield namespace
        assert processes_in(namespace.path) == []
    finally:
        namespace.delete()


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("images")


@pytest.fixture(scope="module")
def busybox(work: Path) -> ib.ImageLayout:
    return ib.busybox_image(work / "oci", user="65534", labels={"testbed": "yes"})


@pytest.fixture(scope="module")
def multi(work: Path) -> ib.ImageLayout:
    return ib.multi_platform(work / "oci", tag="multi")


@pytest.fixture
def registry(ns: Namespace, work: Path) -> Iterator[Callable[..., Registry]]:
    """Start registries in the module's namespace; all are stopped after the test."""
    started: list[Registry] = []

    def start(**kwargs: object) -> Registry:
        reg = Registry(ns, work, **kwargs)  # type: ignore[arg-type]
        started.append(reg)
        return reg.start()

    yield start
    pids = [pid for reg in started for pid in reg.pids]
    for reg in started:
        reg.stop()
    assert not [pid for pid in pids if os.path.exists(f"/proc/{pid}")]


def manifest(reg: Registry, ref: str, **kwargs: object) -> Response:
    return reg.request("GET", f"/v2/busybox/manifests/{ref}", headers={"Accept": ACCEPT}, **kwargs)


def test_busybox_layout_reads_back_with_umoci(ns: Namespace, work: Path) -> None:
    layout = work / "own"
    spec = dict(
        tag="t", user="www-data", entrypoint=["/bin/sh", "-c"], cmd=["echo hi"], workdir="/www",
        exposed_ports=["8080/tcp"], extra_config={"StopSignal": "SIGQUIT"},
        files={"/www/index.html": b"hello\n", "/bin/su-test": (b"#!/bin/sh\nid\n", 0o4755),
               "/etc/motd": (b"x", 0o600, 33, 33), "/www/link": (b"index.html", stat.S_IFLNK | 0o777)},
        layers=[{"/etc/gone": b"soon gone"}, {"/etc/gone": None}], extra_layers=1, layer_size=4096)
    img = ib.busybox_image(layout, **spec)  # type: ignore[arg-type]
    again = ib.busybox_image(work / "own2", **spec)  # type: ignore[arg-type]
    assert again.digest == img.digest                      # reproducible, digest for digest
    assert ib.open_layout(layout, "t") == img
    config = img.config()
    assert (config["architecture"], config["os"]) == ("amd64", "linux")
    assert config["config"] == {"Env": [ib.PATH_ENV], "User": "www-data", "Entrypoint": ["/bin/sh", "-c"],
                                "Cmd": ["echo hi"], "WorkingDir": "/www",
                                "ExposedPorts": {"8080/tcp": {}}, "StopSignal": "SIGQUIT"}
    assert config["rootfs"]["diff_ids"] == [layer.diff_id for layer in img.layers]
    assert len(img.layers) == 4
    assert [d["digest"] for d in img.manifest()["layers"]] == [layer.digest for layer in img.layers]

    bundle = work / "bundle"
    ns.run("umoci", "unpack", "--image", f"{layout}:t", str(bundle))
    root = bundle / "rootfs"
    assert os.stat(root / "bin/sh").st_ino == os.stat(root / "bin/busybox").st_ino   # a hard link
    for applet in ("httpd", "sleep", "nc", "wget", "pgrep", "ipcs"):
        assert (root / "bin" / applet).exists(), applet
    passwd = (root / "etc/passwd").read_text()
    assert "root:x:0:0:" in passwd and "www-data:x:33:33:" in passwd and "nobody:x:65534:65534:" in passwd
    assert "nogroup:x:65534:" in (root / "etc/group").read_text()
    assert (root / "bin/su-test").stat().st_mode & 0o7777 == 0o4755
    motd = (root / "etc/motd").stat()
    assert (motd.st_uid, motd.st_gid, motd.st_mode & 0o777) == (33, 33, 0o600)
    assert os.readlink(root / "www/link") == "index.html"
    assert (root / "tmp").stat().st_mode & 0o7777 == 0o1777
    assert not (root / "etc/gone").exists()                # the whiteout applied
    assert (root / "layers/0").stat().st_size == 4096

    # The stand-ins for the applets busybox-static lacks, in a pid and IPC namespace of
    # their own (and no network), chrooted into the unpacked rootfs.
    script = (f"mount --bind /dev {root}/dev && mount -t proc proc {root}/proc && exec chroot {root} "
              "/bin/sh -c 'sleep 30 & sleep 31 & pgrep -x sleep | wc -l; pgrep -f \"^sleep 31\"; "
              "pgrep -x nothing; echo rc=$?; ipcs; kill %1 %2'")
    out = subprocess.run(["unshare", "--mount", "--propagation", "private", "--pid", "--fork",
                          "--ipc", "--net", "sh", "-c", script],
                         capture_output=True, text=True, timeout=60, check=True).stdout.split("\n")
    assert out[0].strip() == "2" and out[1].strip().isdigit() and out[2] == "rc=1", out
    assert "------ Shared Memory Segments --------" in out and "------ Semaphore Arrays --------" in out


def test_push_oci(registry: Callable[..., Registry], busybox: ib.ImageLayout) -> None:
    reg = registry(port=5100)
    assert ib.push(busybox, reg, "busybox", "latest") == busybox.digest
    r = manifest(reg, "latest")
    assert r.status == 200
    assert r.headers["content-type"] == ib.OCI_MANIFEST
    assert r.headers["docker-content-digest"] == busybox.digest == sha256(r.body)
    assert r.body == busybox.blob()
    doc = r.json()
    assert doc["config"]["mediaType"] == ib.OCI_CONFIG
    assert [layer["mediaType"] for layer in doc["layers"]] == [ib.OCI_LAYER_GZIP]
    for desc in [doc["config"], *doc["layers"]]:
        blob = reg.request("GET", f"/v2/busybox/blobs/{desc['digest']}")
        assert blob.status == 200 and sha256(blob.body) == desc["digest"] and len(blob.body) == desc["size"]
    head = reg.request("HEAD", "/v2/busybox/manifests/latest", headers={"Accept": ACCEPT})
    assert (head.status, head.headers["docker-content-digest"]) == (200, busybox.digest)
    assert manifest(reg, busybox.digest).status == 200
    assert manifest(reg, "latest?ns=docker.io").status == 200            # the query is ignored
    # What a puller must know: an unknown tag or repository is 404 MANIFEST_UNKNOWN, and
    # an OCI manifest is only served to an Accept that names its type.
    for ref in ("busybox/manifests/nope", "nope/manifests/latest"):
        r = reg.request("GET", f"/v2/{ref}", headers={"Accept": ACCEPT})
        assert r.status == 404 and r.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN"
    r = reg.request("GET", "/v2/busybox/manifests/latest", headers={"Accept": ib.DOCKER_MANIFEST})
    assert r.status == 404 and "accept header" in r.json()["errors"][0]["message"]


def test_push_docker_schema2(registry: Callable[..., Registry], busybox: ib.ImageLayout) -> None:
    reg = registry(port=5110)
    digest = ib.push(busybox, reg, "busybox", "v2s2", fmt="v2s2")
    r = manifest(reg, "v2s2")
    assert r.status == 200 and r.headers["content-type"] == ib.DOCKER_MANIFEST
    assert digest == sha256(r.body) != busybox.digest
    doc = r.json()
    assert doc["mediaType"] == ib.DOCKER_MANIFEST and doc["config"]["mediaType"] == ib.DOCKER_CONFIG
    assert [(layer["mediaType"], layer["digest"]) for layer in doc["layers"]] == \
        [(ib.DOCKER_LAYER_GZIP, layer.digest) for layer in busybox.layers]    # the same blobs
    config = reg.request("GET", f"/v2/busybox/blobs/{doc['config']['digest']}").json()
    assert config["rootfs"]["diff_ids"] == [layer.diff_id for layer in busybox.layers]
    assert config["config"]["User"] == "65534"


def test_push_zstd(registry: Callable[..., Registry], busybox: ib.ImageLayout) -> None:
    reg = registry(port=5120)
    ib.push(busybox, reg, "busybox", "gzip")        # the gzip blobs are there already
    digest = ib.push(busybox, reg, "busybox", "zstd", compress="zstd")
    r = manifest(reg, "zstd")
    assert r.status == 200 and r.headers["content-type"] == ib.OCI_MANIFEST and digest == sha256(r.body)
    layers = r.json()["layers"]
    assert [layer["mediaType"] for layer in layers] == [ib.OCI_LAYER_ZSTD]
    blob = reg.request("GET", f"/v2/busybox/blobs/{layers[0]['digest']}").body
    assert blob[:4] == bytes.fromhex("28b52ffd") and sha256(blob) == layers[0]["digest"]
    config = reg.request("GET", f"/v2/busybox/blobs/{r.json()['config']['digest']}").json()
    assert config["rootfs"]["diff_ids"] == [layer.diff_id for layer in busybox.layers]
    with pytest.raises(ValueError):
        ib.push(busybox, reg, "busybox", "x", fmt="v2s2", compress="zstd")


def test_push_multi_platform(registry: Callable[..., Registry], multi: ib.ImageLayout) -> None:
    reg = registry(port=5130)
    assert ib.push(multi, reg, "busybox", "multi") == multi.digest
    r = manifest(reg, "multi")
    assert r.status == 200 and r.headers["content-type"] == ib.OCI_INDEX
    entries = r.json()["manifests"]
    assert [(e["platform"]["architecture"], e["platform"].get("variant", "")) for e in entries] == \
        [("amd64", ""), ("arm64", "v8"), ("arm", "v7")]
    assert [e["digest"] for e in entries] == [m.digest for m in multi.manifests]
    assert len({m.layers[0].digest for m in multi.manifests}) == 3     # /etc/platform differs
    for e, image in zip(entries, multi.manifests):
        child = manifest(reg, e["digest"])
        assert child.status == 200 and child.headers["content-type"] == ib.OCI_MANIFEST
        config = reg.request("GET", f"/v2/busybox/blobs/{child.json()['config']['digest']}").json()
        assert config["architecture"] == e["platform"]["architecture"] == image.platform["architecture"]
    ib.push(multi, reg, "busybox", "list", fmt="v2s2")
    r = manifest(reg, "list")
    assert r.headers["content-type"] == ib.DOCKER_LIST
    assert {e["mediaType"] for e in r.json()["manifests"]} == {ib.DOCKER_MANIFEST}
    # A registry without OCI in Accept: 404; a Docker list asked for as a manifest:
    # distribution picks linux/amd64 and answers with that image's manifest.
    assert reg.request("GET", "/v2/busybox/manifests/multi").status == 404
    r = reg.request("GET", "/v2/busybox/manifests/list", headers={"Accept": ib.DOCKER_MANIFEST})
    assert r.headers["content-type"] == ib.DOCKER_MANIFEST


def test_htpasswd_auth(registry: Callable[..., Registry], busybox: ib.ImageLayout) -> None:
    reg = registry(port=5140, auth="htpasswd", users={"alice": "secret"})
    assert reg.creds == "alice:secret"
    assert ib.push(busybox, reg, "busybox", "latest") == busybox.digest
    r = manifest(reg, "latest")
    assert r.status == 401 and r.headers["www-authenticate"].startswith("Basic realm=")
    assert r.json()["errors"][0]["code"] == "UNAUTHORIZED"
    assert manifest(reg, "latest", auth=("alice", "wrong")).status == 401
    assert reg.request("GET", "/v2/").status == 401
    r = manifest(reg, "latest", auth=("alice", "secret"))
    assert r.status == 200 and r.headers["docker-content-digest"] == busybox.digest
    with pytest.raises(RuntimeError, match="401|unauthorized|authentication"):
        ib.push(busybox, reg, "busybox", "denied", creds="alice:wrong")


def test_token_auth(registry: Callable[..., Registry], busybox: ib.ImageLayout) -> None:
    reg = registry(port=5150, auth="token", users={"alice": "secret"})
    get_only = registry(port=5151, auth="token", token_post=False)       # side by side
    assert ib.push(busybox, reg, "busybox", "latest") == busybox.digest
    r = manifest(reg, "latest")
    assert r.status == 401
    challenge = r.headers["www-authenticate"]
    assert challenge == (f'Bearer realm="{reg.token_realm}",service="{reg.service}",'
                         'scope="repository:busybox:pull"')
    query = f"?service={reg.service}&scope=repository:busybox:pull"
    assert reg.request("GET", reg.token_realm + query).status == 401
    assert reg.request("GET", reg.token_realm + query, auth=("alice", "nope")).status == 401
    answer = reg.request("GET", reg.token_realm + query, auth=("alice", "secret"))
    assert answer.status == 200
    token = answer.json()["token"]
    assert answer.json()["access_token"] == token and answer.json()["expires_in"] == 300
    header, claims = (json.loads(base64.urlsafe_b64decode(part + "==")) for part in token.split(".")[:2])
    assert header["alg"] == "RS256" and len(header["x5c"]) == 1
    assert claims["aud"] == reg.service and claims["sub"] == "alice"
    assert claims["access"] == [{"type": "repository", "name": "busybox", "actions": ["pull"]}]
    ok = reg.request("GET", "/v2/busybox/manifests/latest",
                     headers={"Accept": ACCEPT, "Authorization": f"Bearer {token}"})
    assert ok.status == 200 and ok.headers["docker-content-digest"] == busybox.digest
    forged = token[:-6] + ("AAAAAA" if not token.endswith("AAAAAA") else "BBBBBB")
    bad = reg.request("GET", "/v2/busybox/manifests/latest",
                      headers={"Accept": ACCEPT, "Authorization": f"Bearer {forged}"})
    assert bad.status == 401
    # The OAuth2 form containerd posts first, then a refresh.
    form = (f"grant_type=password&username=alice&password=secret&service={reg.service}"
            "&scope=repository:busybox:pull&client_id=containerd-client&access_type=offline")
    post = reg.request("POST", reg.token_realm, data=form.encode(),
                       headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert post.status == 200 and {"access_token", "refresh_token"} <= post.json().keys()
    refresh = (f"grant_type=refresh_token&refresh_token={post.json()['refresh_token']}"
               f"&service={reg.service}&scope=repository:busybox:pull")
    again = reg.request("POST", reg.token_realm, data=refresh.encode())
    assert again.status == 200
    ok = reg.request("GET", "/v2/busybox/manifests/latest",
                     headers={"Accept": ACCEPT, "Authorization": f"Bearer {again.json()['access_token']}"})
    assert ok.status == 200
    wrong = form.replace("password=secret", "password=nope").encode()
    assert reg.request("POST", reg.token_realm, data=wrong).status == 401
    assert get_only.request("POST", get_only.token_realm, data=form.encode()).status == 404
    # Each registry trusts only its own token service.
    other = get_only.request("GET", "/v2/busybox/manifests/latest",
                             headers={"Accept": ACCEPT, "Authorization": f"Bearer {token}"})
    assert other.status == 401


def test_redirected_blobs(registry: Callable[..., Registry], busybox: ib.ImageLayout) -> None:
    reg = registry(port=5160, redirect=True)
    ib.push(busybox, reg, "busybox", "latest")
    assert manifest(reg, "latest").status == 200                 # manifests come directly
    digest = busybox.layers[0].digest
    r = reg.request("GET", f"/v2/busybox/blobs/{digest}")
    assert r.status == 307 and r.headers["location"].startswith(reg.blob_url)
    moved = reg.request("GET", r.headers["location"])
    assert moved.status == 200 and sha256(moved.body) == digest
    followed = reg.request("GET", f"/v2/busybox/blobs/{digest}", follow=True)
    assert sha256(followed.body) == digest


def test_archives(work: Path, busybox: ib.ImageLayout, multi: ib.ImageLayout) -> None:
    saved = ib.archive(busybox, work / "save.tar")
    with tarfile.open(saved) as tar:
        entries = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
    assert entries[0]["RepoTags"] == ["docker.io/library/busybox:latest"]   # skopeo normalizes and len(entries[0]["Layers"]) == 1
    oci = ib.archive(multi, work / "oci.tar", "oci")
    with tarfile.open(oci) as tar:
        index = json.load(tar.extractfile("index.json"))  # type: ignore[arg-type]
        names = set(tar.getnames())
    assert index["manifests"][0]["digest"] == multi.digest
    assert {f"blobs/sha256/{m.digest[7:]}" for m in multi.manifests} <= names
    with pytest.raises(ValueError):
        ib.archive(busybox, work / "x.tar", "zip")


def test_big_image(registry: Callable[..., Registry], work: Path) -> None:
    big = ib.big_image(work / "big", layers=2, layer_mib=1)
    assert len(big.layers) == 3
    assert all(layer.size > 1 << 20 for layer in big.layers[1:])          # incompressible
    assert ib.big_image(work / "big", layers=2, layer_mib=1).digest == big.digest
    cold = ib.big_image(work / "big", tag="cold", layers=2, layer_mib=1, seed=1)
    assert cold.layers[0] == big.layers[0] and not set(cold.layers[1:]) & set(big.layers[1:])
    reg = registry(port=5170)
    assert ib.push(big, reg, "big", "latest") == big.digest


def test_nothing_left_behind(tmp_path: Path, containers_before: set[str] | None) -> None:
    """Registries of every kind side by side in one namespace, pushes to each; then
    no process, no namespace and no skopeo state remain."""
    node = Namespace("tbimg")
    regs: list[Registry] = []
    try:
        img = ib.busybox_image(tmp_path / "oci")
        for port, kwargs in ((5200, {}), (5201, {"auth": "htpasswd"}), (5202, {"auth": "token"}),
                             (5203, {"redirect": True})):
            regs.append(Registry(node, tmp_path, port=port, **kwargs).start())  # type: ignore[arg-type]
        for reg in regs:
            ib.push(img, reg, "busybox", "latest")
        pids = [pid for reg in regs for pid in reg.pids]
        assert len(pids) == 6 and sorted(processes_in(node.path)) == sorted(pids)
    finally:
        for reg in regs:
            reg.stop()
        leftover = processes_in(node.path)
        node.delete()
    assert leftover == []
    assert not [pid for pid in pids if os.path.exists(f"/proc/{pid}")]
    assert node.name not in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                           text=True, check=True).stdout
    assert tree(CONTAINERS) == containers_before
    scratch = [p.name for reg in regs for p in reg.dir.iterdir() if p.name.startswith(("push-", "skopeo-"))]
    assert scratch == []
