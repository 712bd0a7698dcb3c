"""The images critest (cri-tools v1.36) pulls, built offline on this Debian 12 machine.

``build_all(work)`` writes every image of critest's list (``IMAGES``) into one OCI
layout under ``<work>/critest-images/`` with ``testbed.imagebuild``; ``push_all``
pushes them to a local ``testbed.registry.Registry`` under their upstream paths
(``registry.k8s.io/pause:3.9`` -> ``<registry>/pause:3.9``) and ``mirror`` writes
containerd's ``hosts.toml`` for registry.k8s.io, k8s.gcr.io and gcr.io so that a
runtime configured with that ``config_path`` pulls the upstream names from it.

What each image holds (all binaries are this machine's, amd64, also in the arm64 and
arm/v7 entries of the indexes: those exist only so a pull has an index to choose from):

* busybox: ``imagebuild.busybox_files`` (the official image's shape, sh as Cmd) with
  Debian's dynamic busybox and its libraries in place of busybox-static, whose shell
  runs applets without looking at /bin (critest's masked-path spec needs that).
* nginx, hostnet-nginx-amd64: busybox plus Debian's nginx (1.22, from the ``nginx``
  .deb in apt's cache, else ``apt-get download``, extracted with ``dpkg-deb -x``),
  the shared libraries ``ldd`` names and the dynamic loader; ``daemon off;`` so the
  master (cmdline "nginx: master process ...") is PID 1, pid file
  /var/run/nginx.pid, "Welcome to nginx!" on :80 (hostnet: :12003), error log to
  stderr, access log to stdout.
* httpd: a STAND-IN, busybox ``httpd`` on :80 behind a script that first prints a line
  naming httpd (critest reads the log for "httpd"); "It works!" as Apache's page.
* nonewprivs: ``/usr/local/bin/nnp``, setuid root, compiled here (``gcc -static``)
  from ``NNP_C``: prints ``Effective uid: N``.
* pause (both names, one index): Debian's static ``catatonit`` as /pause, run as
  ``/pause -P`` (pause mode), FROM scratch, user 65535:65535 as upstream's.
* cri-tools test images: busybox with a user (USER lines as upstream's Dockerfiles)
  or one marker layer (``/test-image``) so test-image-1/2/3 are three images.

``NOT_BUILT`` lists what cannot be made here: an image pinned by digest upstream.
Layouts are cached per work dir in this process and on disk (``built.json``, keyed
by this module's and imagebuild's source), so a second ``build_all`` reuses them.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterable, Mapping

from . import imagebuild
from .imagebuild import OCI_INDEX, PLATFORMS, FileSpec, ImageLayout

__all__ = ["UPSTREAMS", "IMAGES", "NOT_BUILT", "BUSYBOX", "NGINX", "HTTPD", "NONEWPRIVS",
           "HOSTNET_NGINX", "PREDEFINED_GROUP", "PAUSE", "PAUSE_GCR", "NNP_C",
           "build_all", "push_all", "mirror", "local_ref", "amd64", "nginx_binaries", "nginx_files",
           "busybox_binaries",
           "nnp_binary"]

UPSTREAMS = ("registry.k8s.io", "k8s.gcr.io", "gcr.io")
E2E = "registry.k8s.io/e2e-test-images"
CRI = "gcr.io/k8s-staging-cri-tools"
BUSYBOX = f"{E2E}/busybox:1.29-2"
NGINX = f"{E2E}/nginx:1.14-2"
HTTPD = f"{E2E}/httpd:2.4.39-4"
NONEWPRIVS = f"{E2E}/nonewprivs:1.3"
HOSTNET_NGINX = f"{CRI}/hostnet-nginx-amd64:latest"
PREDEFINED_GROUP = f"{CRI}/test-image-predefined-group:latest"
PAUSE = "registry.k8s.io/pause:3.9"
PAUSE_GCR = "k8s.gcr.io/pause:3.9"
USERS = {"uid": "1002", "username": "www-data", "uid-group": "1003:1004",
         "username-group": "www-data:1004"}
MARKED = ("latest", "1", "2", "3")                  # test-image-<m>:latest, one image each
TAGGED = {"test-image-tag": ("test", "all"), "test-image-tags": ("1", "2", "3")}   # one image, n tags
IMAGES = (BUSYBOX, NGINX, HTTPD, NONEWPRIVS, HOSTNET_NGINX, PREDEFINED_GROUP,
          *(f"{CRI}/test-image-user-{k}:latest" for k in USERS),
          *(f"{CRI}/test-image-{m}:latest" for m in MARKED),
          *(f"{CRI}/{repo}:{t}" for repo, tags in TAGGED.items() for t in tags),
          PAUSE, PAUSE_GCR)
NOT_BUILT = {
    f"{CRI}/test-image-digest@sha256:9700f9a2f5bf2c45f2f605a0bd3bce7cf37420ec9d3ed50ac2758413308766bf":
        "pulled by digest: no image of ours can have that manifest digest",
}

NNP_C = r"""#include <stdio.h>
#include <unistd.h>
int main(void) {
    printf("Effective uid: %d\n", geteuid());
    return 0;
}
"""
NGINX_CONF = """# testbed.critestimages: the e2e nginx image's behaviour with Debian's nginx
user nginx;
worker_processes 1;
daemon off;
pid /var/run/nginx.pid;
error_log stderr notice;
events {{ worker_connections 1024; }}
http {{
    types {{ text/html html htm; text/plain txt; text/css css; application/javascript js; }}
    default_type application/octet-stream;
    access_log /proc/self/fd/1;     # stdout; no /dev/stdout symlink needed
    sendfile on;
    server {{
        listen {port};
        server_name localhost;
        root /usr/share/nginx/html;
        index index.html;
    }}
}}
"""
WELCOME = b"""<!DOCTYPE html>
<html>
<head><title>Welcome to nginx!</title></head>
<body>
<h1>Welcome to nginx!</h1>
<p>If you see this page, the nginx web server is successfully installed and working.</p>
</body>
</html>
"""
HTTPD_DOCS = "/usr/local/apache2/htdocs"
HTTPD_FOREGROUND = f"""#!/bin/sh
# Stand-in for the e2e httpd image's httpd-foreground: busybox httpd on :80, not Apache.
# critest's multi-container spec reads this container's log for "httpd".
echo "httpd: serving {HTTPD_DOCS} on :80 (busybox httpd, a stand-in for Apache httpd 2.4.39)"
trap 'kill "$pid" 2>&-; wait "$pid"; exit 0' TERM INT QUIT WINCH
httpd -f -v -p 80 -h {HTTPD_DOCS} &
pid=$!
wait "$pid"
"""
NGINX_PASSWD = imagebuild.PASSWD + "nginx:x:101:101:nginx:/nonexistent:/bin/false\n"
NGINX_GROUP = imagebuild.GROUP + "nginx:x:101:\n"
PREDEFINED_PASSWD = imagebuild.PASSWD + \
    "user-defined-in-image:x:1000:1000:Linux User,,,:/home/user-defined-in-image:/bin/sh\n"
PREDEFINED_GROUP_FILE = imagebuild.GROUP + \
    "user-defined-in-image:x:1000:\ngroup-defined-in-image:x:50000:user-defined-in-image\n"
APT_ARCHIVES = Path("/var/cache/apt/archives")
CATATONIT = "/usr/bin/catatonit"                    # Debian's catatonit: static

_BUILT: dict[Path, dict[str, ImageLayout]] = {}
_LOCK = threading.Lock()


def local_ref(name: str) -> tuple[str, str]:
    """The repository and tag an upstream *name* has in the local registry: its path
    without the host (``gcr.io/a/b:1`` -> ``("a/b", "1")``), as a hosts.toml mirror
    asks for it."""
    host, _, rest = name.partition("/")
    if host not in UPSTREAMS:
        raise ValueError(f"{name}: not under {', '.join(UPSTREAMS)}")
    repo, _, tag = rest.rpartition(":")
    return (repo, tag) if repo else (rest, "latest")


def amd64(layout: ImageLayout) -> ImageLayout:
    """The linux/amd64 image of *layout* (itself when a manifest): its
    ``config_digest`` is the image id a pull on this machine reports."""
    if layout.media_type != OCI_INDEX:
        return layout
    return next(m for m in layout.manifests if m.platform.get("architecture") == "amd64")


# -- the pieces from Debian -------------------------------------------------------------

def _deb(package: str, scratch: Path) -> Path:
    """Debian's .deb of *package* for this machine: apt's cache first, else
    ``apt-get download`` (the Debian archive is reachable; nothing is installed)."""
    arch = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True,
                          check=True).stdout.strip()
    cached = sorted(APT_ARCHIVES.glob(f"{package}_*_{arch}.deb"), key=functools.cmp_to_key(_by_version))
    if cached:
        return cached[-1]
    scratch.mkdir(parents=True, exist_ok=True)
    found = sorted(scratch.glob(f"{package}_*_{arch}.deb"))
    if not found:
        subprocess.run(["apt-get", "download", package], cwd=scratch, check=True,
                       capture_output=True, timeout=300)
        found = sorted(scratch.glob(f"{package}_*_{arch}.deb"))
    return found[-1]


def _extracted(package: str, scratch: Path) -> Path:
    root = scratch / f"{package}-deb"
    shutil.rmtree(root, ignore_errors=True)
    subprocess.run(["dpkg-deb", "-x", str(_deb(package, scratch / "deb")), str(root)], check=True,
                   timeout=120)
    return root


def busybox_binaries(scratch: Path | str) -> dict[str, FileSpec]:
    """Debian's *dynamic* busybox (package ``busybox``) with its libraries: unlike
    busybox-static it is built without "prefer applets", so its sh runs ``ls`` from
    /bin/ls as the official image's does (critest masks /bin/ls and expects
    "/bin/sh: ls: Permission denied")."""
    return _with_libraries(_extracted("busybox", Path(scratch)) / "bin/busybox", "bin/busybox")


def _by_version(a: Path, b: Path) -> int:
    """Two .debs ordered by their Debian versions (file names: name_version_arch.deb)."""
    va, vb = (p.name.split("_")[1].replace("%3a", ":") for p in (a, b))
    older = subprocess.run(["dpkg", "--compare-versions", va, "lt", vb]).returncode == 0
    return -1 if older else (0 if va == vb else 1)


def _with_libraries(binary: Path, at: str) -> dict[str, FileSpec]:
    """*binary* at *at* (0755) with the shared libraries and loader ``ldd`` resolves
    for it, each at the path the host's loader found it (real bytes, not symlinks)."""
    out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=True).stdout
    files: dict[str, FileSpec] = {at: (binary.read_bytes(), 0o755)}
    for line in out.splitlines():
        m = re.match(r"\s*(?:\S+ => )?(/\S+) \(0x", line)
        if m:
            path = m.group(1)
            files[path.lstrip("/")] = (Path(os.path.realpath(path)).read_bytes(), 0o755)
    return files


def nginx_binaries(scratch: Path | str) -> dict[str, FileSpec]:
    """Debian's nginx (``/usr/sbin/nginx``) with its libraries and loader, the
    package extracted under *scratch*."""
    return _with_libraries(_extracted("nginx", Path(scratch)) / "usr/sbin/nginx", "usr/sbin/nginx")


def nginx_files(binaries: Mapping[str, FileSpec], port: int = 80) -> dict[str, FileSpec]:
    """The nginx layer: *binaries* (``nginx_binaries``), a config serving the welcome
    page on *port*, and the directories nginx writes."""
    files = dict(binaries)
    files.update({p: (b"", stat.S_IFDIR | 0o755) for p in (
        "etc/nginx/conf.d", "var/log/nginx", "var/lib/nginx", "var/cache/nginx", "run",
        "usr/share/nginx/html")})
    files["var/run"] = (b"../run", stat.S_IFLNK | 0o777)
    files["etc/nginx/nginx.conf"] = NGINX_CONF.format(port=port).encode()
    files["etc/nsswitch.conf"] = b"passwd: files\ngroup: files\nhosts: files dns\n"
    files["usr/share/nginx/html/index.html"] = WELCOME
    return files


def nnp_binary(scratch: Path | str) -> bytes:
    """``NNP_C`` compiled with this machine's gcc, static."""
    with tempfile.TemporaryDirectory(dir=scratch) as tmp:
        src, exe = Path(tmp) / "nnp.c", Path(tmp) / "nnp"
        src.write_text(NNP_C)
        subprocess.run(["gcc", "-static", "-O2", "-o", str(exe), str(src)], check=True,
                       capture_output=True, timeout=120)
        return exe.read_bytes()


# -- building ---------------------------------------------------------------------------

def _recipe() -> str:
    """What the layouts depend on: this module and the image builder."""
    h = hashlib.sha256()
    for path in (Path(__file__), Path(imagebuild.__file__)):
        h.update(path.read_bytes())
    return h.hexdigest()


def _build(root: Path) -> dict[str, tuple[ImageLayout, str]]:
    layout, scratch = root / "layout", root / "scratch"
    scratch.mkdir(parents=True, exist_ok=True)
    built: dict[str, tuple[ImageLayout, str]] = {}

    base = busybox_binaries(scratch)

    def multi(names: Iterable[str], key: str, **kw: Any) -> None:
        image = imagebuild.multi_platform(layout, tag=key, files=base, **kw)
        built.update({n: (image, key) for n in names})

    nginx = dict(passwd=NGINX_PASSWD, group=NGINX_GROUP, cmd=["/usr/sbin/nginx"],
                 extra_config={"StopSignal": "SIGQUIT"})
    multi([BUSYBOX], "busybox")
    binaries = nginx_binaries(scratch)
    multi([NGINX], "nginx", layers=[nginx_files(binaries, 80)], exposed_ports=["80/tcp"], **nginx)
    hostnet = imagebuild.busybox_image(layout, tag="hostnet-nginx", files=base,
                                       layers=[nginx_files(binaries, 12003)],
                                       exposed_ports=["12003/tcp"], **nginx)
    built[HOSTNET_NGINX] = (hostnet, "hostnet-nginx")
    multi([HTTPD], "httpd", cmd=["httpd-foreground"], exposed_ports=["80/tcp"], layers=[{
        "usr/local/bin/httpd-foreground": (HTTPD_FOREGROUND.encode(), 0o755),
        f"{HTTPD_DOCS}/index.html": b"<html><body><h1>It works!</h1></body></html>\n"}])
    multi([NONEWPRIVS], "nonewprivs", cmd=["nnp"],
          layers=[{"usr/local/bin/nnp": (nnp_binary(scratch), 0o4755, 0, 0)}])
    multi([PREDEFINED_GROUP], "predefined-group", user="1000",
          passwd=PREDEFINED_PASSWD, group=PREDEFINED_GROUP_FILE)
    for kind, user in USERS.items():
        multi([f"{CRI}/test-image-user-{kind}:latest"], f"user-{kind}", user=user)
    for marker in MARKED:
        multi([f"{CRI}/test-image-{marker}:latest"], f"test-image-{marker}",
              layers=[{"test-image": f"test-image-{marker}\n".encode()}])
    for repo, tags in TAGGED.items():
        multi([f"{CRI}/{repo}:{t}" for t in tags], repo, layers=[{"test-image": f"{repo}\n".encode()}])
    pause = Path(CATATONIT).read_bytes()
    children = [imagebuild.scratch_image(layout, {"pause": (pause, 0o755)}, tag=None, arch=arch,
                                         variant=variant, user="65535:65535",
                                         entrypoint=["/pause", "-P"]) for arch, variant in PLATFORMS]
    index = imagebuild.image_index(layout, children, tag="pause")
    built.update({PAUSE: (index, "pause"), PAUSE_GCR: (index, "pause")})
    shutil.rmtree(scratch, ignore_errors=True)
    return built


def build_all(work_dir: Path | str) -> dict[str, ImageLayout]:
    """Every image of ``IMAGES``, by upstream name, in the OCI layout
    ``<work_dir>/critest-images/layout`` (names of one image share one layout entry).
    Built once per work dir: later calls, in this process or another, reuse it."""
    root = Path(work_dir).resolve() / "critest-images"
    with _LOCK:
        if root not in _BUILT:
            stamp, recipe = root / "built.json", _recipe()
            try:
                saved = json.loads(stamp.read_text())
            except (OSError, ValueError):
                saved = {}
            if saved.get("recipe") == recipe and set(saved.get("images", ())) == set(IMAGES):
                _BUILT[root] = {name: imagebuild.open_layout(root / "layout", key)
                                for name, key in saved["images"].items()}
            else:
                shutil.rmtree(root, ignore_errors=True)
                built = _build(root)
                tmp = stamp.with_suffix(".tmp")
                tmp.write_text(json.dumps({"recipe": recipe, "images": {
                    n: key for n, (_, key) in built.items()}}, indent=1))
                os.replace(tmp, stamp)
                _BUILT[root] = {n: image for n, (image, _) in built.items()}
        return dict(_BUILT[root])


# -- publishing -------------------------------------------------------------------------

def push_all(layouts: Mapping[str, ImageLayout], registry: Any) -> dict[str, str]:
    """Push each of *layouts* (``build_all``'s answer) to *registry* (a started
    ``testbed.registry.Registry``) at ``local_ref(name)``, indexes whole; return
    name -> the digest the registry holds. A repository:tag two names share (the
    pause image) is pushed once."""
    pushed: dict[tuple[str, str], str] = {}
    out: dict[str, str] = {}
    for name, layout in layouts.items():
        ref = local_ref(name)
        if ref not in pushed:
            pushed[ref] = imagebuild.push(layout, registry, *ref)
        out[name] = pushed[ref]
    return out


def mirror(registry: Any, certs_d: Path | str, hosts: Iterable[str] = UPSTREAMS) -> list[Path]:
    """Write ``<certs_d>/<host>/hosts.toml`` for each of *hosts*, sending pulls and
    resolves to *registry* over plain HTTP (containerd's hosts.toml, as
    ``config_path`` reads it); return the files."""
    written = []
    for host in hosts:
        d = Path(certs_d) / host
        d.mkdir(parents=True, exist_ok=True)
        (d / "hosts.toml").write_text(f'server = "https://{host}"\n'
                                      f'[host."http://{registry.host}"]\n'
                                      '  capabilities = ["pull", "resolve"]\n')
        written.append(d / "hosts.toml")
    return written
