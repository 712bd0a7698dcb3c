"""Manifests, indexes and image configs: OCI and Docker schema 2, and platform matching.

Parsing checks what a pull relies on (media types, descriptors with verifiable
digests and sizes) and raises ``InvalidContent`` naming the document and the field.
``select_platform`` picks this machine's manifest from an index the way containerd's
``platforms.Only(DefaultSpec())`` does: names normalised (``x86_64`` is ``amd64``,
``aarch64`` is ``arm64``, ``arm64/v8`` is ``arm64``, ``amd64/v1`` is ``amd64``), os and
architecture equal, the variant equal (arm: this one or an older one), index order among
equals; on amd64 a ``386`` manifest is taken when there is nothing better.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

from .digest import parse_digest
from .errors import InvalidContent, NoMatchingPlatform

__all__ = ["OCI_INDEX", "OCI_MANIFEST", "DOCKER_LIST", "DOCKER_MANIFEST", "MANIFEST_TYPES",
           "INDEX_TYPES", "ACCEPT", "Descriptor", "Platform", "Manifest", "ImageConfig",
           "parse_index", "parse_manifest", "parse_config", "select_platform", "check_platform",
           "host_platform", "layer_compression"]

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
# What containerd's resolver sends (core/remotes/docker/resolver.go), in its order.
ACCEPT = ", ".join((DOCKER_MANIFEST, DOCKER_LIST, OCI_MANIFEST, OCI_INDEX, "*/*"))
CONFIG_TYPES = ("application/vnd.oci.image.config.v1+json",
                "application/vnd.docker.container.image.v1+json")
_LAYERS = {
    "application/vnd.oci.image.layer.v1.tar": "",
    "application/vnd.oci.image.layer.v1.tar+gzip": "gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd": "zstd",
    "application/vnd.docker.image.rootfs.diff.tar.gzip": "gzip",
    "application/vnd.docker.image.rootfs.diff.tar": "",
}
MAX_MANIFEST = 4 * 1048 * 1048   # containerd's MaxManifestSize


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str = ""

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    platform: Platform | None = None

    def to_json(self) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


@dataclass(frozen=True)
class Manifest:
    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]


@dataclass(frozen=True)
class ImageConfig:
    """The parts of an image config a runtime uses; ``raw`` is the whole document."""

    platform: Platform
    diff_ids: tuple[str, ...]
    user: str = ""
    env: tuple[str, ...] = ()
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    working_dir: str = ""
    stop_signal: str = ""
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)
    exposed_ports: tuple[str, ...] = ()
    volumes: tuple[str, ...] = ()
    raw: Mapping[str, Any] = field(default_factory=dict, hash=False, compare=False)


def _load(data: bytes, what: str) -> dict[str, Any]:
    if len(data) > MAX_MANIFEST:
        raise InvalidContent(f"{what}: {len(data)} bytes, more than {MAX_MANIFEST}")
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise InvalidContent(f"{what}: not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidContent(f"{what}: not a JSON object")
    return doc


def _descriptor(obj: Any, where: str) -> Descriptor:
    if not isinstance(obj, dict):
        raise InvalidContent(f"{where}: not an object")
    media_type, digest, size = obj.get("mediaType"), obj.get("digest"), obj.get("size")
    if not isinstance(media_type, str) or not media_type:
        raise InvalidContent(f"{where}.mediaType: missing")
    parse_digest(digest, f"{where}.digest")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise InvalidContent(f"{where}.size: {size!r} is not a size")
    platform = None
    if isinstance(obj.get("platform"), dict):
        p = obj["platform"]
        platform = Platform(str(p.get("os", "")), str(p.get("architecture", "")),
                            str(p.get("variant", "") or ""))
    return Descriptor(media_type, digest, size, platform)


def parse_index(data: bytes, what: str) -> list[Descriptor]:
    """The manifests an OCI index or Docker manifest list points to."""
    doc = _load(data, what)
    entries = doc.get("manifests")
    if not isinstance(entries, list):
        raise InvalidContent(f"{what}: no manifests list")
    return [_descriptor(d, f"{what} manifests[{i}]") for i, d in enumerate(entries)]


def parse_manifest(data: bytes, media_type: str, what: str) -> Manifest:
    """An OCI or Docker schema 2 image manifest; its layers must be of a type we unpack."""
    doc = _load(data, what)
    if doc.get("schemaVersion") != 2:
        raise InvalidContent(f"{what}: schemaVersion {doc.get('schemaVersion')!r}, want 2 "
                             "(schema 1 manifests are not supported)")
    declared = doc.get("mediaType") or media_type
    if declared not in MANIFEST_TYPES:
        raise InvalidContent(f"{what}: media type {declared!r} is not an image manifest")
    config = _descriptor(doc.get("config"), f"{what} config")
    if config.media_type not in CONFIG_TYPES:
        raise InvalidContent(f"{what} config: media type {config.media_type!r} is not an "
                             "image config (an artifact, not an image)")
    layers = doc.get("layers")
    if not isinstance(layers, list):
        raise InvalidContent(f"{what}: no layers list")
    parsed = tuple(_descriptor(d, f"{what} layers[{i}]") for i, d in enumerate(layers))
    for i, layer in enumerate(parsed):
        if layer.media_type not in _LAYERS:
            raise InvalidContent(f"{what} layers[{i}]: media type {layer.media_type!r} cannot "
                                 "be unpacked (supported: " + ", ".join(_LAYERS) + ")")
    return Manifest(declared, config, parsed)


def layer_compression(media_type: str) -> str:
    """"", "gzip" or "zstd" for a layer media type."""
    return _LAYERS[media_type]


def parse_config(data: bytes, what: str) -> ImageConfig:
    doc = _load(data, what)
    rootfs = doc.get("rootfs") or {}
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(diff_ids, list):
        raise InvalidContent(f"{what}: rootfs.diff_ids missing")
    for i, d in enumerate(diff_ids):
        parse_digest(d, f"{what} rootfs.diff_ids[{i}]")
    conf = doc.get("config") or {}
    if not isinstance(conf, dict):
        raise InvalidContent(f"{what}: config is not an object")

    def strings(key: str) -> tuple[str, ...]:
        value = conf.get(key) or ()
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise InvalidContent(f"{what}: config.{key} is not a list of strings")
        return tuple(value)

    def string(key: str) -> str:
        value = conf.get(key) or ""
        if not isinstance(value, str):
            raise InvalidContent(f"{what}: config.{key} is not a string")
        return value

    labels = conf.get("Labels") or {}
    if not isinstance(labels, dict):
        raise InvalidContent(f"{what}: config.Labels is not an object")
    return ImageConfig(
        platform=Platform(str(doc.get("os", "")), str(doc.get("architecture", "")),
                          str(doc.get("variant", "") or "")),
        diff_ids=tuple(diff_ids), user=string("User"), env=strings("Env"),
        entrypoint=strings("Entrypoint"), cmd=strings("Cmd"), working_dir=string("WorkingDir"),
        stop_signal=string("StopSignal"), labels={str(k): str(v) for k, v in labels.items()},
        exposed_ports=tuple(sorted(conf.get("ExposedPorts") or {})),
        volumes=tuple(sorted(conf.get("Volumes") or {})), raw=doc)


_ARCH = {"x86_64": "amd64", "x86-64": "amd64", "aarch64": "arm64", "armhf": "arm",
         "armel": "arm", "i386": "386", "i686": "386"}


def normalize(p: Platform) -> Platform:
    """containerd's ``platforms.Normalize``."""
    arch = _ARCH.get(p.architecture.lower(), p.architecture.lower())
    variant = p.variant.lower()
    if arch == "arm64" and variant in ("8", "v8"):
        variant = ""
    if arch == "amd64" and variant == "v1":
        variant = ""
    if arch == "arm" and variant in ("", "7"):
        variant = "v7"
    if arch == "arm" and variant in ("5", "6", "8"):
        variant = f"v{variant}"
    return Platform(p.os.lower(), arch, variant)


_MACHINE_VARIANT = {"armv5l": "v5", "armv6l": "v6", "armv7l": "v7", "armv8l": "v8"}


def host_platform() -> Platform:
    """This machine's platform (containerd's ``DefaultSpec``): ``uname -m`` as Go names
    it (``x86_64`` is amd64, ``armv7l`` arm/v7)."""
    machine = os.uname().machine
    if machine in _MACHINE_VARIANT:
        return normalize(Platform("linux", "arm", _MACHINE_VARIANT[machine]))
    return normalize(Platform("linux", machine))


def check_platform(config: "ImageConfig", what: str, want: Platform | None = None) -> None:
    """A single manifest (no index to choose from) must still be for this machine, as
    containerd checks its config's os and architecture; a config that names neither is
    taken as it is. Raises ``NoMatchingPlatform``."""
    if not (config.platform.os or config.platform.architecture):
        return
    want = normalize(want or host_platform())
    if _rank(config.platform, want) is None:
        raise NoMatchingPlatform(f"{what}: the image is for {normalize(config.platform)}, "
                                 f"this machine is {want}")


def _rank(candidate: Platform | None, want: Platform) -> int | None:
    """Lower is better; None: no match."""
    if candidate is None:
        return None
    c = normalize(candidate)
    if c.os != want.os:
        return None
    if c.architecture == want.architecture:
        if c.variant == want.variant:
            return 0
        if want.architecture == "arm" and c.variant < want.variant:   # v6 runs on v7
            return 1 + (ord(want.variant[-1]) - ord(c.variant[-1]))
        return None
    if want.architecture == "amd64" and c.architecture == "386":
        return 10
    return None


def select_platform(manifests: list[Descriptor], what: str,
                    want: Platform | None = None) -> Descriptor:
    """The best manifest of an index for *want* (default: this machine). Raises
    ``NoMatchingPlatform`` listing what the index offers."""
    want = normalize(want or host_platform())
    ranked = [(r, i, d) for i, d in enumerate(manifests)
              if (r := _rank(d.platform, want)) is not None and d.media_type in
              MANIFEST_TYPES + INDEX_TYPES]
    if not ranked:
        offered = ", ".join(str(d.platform) if d.platform else "(no platform)" for d in manifests)
        raise NoMatchingPlatform(f"{what}: no manifest for platform {want} "
                                 f"(the index has: {offered or 'none'})")
    return min(ranked, key=lambda t: (t[0], t[1]))[2]
