"""OCI image layouts built offline from Debian's busybox-static, and pushed with skopeo.

Layouts are written here directly (``tarfile`` + ``gzip``, the OCI image-layout spec:
``oci-layout``, ``index.json``, ``blobs/sha256/``), so every byte is ours to choose and
the same arguments give the same digests: images that share a layer share its digest
(a snapshotter unpacks it once). Independent tools read what we write: ``skopeo``
pushes and archives it, and the tests unpack it with ``umoci``.

The rootfs is shaped like the official ``busybox`` image: ``/bin/busybox`` with one
hard link per applet, ``/etc/passwd`` and ``/etc/group`` with root, www-data (33) and
nobody (65534), ``/tmp`` 1777. Debian's busybox-static has no ``pgrep`` and no
``ipcs`` applet: ``/bin/pgrep`` and ``/bin/ipcs`` are small ``sh`` stand-ins over
``/proc``.

skopeo runs in a fresh empty network namespace (``unshare --net``) or in the
registry's namespace, with its blob-info cache, temp files and config in a private
directory removed after the call: nothing lands in ``/var/lib/containers``.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import random
import shutil
import stat
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence, Union

from .process import env as process_env

__all__ = ["OCI_MANIFEST", "OCI_INDEX", "OCI_CONFIG", "OCI_LAYER_GZIP", "OCI_LAYER_ZSTD",
           "DOCKER_MANIFEST", "DOCKER_LIST", "DOCKER_CONFIG", "DOCKER_LAYER_GZIP",
           "BUSYBOX", "PASSWD", "GROUP", "PLATFORMS", "Layer", "ImageLayout",
           "busybox_files", "busybox_image", "euid_exit_program", "multi_platform", "big_image", "push", "recompress",
           "open_layout", "archive", "skopeo"]

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"

BUSYBOX = "/bin/busybox"                          # Debian's busybox-static
CREATED = "2024-01-01T00:00:00Z"                  # fixed: same input, same digests
MTIME = 1704067200
HARDLINK = 1 << 20                                # FileSpec mode flag: data is the link target
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PLATFORMS = (("amd64", ""), ("arm64", "v8"), ("arm", "v7"))

PASSWD = """root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/bin/false
bin:x:2:2:bin:/bin:/bin/false
sys:x:3:3:sys:/dev:/bin/false
sync:x:4:100:sync:/bin:/bin/sync
mail:x:8:8:mail:/var/spool/mail:/bin/false
www-data:x:33:33:www-data:/var/www:/bin/false
operator:x:37:37:Operator:/var:/bin/false
nobody:x:65534:65534:nobody:/home:/bin/false
"""
GROUP = "".join(f"{g}\n" for g in (
    "root:x:0:", "daemon:x:1:", "bin:x:2:", "sys:x:3:", "adm:x:4:", "tty:x:5:", "disk:x:6:",
    "mail:x:8:", "wheel:x:10:root", "www-data:x:33:", "operator:x:37:", "users:x:100:",
    "nogroup:x:65534:"))

# The applets Debian's busybox-static lacks, as sh over /proc. pgrep skips its own pid;
# what it forks (tr, grep) is gone before the next /proc entry is read.
PGREP = r"""#!/bin/sh
# pgrep stand-in (Debian's busybox-static has no pgrep): [-f] [-x] [-l] PATTERN (ERE)
full= exact= list=
while [ $# -gt 1 ]; do
  case "$1" in -f) full=1;; -x) exact=1;; -l) list=1;; -*) echo "pgrep: $1?" >&2; exit 2;; esac
  shift
done
[ $# -eq 1 ] || { echo "usage: pgrep [-f] [-x] [-l] PATTERN" >&2; exit 2; }
pat=$1; [ -n "$exact" ] && pat="^($1)\$"
found=1
for d in /proc/[0-9]*; do
  pid=${d#/proc/}
  [ "$pid" = "$$" ] && continue
  { read -r comm < "$d/comm"; } 2>&- || continue      # 2>&-: no /dev/null needed
  text=$comm
  if [ -n "$full" ]; then
    text=$(tr '\0' ' ' < "$d/cmdline" 2>&-); text=${text% }
    [ -n "$text" ] || text="[$comm]"
  fi
  if printf '%s\n' "$text" | grep -Eq -- "$pat"; then
    found=0
    if [ -n "$list" ]; then echo "$pid $comm"; else echo "$pid"; fi
  fi
done
exit $found
"""
IPCS = r"""#!/bin/sh
# ipcs stand-in (Debian's busybox-static has none): [-m|-q|-s]; key (hex), id, perms
# and the other columns of this IPC namespace's /proc/sysvipc/{shm,msg,sem}
for t in "m shm Shared Memory Segments" "q msg Message Queues" "s sem Semaphore Arrays"; do
  flag=${t%% *} rest=${t#* }; file=${rest%% *} title=${rest#* }
  case ${1:--a} in -a|-$flag) ;; *) continue;; esac
  printf '\n------ %s --------\n' "$title"
  { read -r k i p more; echo "key        id         perms      $more"
    while read -r k i p more; do printf '0x%08x %-10s %-10s %s\n' "$k" "$i" "$p" "$more"; done
  } < "/proc/sysvipc/$file"
done
"""

# A file spec: bytes (a 0644 file), (data, mode) or (data, mode, uid, gid). *mode*
# may carry a type: stat.S_IFLNK (data is the target) or stat.S_IFDIR. In ``layers``,
# None is a whiteout (the path is deleted by that layer).
FileSpec = Union[bytes, tuple, None]


@dataclass(frozen=True)
class Layer:
    """One layer blob: its (compressed) digest, its diff id and size."""
    digest: str
    diff_id: str
    size: int
    media_type: str = OCI_LAYER_GZIP


@dataclass(frozen=True)
class ImageLayout:
    """An image (manifest) or an index in the OCI layout at *path*, under *tag*."""
    path: Path
    tag: str
    digest: str
    media_type: str
    size: int
    platform: Mapping[str, str] = field(default_factory=dict)
    config_digest: str = ""
    layers: tuple[Layer, ...] = ()
    manifests: tuple["ImageLayout", ...] = ()       # an index's images, in order

    @property
    def ref(self) -> str:
        """skopeo's name for it: ``oci:PATH:TAG``."""
        return f"oci:{self.path}:{self.tag}"

    def blob(self, digest: str | None = None) -> bytes:
        """The bytes of *digest* (default: this manifest or index) in the layout."""
        algo, _, hexd = (digest or self.digest).partition(":")
        return (self.path / "blobs" / algo / hexd).read_bytes()

    def manifest(self) -> dict[str, Any]:
        """The manifest (or index) as JSON."""
        return json.loads(self.blob())

    def config(self) -> dict[str, Any]:
        """The image config as JSON."""
        return json.loads(self.blob(self.config_digest))

    def descriptor(self) -> dict[str, Any]:
        """Its OCI descriptor: mediaType, digest, size (and platform)."""
        d: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.platform:
            d["platform"] = dict(self.platform)
        return d


# -- layers -----------------------------------------------------------------------------

class _Hashing(io.RawIOBase):
    """A write-through file that hashes and counts what passes."""

    def __init__(self, out: Any) -> None:
        self.out, self.sha, self.size = out, hashlib.sha256(), 0

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        self.sha.update(b)
        self.size += len(b)
        self.out.write(b)
        return len(b)


def _entries(files: Mapping[str, FileSpec]) -> dict[str, FileSpec]:
    """*files* keyed by relative path, with every parent directory (0755) added."""
    out: dict[str, FileSpec] = {}
    for path, spec in files.items():
        rel = path.strip("/")
        parts = rel.split("/")
        for i in range(1, len(parts)):
            out.setdefault("/".join(parts[:i]), (b"", stat.S_IFDIR | 0o755))
        out[rel] = spec
    return out


def _tarinfo(path: str, spec: FileSpec) -> tuple[tarfile.TarInfo, bytes]:
    if spec is None:                                    # whiteout: .wh.<name> beside it
        head, _, name = path.rpartition("/")
        spec, path = b"", f"{head}/.wh.{name}".lstrip("/")
    data, mode, uid, gid = (spec, 0o644, 0, 0) if isinstance(spec, bytes) else (tuple(spec) + (0, 0))[:4]
    info = tarfile.TarInfo(path)
    info.mode, info.uid, info.gid, info.mtime = stat.S_IMODE(mode), uid, gid, MTIME
    if mode & HARDLINK:
        info.type, info.linkname, data = tarfile.LNKTYPE, data.decode().lstrip("/"), b""
        info.mode = stat.S_IMODE(mode)
    elif stat.S_ISLNK(mode):
        info.type, info.linkname, data = tarfile.SYMTYPE, data.decode(), b""
    elif stat.S_ISDIR(mode):
        info.type, data = tarfile.DIRTYPE, b""
    info.size = len(data)
    return info, data


def _hard_links_last(item: tuple[str, FileSpec]) -> tuple[bool, str]:
    spec = item[1]
    mode = spec[1] if isinstance(spec, tuple) and len(spec) > 1 else 0
    return bool(mode & HARDLINK), item[0]


def _write_layer(layout: Path, files: Mapping[str, FileSpec], *, level: int = 6) -> Layer:
    """A gzip'ed tar layer of *files* (sorted, root-owned unless said, fixed mtime)."""
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    tmp = blobs / f".layer-{os.getpid()}-{random.getrandbits(32):08x}"
    with open(tmp, "wb") as raw:
        outer = _Hashing(raw)
        with gzip.GzipFile(fileobj=outer, mode="wb", compresslevel=level, mtime=0, filename="") as gz:
            inner = _Hashing(gz)
            with tarfile.open(fileobj=inner, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                # Hard links after what they link to (a tar is read in order).
                for path, spec in sorted(_entries(files).items(), key=_hard_links_last):
                    info, data = _tarinfo(path, spec)
                    tar.addfile(info, io.BytesIO(data) if data else None)
    digest = outer.sha.hexdigest()
    os.replace(tmp, blobs / digest)
    return Layer(f"sha256:{digest}", f"sha256:{inner.sha.hexdigest()}", outer.size)


def _write_blob(layout: Path, data: bytes) -> tuple[str, int]:
    digest = hashlib.sha256(data).hexdigest()
    path = layout / "blobs" / "sha256" / digest
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        path.write_bytes(data)
    return f"sha256:{digest}", len(data)


def _tag(layout: Path, tag: str, desc: Mapping[str, Any]) -> None:
    """Point *tag* in the layout's ``index.json`` at *desc* (replacing the old one).
    One writer per layout at a time: this is read, change, replace."""
    index_path = layout / "index.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else {"schemaVersion": 2, "manifests": []}
    index["manifests"] = [m for m in index["manifests"] if m.get("annotations", {}).get(
        "org.opencontainers.image.ref.name") != tag]
    index["manifests"].append({**desc, "annotations": {"org.opencontainers.image.ref.name": tag}})
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    tmp = index_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(index, indent=1))
    os.replace(tmp, index_path)


def busybox_files(passwd: str = PASSWD, group: str = GROUP) -> dict[str, FileSpec]:
    """The official busybox image's rootfs, from this machine's busybox-static: one
    hard link per applet to /bin/busybox."""
    applets = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True, check=True).stdout.split()
    d = stat.S_IFDIR
    files: dict[str, FileSpec] = {p: (b"", d | 0o755) for p in (
        "bin", "dev", "etc", "home", "proc", "sys", "usr/bin", "usr/sbin", "var/spool/mail", "var/www")}
    files.update({"root": (b"", d | 0o700), "tmp": (b"", d | 0o1777)})
    files["bin/busybox"] = (Path(BUSYBOX).read_bytes(), 0o755)
    # Hard links, as in the official image (masking /bin/ls must not mask busybox).
    files.update({f"bin/{a}": (b"bin/busybox", HARDLINK | 0o755) for a in applets if a != "busybox"})
    files.update({"bin/pgrep": (PGREP.encode(), 0o755), "bin/ipcs": (IPCS.encode(), 0o755),
                  "etc/passwd": passwd.encode(), "etc/group": group.encode()})
    return files


def euid_exit_program() -> bytes:
    """A 134-byte static x86-64 ELF program that exits with its effective uid (mod
    256): a setuid copy shows whether the kernel raised the euid (no_new_privs
    stops it), where busybox applets would drop privileges themselves."""
    code = bytes.fromhex("b86b000000" "0f05" "89c7" "b83c000000" "0f05")   # geteuid; exit(euid)
    base, header = 0x400000, 64 + 56
    ehdr = (b"\x7fELF\x02\x01\x01" + bytes(9)
            + (2).to_bytes(2, "little") + (0x3E).to_bytes(2, "little") + (1).to_bytes(4, "little")
            + (base + header).to_bytes(8, "little") + (64).to_bytes(8, "little") + bytes(8)
            + bytes(4) + (64).to_bytes(2, "little") + (56).to_bytes(2, "little")
            + (1).to_bytes(2, "little") + bytes(6))
    size = header + len(code)
    phdr = ((1).to_bytes(4, "little") + (5).to_bytes(4, "little") + bytes(8)
            + base.to_bytes(8, "little") + base.to_bytes(8, "little")
            + size.to_bytes(8, "little") + size.to_bytes(8, "little") + (0x1000).to_bytes(8, "little"))
    return ehdr + phdr + code


def _payload(seed: Any, size: int) -> bytes:
    """*size* incompressible bytes, the same for the same seed."""
    return random.Random(str(seed)).randbytes(size)


# -- images -----------------------------------------------------------------------------

def busybox_image(layout_dir: Path | str, *, tag: str | None = "latest", user: str | None = None,
                  entrypoint: Sequence[str] | None = None, cmd: Sequence[str] | None = ("sh",),
                  env: Sequence[str] = (PATH_ENV,), workdir: str | None = None,
                  labels: Mapping[str, str] | None = None, files: Mapping[str, FileSpec] | None = None,
                  layers: Sequence[Mapping[str, FileSpec]] = (), extra_layers: int = 0,
                  layer_size: int = 0, passwd: str = PASSWD, group: str = GROUP,
                  arch: str = "amd64", variant: str = "", exposed_ports: Iterable[str] = (),
                  extra_config: Mapping[str, Any] | None = None, seed: Any = 0) -> ImageLayout:
    """Build a busybox image into the OCI layout *layout_dir* (made, or added to) as
    *tag* (None: blobs only); return what was written.

    Layer 0 is the busybox rootfs with *passwd*, *group* and *files* (a path -> bytes,
    ``(data, mode)`` or ``(data, mode, uid, gid)`` map, e.g. ``(b"...", 0o4755)`` for a
    setuid file, ``(b"target", stat.S_IFLNK | 0o777)`` for a symlink). Then one layer
    per map in *layers* (None deletes a path: a whiteout), then *extra_layers* layers
    each holding ``/layers/<n>`` of *layer_size* incompressible bytes (varied by
    *seed*). The config has *user*, *entrypoint*, *cmd*, *env*, *workdir*, *labels*,
    *exposed_ports* ("8080/tcp") and *extra_config* (more fields of its ``config``,
    e.g. ``{"StopSignal": "SIGQUIT"}``); the platform is linux/*arch*[/*variant*].
    """
    layout = Path(layout_dir)
    config: dict[str, Any] = {"Env": list(env)}
    for key, value in (("User", user), ("Entrypoint", entrypoint and list(entrypoint)),
                       ("Cmd", cmd and list(cmd)), ("WorkingDir", workdir),
                       ("Labels", labels and dict(labels))):
        if value:
            config[key] = value
    if exposed_ports:
        config["ExposedPorts"] = {p: {} for p in exposed_ports}
    config.update(extra_config or {})
    base = busybox_files(passwd, group)
    base.update({k.strip("/"): v for k, v in (files or {}).items()})
    written = [_write_layer(layout, f) for f in (base, *layers)]
    written += [_write_layer(layout, {f"layers/{n}": (_payload((seed, n), layer_size), 0o644)}, level=1)
                for n in range(extra_layers)]                  # random data: gzip -1 is enough
    platform = {"architecture": arch, "os": "linux", **({"variant": variant} if variant else {})}
    cfg = {"created": CREATED, **platform, "config": config,
           "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in written]},
           "history": [{"created": CREATED, "created_by": f"testbed.imagebuild layer {i}"}
                       for i in range(len(written))]}
    cfg_digest, cfg_size = _write_blob(layout, json.dumps(cfg, indent=1).encode())
    manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "config": {"mediaType": OCI_CONFIG, "digest": cfg_digest, "size": cfg_size},
                "layers": [{"mediaType": x.media_type, "digest": x.digest, "size": x.size} for x in written]}
    digest, size = _write_blob(layout, json.dumps(manifest, indent=1).encode())
    image = ImageLayout(layout, tag or "", digest, OCI_MANIFEST, size, platform, cfg_digest, tuple(written))
    if tag:
        _tag(layout, tag, image.descriptor())
    return image


def multi_platform(layout_dir: Path | str, *, tag: str = "latest",
                   platforms: Sequence[tuple[str, str]] = PLATFORMS,
                   files: Mapping[str, FileSpec] | None = None, **kwargs: Any) -> ImageLayout:
    """An image index as *tag* with one busybox image per ``(arch, variant)`` of
    *platforms* (default linux/amd64, linux/arm64/v8, linux/arm/v7). Each image holds
    ``/etc/platform`` (e.g. "linux/arm64/v8"): which one was unpacked shows, and their
    layers differ. *kwargs* go to ``busybox_image``; the binaries are this machine's
    in all of them."""
    layout = Path(layout_dir)
    children = tuple(busybox_image(layout, tag=None, arch=arch, variant=variant, files={
        **(files or {}), "/etc/platform": ("/".join(filter(None, ("linux", arch, variant))) + "\n").encode()},
        **kwargs) for arch, variant in platforms)
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [c.descriptor() for c in children]}
    digest, size = _write_blob(layout, json.dumps(index, indent=1).encode())
    _tag(layout, tag, {"mediaType": OCI_INDEX, "digest": digest, "size": size})
    return ImageLayout(layout, tag, digest, OCI_INDEX, size, manifests=children)


def big_image(layout_dir: Path | str, layers: int = 5, layer_mib: int = 10, *,
              tag: str = "latest", seed: Any = 0, **kwargs: Any) -> ImageLayout:
    """A busybox image with *layers* more layers of *layer_mib* MiB of incompressible
    bytes each, for benchmarks (another *seed*, other blobs: a cold pull)."""
    return busybox_image(layout_dir, tag=tag, extra_layers=layers, layer_size=layer_mib << 20,
                         seed=seed, **kwargs)


# -- skopeo -----------------------------------------------------------------------------

def skopeo(*args: str, ns: Any = None, scratch: Path | str | None = None,
           timeout: float = 600) -> str:
    """Run ``skopeo ARGS`` in namespace *ns* (anything with ``.path``; ``nsenter
    --net``) or, without one, in a fresh empty network namespace; return its stdout.

    Its policy (accept anything), registries config (empty), auth file, blob-info
    cache and temp files live in a private directory under *scratch* that is removed
    afterwards: the host's ``/etc/containers`` settings do not apply and nothing is
    left in ``/var/lib/containers``.
    """
    home = Path(tempfile.mkdtemp(prefix="skopeo-", dir=scratch))
    try:
        (home / "tmp").mkdir()
        (home / "policy.json").write_text('{"default": [{"type": "insecureAcceptAnything"}]}')
        (home / "registries.conf").write_text("")
        (home / "containers.conf").write_text("")
        environ = process_env(                                # no proxies: peers are local
            HOME=str(home), XDG_CONFIG_HOME=str(home / "config"), XDG_DATA_HOME=str(home / "data"),
            XDG_RUNTIME_DIR=str(home / "run"), XDG_CACHE_HOME=str(home / "cache"),
            TMPDIR=str(home / "tmp"), REGISTRY_AUTH_FILE=str(home / "auth.json"),
            CONTAINERS_REGISTRIES_CONF=str(home / "registries.conf"),
            CONTAINERS_CONF=str(home / "containers.conf"),
            # containers/image keeps root's blob-info cache in /var/lib/containers/cache
            # and a "rootless" user's under $XDG_DATA_HOME: say we are one. A fresh cache
            # per call also matters for zstd: one that remembers a layer's gzip blob
            # makes skopeo reuse it instead of recompressing.
            _CONTAINERS_ROOTLESS_UID="65534")
        wrap = ["nsenter", f"--net={ns.path}"] if ns is not None else ["unshare", "--net"]
        cmd = [*wrap, "skopeo", "--policy", str(home / "policy.json"),
               "--registries.d", str(home / "registries.d"), "--tmpdir", str(home / "tmp"), *args]
        proc = subprocess.run(cmd, env=environ, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"skopeo {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc.stdout
    finally:
        shutil.rmtree(home, ignore_errors=True)


def push(layout: ImageLayout, registry: Any, name: str, tag: str | None = None, *,
         fmt: str = "oci", compress: str = "gzip", creds: str | tuple[str, str] | None = None,
         all_platforms: bool | None = None, timeout: float = 600) -> str:
    """Push *layout* to *registry* (a ``testbed.registry.Registry``) as *name*:*tag*
    (default: the layout's tag) with skopeo in the registry's namespace; return the
    digest of what the registry now holds under that tag.

    *fmt* "oci" keeps the layout's manifests (the digest is ``layout.digest``), "v2s2"
    converts to Docker schema 2 (other manifest and config media types, same layer
    blobs); *compress* "zstd" pushes ``recompress(layout, "zstd")`` (OCI only). *creds*
    "user:pw" or a pair, by default the registry's own (its first user) when it has
    auth. An index is pushed whole unless *all_platforms* is False (then only amd64).
    """
    if fmt not in ("oci", "v2s2") or compress not in ("gzip", "zstd"):
        raise ValueError(f"fmt {fmt!r} / compress {compress!r}")
    if compress == "zstd" and fmt != "oci":
        raise ValueError("zstd layers need OCI manifests")
    if all_platforms is None:
        all_platforms = layout.media_type == OCI_INDEX
    creds = getattr(registry, "creds", None) if creds is None else creds
    creds = ":".join(creds) if isinstance(creds, tuple) else creds
    scratch = Path(tempfile.mkdtemp(prefix="push-", dir=registry.dir))
    try:
        if compress == "zstd":
            layout = recompress(layout, scratch / "zstd", "zstd", all_platforms=all_platforms)
        args = ["copy", "--quiet", "--dest-tls-verify=false", "--format", fmt,
                "--digestfile", str(scratch / "digest")]
        args += ["--all"] if all_platforms else []
        args += ["--dest-creds", creds] if creds else ["--dest-no-creds"]
        skopeo(*args, layout.ref, f"docker://{registry.host}/{name}:{tag or layout.tag}",
               ns=registry.ns, scratch=scratch, timeout=timeout)
        return (scratch / "digest").read_text().strip()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def recompress(layout: ImageLayout, layout_dir: Path | str, compress: str = "zstd", *,
               all_platforms: bool = True) -> ImageLayout:
    """Copy *layout* into the OCI layout *layout_dir* with every layer recompressed
    (skopeo's "zstd" or "gzip"). skopeo 1.9 would rather reuse a gzip blob that the
    destination repository already has than recompress: pushing this copy is how a
    registry gets zstd layers."""
    skopeo("copy", "--quiet", *["--all"] * all_platforms, "--dest-compress-format", compress,
           layout.ref, f"oci:{layout_dir}:{layout.tag}", scratch=Path(layout_dir).parent)
    return open_layout(layout_dir, layout.tag)


def open_layout(layout_dir: Path | str, tag: str = "latest") -> ImageLayout:
    """What *tag* is in the OCI layout *layout_dir* (written by us or by skopeo)."""
    layout = Path(layout_dir)
    index = json.loads((layout / "index.json").read_text())
    desc = next(m for m in index["manifests"]
                if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag)
    return _described(layout, tag, desc)


def _described(layout: Path, tag: str, desc: Mapping[str, Any]) -> ImageLayout:
    image = ImageLayout(layout, tag, desc["digest"], desc["mediaType"], desc["size"],
                        dict(desc.get("platform") or {}))
    doc = image.manifest()
    if "manifests" in doc:
        return replace(image, manifests=tuple(_described(layout, "", d) for d in doc["manifests"]))
    diff_ids = json.loads(image.blob(doc["config"]["digest"]))["rootfs"]["diff_ids"]
    layers = tuple(Layer(l["digest"], d, l["size"], l["mediaType"]) for l, d in zip(doc["layers"], diff_ids))
    return replace(image, config_digest=doc["config"]["digest"], layers=layers)


def archive(layout: ImageLayout, path: Path | str, kind: str = "docker", *,
            name: str = "busybox") -> Path:
    """Save *layout* as a tarball at *path*: ``docker save``'s format (``docker``; one
    platform; its RepoTags say ``docker.io/library/<name>:<tag>``, skopeo normalizes)
    or an OCI layout in a tar (``oci``, under the layout's tag; an index whole).
    Returns *path*."""
    path = Path(path)
    path.unlink(missing_ok=True)
    if kind == "docker":
        dest = ["--format", "v2s2", f"docker-archive:{path}:{name}:{layout.tag}"]
    elif kind == "oci":
        dest = ["--all"] * (layout.media_type == OCI_INDEX) + [f"oci-archive:{path}:{layout.tag}"]
    else:
        raise ValueError(f"archive kind {kind!r}: docker or oci")
    skopeo("copy", "--quiet", *dest[:-1], layout.ref, dest[-1], scratch=path.parent)
    return path


# -- images without busybox and indexes over images already written -----------------------
# (added beside busybox_image rather than folded into it: the critest images need a
# pause image with nothing but /pause, and an index over images built separately)

__all__ += ["scratch_image", "image_index"]


def scratch_image(layout_dir: Path | str, files: Mapping[str, FileSpec], *,
                  tag: str | None = "latest", user: str | None = None,
                  entrypoint: Sequence[str] | None = None, cmd: Sequence[str] | None = None,
                  env: Sequence[str] = (PATH_ENV,), arch: str = "amd64", variant: str = "",
                  extra_config: Mapping[str, Any] | None = None) -> ImageLayout:
    """An image of one layer holding *files* only (``FROM scratch``: no busybox), into
    the OCI layout *layout_dir* as *tag* (None: blobs only); the config as in
    ``busybox_image``."""
    layout = Path(layout_dir)
    config: dict[str, Any] = {"Env": list(env)}
    for key, value in (("User", user), ("Entrypoint", entrypoint and list(entrypoint)),
                       ("Cmd", cmd and list(cmd))):
        if value:
            config[key] = value
    config.update(extra_config or {})
    layer = _write_layer(layout, files)
    platform = {"architecture": arch, "os": "linux", **({"variant": variant} if variant else {})}
    cfg = {"created": CREATED, **platform, "config": config,
           "rootfs": {"type": "layers", "diff_ids": [layer.diff_id]},
           "history": [{"created": CREATED, "created_by": "testbed.imagebuild scratch layer"}]}
    cfg_digest, cfg_size = _write_blob(layout, json.dumps(cfg, indent=1).encode())
    manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "config": {"mediaType": OCI_CONFIG, "digest": cfg_digest, "size": cfg_size},
                "layers": [{"mediaType": layer.media_type, "digest": layer.digest, "size": layer.size}]}
    digest, size = _write_blob(layout, json.dumps(manifest, indent=1).encode())
    image = ImageLayout(layout, tag or "", digest, OCI_MANIFEST, size, platform, cfg_digest, (layer,))
    if tag:
        _tag(layout, tag, image.descriptor())
    return image


def image_index(layout_dir: Path | str, images: Sequence[ImageLayout], *,
                tag: str = "latest") -> ImageLayout:
    """An image index as *tag* in the OCI layout *layout_dir* over *images*, which
    must already be in that layout (built there with ``tag=None``)."""
    layout = Path(layout_dir)
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [i.descriptor() for i in images]}
    digest, size = _write_blob(layout, json.dumps(index, indent=1).encode())
    _tag(layout, tag, {"mediaType": OCI_INDEX, "digest": digest, "size": size})
    return ImageLayout(layout, tag, digest, OCI_INDEX, size, manifests=tuple(images))
