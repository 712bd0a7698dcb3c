"""The image store: what images there are and their names, surviving restarts.

An image is keyed by its id, the digest of its config (as containerd's CRI does); its
record names its repo tags (``docker.io/library/busybox:latest``), repo digests
(``docker.io/library/busybox@sha256:<manifest or index digest>``), the manifest it was
pulled as, its layers and its top chain id. One JSON file per image under the store's
directory, written atomically, named by the id's hex (ours, never a client's text).
A tag names at most one image: tagging another image with it moves it.

Locking: every public method takes ``self._lock`` and holds it only for dictionary work
and one file write.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
from dataclasses import dataclass
from typing import Any

from atomicfile import write_atomic

from .digest import parse_digest
from .errors import StorageError
from .manifest import Descriptor
from .reference import Reference, is_image_id, parse

__all__ = ["ImageRecord", "ImageStore"]

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1


@dataclass(frozen=True, kw_only=True)
class ImageRecord:
    id: str                                  # sha256 of the config
    repo_tags: tuple[str, ...] = ()
    repo_digests: tuple[str, ...] = ()
    manifest: Descriptor                     # the platform's image manifest
    index: Descriptor | None = None          # the index it was chosen from, if any
    config: Descriptor
    layers: tuple[Descriptor, ...] = ()
    diff_ids: tuple[str, ...] = ()
    chain_id: str = ""                       # the top layer's chain id ("" for no layers)
    size: int = 0                            # compressed: manifest + config + layers
    pinned: bool = False
    created_at: int = 0

    def references(self) -> tuple[str, ...]:
        return self.repo_tags + self.repo_digests

    def replace(self, **changes: Any) -> "ImageRecord":
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        def desc(d: Descriptor | None) -> dict[str, Any] | None:
            return None if d is None else d.to_json()
        return {"schema_version": SCHEMA_VERSION, "id": self.id, "repo_tags": list(self.repo_tags),
                "repo_digests": list(self.repo_digests), "manifest": desc(self.manifest),
                "index": desc(self.index), "config": desc(self.config),
                "layers": [d.to_json() for d in self.layers], "diff_ids": list(self.diff_ids),
                "chain_id": self.chain_id, "size": self.size, "pinned": self.pinned,
                "created_at": self.created_at}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "ImageRecord":
        if d.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(f"unsupported schema_version {d.get('schema_version')!r}")

        def desc(obj: dict[str, Any] | None) -> Descriptor | None:
            return None if obj is None else Descriptor(obj["mediaType"], obj["digest"], obj["size"])
        manifest, config = desc(d["manifest"]), desc(d["config"])
        assert manifest is not None and config is not None
        return cls(id=d["id"], repo_tags=tuple(d["repo_tags"]), repo_digests=tuple(d["repo_digests"]),
                   manifest=manifest, index=desc(d.get("index")), config=config,
                   layers=tuple(desc(x) for x in d["layers"]),   # type: ignore[misc]
                   diff_ids=tuple(d["diff_ids"]), chain_id=d["chain_id"], size=d["size"],
                   pinned=bool(d.get("pinned")), created_at=int(d.get("created_at", 0)))


class ImageStore:
    """Image records under *directory*."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        os.makedirs(directory, mode=0o700, exist_ok=True)
        self._lock = threading.Lock()
        self._images: dict[str, ImageRecord] = {}
        self._refs: dict[str, str] = {}      # repo tag or repo digest -> id
        self._load()

    def _path(self, image_id: str) -> str:
        return os.path.join(self.directory, parse_digest(image_id, "image id")[1] + ".json")

    def _load(self) -> None:
        for name in sorted(os.listdir(self.directory)):
            path = os.path.join(self.directory, name)
            if name.endswith(".tmp") or name.startswith("."):
                os.unlink(path)
                continue
            if not name.endswith(".json"):
                continue
            try:
                with open(path, "rb") as f:
                    rec = ImageRecord.from_json(json.load(f))
            except (OSError, ValueError, KeyError, TypeError, AssertionError) as exc:
                log.error("image store: cannot read %s (%s); moved to %s.corrupt", path, exc, path)
                os.replace(path, path + ".corrupt")
                continue
            self._images[rec.id] = rec
            for ref in rec.references():
                self._refs[ref] = rec.id

    def _write(self, rec: ImageRecord) -> None:
        path = self._path(rec.id)
        try:
            write_atomic(path, json.dumps(rec.to_json(), separators=(",", ":")).encode(), mode=0o600)
        except OSError as exc:
            raise StorageError(f"cannot write image record {path}", exc.errno) from exc

    # -- queries ---------------------------------------------------------------------

    def find(self, text: str) -> ImageRecord | None:
        """An image by id (``sha256:<hex>``, the hex, or a unique prefix of it), or by
        a reference (normalised: ``busybox`` finds ``docker.io/library/busybox:latest``)."""
        with self._lock:
            if is_image_id(text):
                return self._images.get(text if text.startswith("sha256:") else f"sha256:{text}")
            if text in self._refs:
                return self._images.get(self._refs[text])
        try:
            ref = parse(text)
        except ValueError:
            return self._by_prefix(text)
        with self._lock:
            key = ref.with_digest(ref.digest) if ref.digest else ref.with_tag()
            image_id = self._refs.get(key)
            if image_id:
                return self._images.get(image_id)
        return self._by_prefix(text)   # crictl shows 13 characters of an id

    def _by_prefix(self, text: str) -> ImageRecord | None:
        hex_ = text[len("sha256:"):] if text.startswith("sha256:") else text
        if len(hex_) < 4 or any(c not in "0123456789abcdef" for c in hex_):
            return None
        with self._lock:
            found = [r for i, r in self._images.items() if i[len("sha256:"):].startswith(hex_)]
        return found[0] if len(found) == 1 else None

    def list(self) -> list[ImageRecord]:
        with self._lock:
            return sorted(self._images.values(), key=lambda r: (r.created_at, r.id))

    # -- changes ----------------------------------------------------------------------

    def add(self, rec: ImageRecord, ref: Reference) -> ImageRecord:
        """Record *rec* under *ref* (its tag and digest); a tag that named another
        image is moved. Returns the stored record (names merged with an existing one)."""
        tag = ref.with_tag()
        digest = ref.with_digest((rec.index or rec.manifest).digest)
        with self._lock:
            current = self._images.get(rec.id)
            tags = list(current.repo_tags) if current else []
            digests = list(current.repo_digests) if current else []
            if tag and tag not in tags:
                tags.append(tag)
            if digest not in digests:
                digests.append(digest)
            merged = rec.replace(repo_tags=tuple(tags), repo_digests=tuple(digests),
                                 created_at=current.created_at if current else rec.created_at,
                                 pinned=rec.pinned or bool(current and current.pinned))
            changed = [merged]
            for name in (tag, digest):
                owner = self._refs.get(name) if name else None
                if owner and owner != rec.id and owner in self._images:
                    other = self._images[owner]
                    changed.append(other.replace(
                        repo_tags=tuple(t for t in other.repo_tags if t != name),
                        repo_digests=tuple(d for d in other.repo_digests if d != name)))
            for r in changed:
                self._write(r)
            for r in changed:
                self._images[r.id] = r
            for name in merged.references():
                self._refs[name] = merged.id
            return merged

    def add_unnamed(self, rec: ImageRecord) -> ImageRecord:
        """Record *rec* with no names (an archive's unnamed image); keeps existing names."""
        with self._lock:
            current = self._images.get(rec.id)
            stored = current or rec
            self._write(stored)
            self._images[rec.id] = stored
            return stored

    def untag(self, rec: ImageRecord, name: str) -> ImageRecord:
        """Remove one reference of *rec*; returns the record as it is now."""
        with self._lock:
            current = self._images.get(rec.id, rec)
            new = current.replace(repo_tags=tuple(t for t in current.repo_tags if t != name),
                                  repo_digests=tuple(d for d in current.repo_digests if d != name))
            self._write(new)
            self._images[new.id] = new
            self._refs.pop(name, None)
            return new

    def delete(self, image_id: str) -> None:
        with self._lock:
            rec = self._images.pop(image_id, None)
            if rec is None:
                return
            for name in rec.references():
                if self._refs.get(name) == image_id:
                    del self._refs[name]
            try:
                os.unlink(self._path(image_id))
            except FileNotFoundError:
                pass
            except OSError as exc:
                self._images[image_id] = rec
                raise StorageError(f"cannot remove image record {self._path(image_id)}",
                                   exc.errno) from exc
