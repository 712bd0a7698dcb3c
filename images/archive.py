"""Image archives, for machines without a registry (``ctr images import``'s job).

Two formats, told apart by their contents:

- an OCI image layout in a tar (``oci-layout``, ``index.json``, ``blobs/<alg>/<hex>``),
  as ``skopeo copy ... oci-archive:`` or ``buildah push oci-archive:`` write it: every
  manifest (or index) in ``index.json`` is an image, named by its
  ``io.containerd.image.name`` or ``org.opencontainers.image.ref.name`` annotation;
- ``docker save``'s format (``manifest.json`` listing ``Config``, ``RepoTags`` and
  ``Layers``, each a tar path): the image gets a Docker schema 2 manifest made for it,
  whose layers are the uncompressed layer tars, and the names of ``RepoTags``.

Each image is then pulled from the archive as from a registry (``ArchiveSource``), so
digests and sizes are checked the same way. Member names are looked up, never
extracted to a path: nothing in the archive decides where anything lands. The layers
of an image are fetched side by side, but the archive is one file with one position:
every read of it takes the archive's lock (``_Archive``).
"""

from __future__ import annotations

import hashlib
import json
import tarfile
import threading
from collections.abc import Callable, Iterator
from typing import Any

from .digest import parse_digest
from .errors import ImageNotFound, InvalidArchive
from .manifest import DOCKER_MANIFEST, Descriptor
from .reference import Reference, parse

__all__ = ["ArchiveSource", "images_in"]

_CHUNK = 1 << 20
_DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
_DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"


class _Archive:
    """The opened archive and the lock its reads share (a TarFile member read seeks
    the one underlying file)."""

    def __init__(self, tf: tarfile.TarFile, path: str) -> None:
        self.tf, self.path = tf, path
        self.lock = threading.Lock()

    def chunks(self, member: str) -> Iterator[bytes]:
        with self.lock:
            f = self.tf.extractfile(member)
        if f is None:
            raise InvalidArchive(f"{self.path}: {member} is not a file")
        while True:
            with self.lock:
                chunk = f.read(_CHUNK)
            if not chunk:
                return
            yield chunk


class ArchiveSource:
    """One image of an opened archive, served as a registry would serve it."""

    def __init__(self, archive: _Archive, top: Descriptor, blobs: dict[str, str],
                 made: dict[str, bytes]) -> None:
        self.name = archive.path
        self._archive, self._top, self._blobs, self._made = archive, top, blobs, made

    def resolve(self) -> Descriptor:
        return self._top

    def manifest(self, desc: Descriptor) -> bytes:
        if desc.digest in self._made:
            return self._made[desc.digest]
        return b"".join(self._chunks(desc))

    def blob(self, desc: Descriptor, write: Callable[[bytes], None]) -> None:
        for chunk in self._chunks(desc):
            write(chunk)

    def _chunks(self, desc: Descriptor) -> Iterator[bytes]:
        member = self._blobs.get(desc.digest)
        if member is None:
            raise ImageNotFound(f"{self.name}: the archive has no blob {desc.digest}")
        yield from self._archive.chunks(member)


def images_in(tf: tarfile.TarFile, path: str) -> list[tuple[Reference | None, ArchiveSource]]:
    """The images of the opened archive *tf* (read from file *path*), with their names."""
    names = {m.name.lstrip("./"): m.name for m in tf.getmembers() if m.isfile()}
    archive = _Archive(tf, path)
    if "index.json" in names and "oci-layout" in names:
        return _oci(archive, names)
    if "manifest.json" in names:
        return _docker(archive, names)
    raise InvalidArchive(f"{path}: neither an OCI layout (index.json, oci-layout) nor a "
                         "docker save archive (manifest.json)")


def _json(archive: _Archive, member: str) -> Any:
    data = b""
    for chunk in archive.chunks(member):
        data += chunk
        if len(data) > 8 << 20:
            raise InvalidArchive(f"{archive.path}: {member} is larger than 8 MiB")
    try:
        return json.loads(data)
    except ValueError as exc:
        raise InvalidArchive(f"{archive.path}: {member} is not JSON: {exc}") from None


def _oci(archive: _Archive, names: dict[str, str]) -> list:
    path = archive.path
    blobs = {}
    for name, member in names.items():
        if name.startswith("blobs/") and name.count("/") == 2:
            _, algorithm, hex_ = name.split("/")
            try:
                parse_digest(f"{algorithm}:{hex_}")
            except ValueError:
                continue
            blobs[f"{algorithm}:{hex_}"] = member
    index = _json(archive, names["index.json"])
    if not isinstance(index, dict) or not isinstance(index.get("manifests"), list):
        raise InvalidArchive(f"{path}: index.json has no manifests list")
    out = []
    for i, entry in enumerate(index["manifests"]):
        try:
            desc = Descriptor(entry["mediaType"], entry["digest"], int(entry["size"]))
            parse_digest(desc.digest)
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidArchive(f"{path}: index.json manifests[{i}]: {exc}") from None
        annotations = entry.get("annotations") or {}
        name = annotations.get("io.containerd.image.name") or \
            annotations.get("org.opencontainers.image.ref.name") or ""
        ref = None
        if name:
            try:
                # A bare ref.name (``latest``) names docker.io/import/image:<it>.
                ref = parse(name) if ("/" in name or ":" in name) else parse(f"import/image:{name}")
            except ValueError as exc:
                raise InvalidArchive(f"{path}: image name {name!r}: {exc}") from None
        out.append((ref, ArchiveSource(archive, desc, blobs, {})))
    return out


def _docker(archive: _Archive, names: dict[str, str]) -> list:
    path = archive.path
    manifest = _json(archive, names["manifest.json"])
    if not isinstance(manifest, list):
        raise InvalidArchive(f"{path}: manifest.json is not a list")
    out = []
    for i, entry in enumerate(manifest):
        if not isinstance(entry, dict) or not isinstance(entry.get("Config"), str) or \
                not isinstance(entry.get("Layers"), list):
            raise InvalidArchive(f"{path}: manifest.json[{i}] lacks Config or Layers")
        blobs: dict[str, str] = {}

        def add(member_name: str) -> Descriptor:
            member = names.get(member_name.lstrip("./"))
            if member is None:
                raise InvalidArchive(f"{path}: manifest.json[{i}] names {member_name!r}, "
                                     "which the archive does not have")
            h, size = hashlib.sha256(), 0
            for chunk in archive.chunks(member):
                h.update(chunk)
                size += len(chunk)
            digest = "sha256:" + h.hexdigest()
            blobs[digest] = member
            return Descriptor("", digest, size)

        config = add(entry["Config"])
        layers = [add(layer) for layer in entry["Layers"]]
        doc = {"schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
               "config": {"mediaType": _DOCKER_CONFIG, "digest": config.digest, "size": config.size},
               "layers": [{"mediaType": _DOCKER_LAYER, "digest": d.digest, "size": d.size}
                          for d in layers]}
        data = json.dumps(doc, separators=(",", ":")).encode()
        top = Descriptor(DOCKER_MANIFEST, "sha256:" + hashlib.sha256(data).hexdigest(), len(data))
        tags = entry.get("RepoTags") or [None]
        for tag in tags:
            try:
                ref = parse(tag) if tag else None
            except ValueError as exc:
                raise InvalidArchive(f"{path}: RepoTags entry {tag!r}: {exc}") from None
            out.append((ref, ArchiveSource(archive, top, blobs, {top.digest: data})))
    return out
