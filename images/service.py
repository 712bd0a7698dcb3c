"""Images on this node: pull, look up, list, remove, import, and what they use on disk.

``ImageService`` composes the registry client, the content store, the snapshots and
the image store, under ``<root>/{content,snapshots,images}``. A pull resolves the
reference, fetches the manifest (choosing this machine's from an index) and the
config, then each missing layer, downloading and unpacking the layers side by side
(``max_concurrent_downloads`` at a time, as containerd); a layer whose chain is
already unpacked is neither fetched nor unpacked again. Nothing is recorded until every
piece is verified and in place, so a failed pull lists nothing and leaves only complete
blobs and snapshots, which the next pull reuses and garbage collection removes when no
image needs them.

Concurrency: two pulls of one reference share one pull; two pulls that need one blob
or one snapshot share its download or unpack. Content a pull is working with is leased
(``self._leases``) so a RemoveImage's garbage collection, which runs under
``self._gc_lock``, leaves it alone. ``in_use`` (set by the container side) names the
chain ids containers run on.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from .content import ContentStore
from .errors import ImageError, InvalidContent, StorageError
from .hosts import Credentials, RegistryConfig
from .manifest import (INDEX_TYPES, MANIFEST_TYPES, Descriptor, ImageConfig, layer_compression,
                       parse_config, parse_index, parse_manifest, select_platform)
from .reference import Reference, parse
from .registry import RegistryClient
from .snapshots import Snapshots, chain_ids
from .store import ImageRecord, ImageStore
from .unpack import unpack_layer

__all__ = ["ImageService", "PullProgress", "Source", "RegistrySource"]

log = logging.getLogger(__name__)


@dataclass
class PullProgress:
    """What an in-flight pull has done, for ``cri-shim ctl pull``'s progress bar."""

    reference: str
    started: float = field(default_factory=time.monotonic)
    total_bytes: int = 0
    done_bytes: int = 0
    layers: int = 0
    layers_done: int = 0


class ImageService:
    def __init__(self, root: str, registry: RegistryConfig | None = None, *,
                 max_concurrent_downloads: int = 3, clock: Callable[[], int] = time.time_ns) -> None:
        self.root = root
        self.content = ContentStore(os.path.join(root, "content"))
        self.snapshots = Snapshots(os.path.join(root, "snapshots"))
        self.store = ImageStore(os.path.join(root, "records"))
        self.client = RegistryClient(registry or RegistryConfig())
        self.in_use: Callable[[], Iterable[str]] = lambda: ()
        self._clock = clock
        self._pool = ThreadPoolExecutor(max_workers=max(1, max_concurrent_downloads),
                                        thread_name_prefix="layer")
        self._lock = threading.Lock()         # the dicts below
        self._gc_lock = threading.Lock()      # garbage collection against lease changes
        self._flights: dict[str, Future] = {}
        self._leases: Counter[str] = Counter()
        self._progress: dict[int, PullProgress] = {}
        self._configs: dict[str, ImageConfig] = {}
        self._usage: tuple[int, int] | None = None
        self.content.clean_ingest()
        self.snapshots.clean()

    # -- pull -------------------------------------------------------------------------

    def pull(self, reference: str, creds: Credentials = Credentials()) -> ImageRecord:
        """Pull *reference* (Docker's grammar); returns the image's record. Raises an
        ``ImageError`` (nothing half-pulled is listed then)."""
        ref = parse(reference)
        source = RegistrySource(self.client, ref, creds)
        return self._once(f"pull {ref}", lambda: self.materialize(ref, source))

    def materialize(self, ref: Reference, source: "Source") -> ImageRecord:
        """Make the image *source* has for *ref* (a registry, an archive) present and
        named *ref*; what ``pull`` and ``import`` share."""
        progress = PullProgress(str(ref))
        key = id(progress)
        with self._lock:
            self._progress[key] = progress
        leased: list[str] = []
        try:
            top = source.resolve()
            self._lease(leased, [top.digest])
            index = None
            manifest_desc = top
            for _ in range(3):   # an index, maybe an index of indexes, then the manifest
                data = self._manifest_bytes(source, manifest_desc)
                if not _is_index(manifest_desc.media_type, data):
                    break
                index = index or manifest_desc
                manifest_desc = select_platform(parse_index(data, f"{ref} index"), f"{ref}")
                self._lease(leased, [manifest_desc.digest])
            else:
                raise InvalidContent(f"{ref}: indexes nested more than twice")
            manifest = parse_manifest(data, manifest_desc.media_type, f"{ref} manifest")
            self._lease(leased, [manifest.config.digest, *[d.digest for d in manifest.layers]])
            config_bytes = self._blob_bytes(source, manifest.config)
            config = parse_config(config_bytes, f"{ref} config {manifest.config.digest}")
            if len(config.diff_ids) != len(manifest.layers):
                raise InvalidContent(f"{ref}: the manifest has {len(manifest.layers)} layers, the "
                                     f"config {len(config.diff_ids)} diff_ids")
            chains = chain_ids(config.diff_ids)
            self._lease(leased, chains)
            self._layers(ref, source, manifest.layers, config.diff_ids, chains, progress)
            size = manifest_desc.size + manifest.config.size + sum(d.size for d in manifest.layers)
            rec = ImageRecord(id=manifest.config.digest, manifest=Descriptor(
                manifest.media_type, manifest_desc.digest, manifest_desc.size),
                index=Descriptor(index.media_type, index.digest, index.size) if index else None,
                config=manifest.config, layers=manifest.layers, diff_ids=config.diff_ids,
                chain_id=chains[-1] if chains else "", size=size + (index.size if index else 0),
                created_at=self._clock())
            with self._gc_lock:
                stored = self.store.add(rec, ref) if ref is not _UNNAMED else self.store.add_unnamed(rec)
                self._usage = None
            log.info("pulled %s: image %s, %d layers, %d bytes", ref, rec.id[:19],
                     len(manifest.layers), rec.size)
            return stored
        finally:
            self._unlease(leased)
            with self._lock:
                self._progress.pop(key, None)

    def import_archive(self, path: str) -> list[ImageRecord]:
        """Load every image of the archive *path* (OCI layout tar, or docker save);
        returns their records. An image the archive does not name gets no name but its
        id. Raises ``InvalidArchive`` and the pull errors."""
        import tarfile

        from .archive import images_in
        from .errors import InvalidArchive
        try:
            tf = tarfile.open(path, "r:*")
        except (OSError, tarfile.TarError) as exc:
            raise InvalidArchive(f"{path}: cannot open the archive: {exc}") from None
        with tf:
            records = []
            for ref, source in images_in(tf, path):
                records.append(self.materialize(ref or _UNNAMED, source))
        return records

    def _manifest_bytes(self, source: "Source", desc: Descriptor) -> bytes:
        if self.content.has(desc.digest):
            return self.content.read(desc.digest)

        def fetch() -> bytes:
            data = source.manifest(desc)
            self.content.put(data, desc.digest, f"{source.name} manifest {desc.digest}")
            return data
        return self._once(f"blob {desc.digest}", fetch)

    def _blob_bytes(self, source: "Source", desc: Descriptor) -> bytes:
        if not self.content.has(desc.digest):
            self._download(source, desc, None)
        return self.content.read(desc.digest)

    def _download(self, source: "Source", desc: Descriptor, progress: PullProgress | None) -> None:
        def fetch() -> None:
            if self.content.has(desc.digest):
                return
            with self.content.writer(desc.digest, desc.size,
                                     f"{source.name} blob {desc.digest}") as w:
                def write(chunk: bytes) -> None:
                    w.write(chunk)
                    if progress is not None:
                        progress.done_bytes += len(chunk)
                source.blob(desc, write)
                w.commit()
        self._once(f"blob {desc.digest}", fetch)

    def _layers(self, ref: Reference, source: "Source", layers: tuple[Descriptor, ...],
                diff_ids: tuple[str, ...], chains: list[str], progress: PullProgress) -> None:
        missing = [i for i, c in enumerate(chains) if not self.snapshots.exists(c)]
        progress.layers = len(missing)
        progress.total_bytes = sum(layers[i].size for i in missing
                                   if not self.content.has(layers[i].digest))
        done: dict[int, threading.Event] = {i: threading.Event() for i in missing}

        def lower(i: int) -> Callable[[str], str | None]:
            def find(rel: str) -> str | None:
                for j in range(i):       # a hard link into a lower layer: wait for it
                    if j in done:
                        done[j].wait()
                return self.snapshots.lookup(chains[i - 1], rel) if i else None
            return find

        def one(i: int) -> None:
            try:
                layer = layers[i]
                self._download(source, layer, progress)
                self._once(f"snapshot {chains[i]}", lambda: self._unpack(
                    ref, i, layer, diff_ids[i], chains, lower(i)))
                progress.layers_done += 1
            finally:
                done[i].set()

        futures = [self._pool.submit(one, i) for i in missing]
        errors = []
        for f in futures:
            try:
                f.result()
            except BaseException as exc:
                errors.append(exc)
        if errors:
            raise errors[0]

    def _unpack(self, ref: Reference, i: int, layer: Descriptor, diff_id: str,
                chains: list[str], lower: Callable[[str], str | None]) -> None:
        if self.snapshots.exists(chains[i]):
            return
        prepared = self.snapshots.prepare(chains[i], chains[i - 1] if i else "")
        try:
            unpack_layer(self.content.path(layer.digest), layer_compression(layer.media_type),
                         prepared.fs, layer=f"{i} ({layer.digest}) of {ref}", diff_id=diff_id,
                         lower=lower)
        except OSError as exc:
            prepared.abort()
            raise StorageError(f"unpacking layer {i} ({layer.digest}) of {ref}", exc.errno) from exc
        except BaseException:
            prepared.abort()
            raise
        # Published in any order: only a complete image's record ever names a chain, and
        # a chain whose parent failed is collected as garbage.
        prepared.commit()

    # -- single flight and leases -------------------------------------------------------

    def _once(self, key: str, fn: Callable[[], Any]) -> Any:
        """Run *fn* unless a run under *key* is in flight: then wait for that one's
        outcome. The next call after a failure runs again."""
        with self._lock:
            flight = self._flights.get(key)
            owner = flight is None
            if owner:
                flight = self._flights[key] = Future()
        assert flight is not None
        if not owner:
            return flight.result()
        try:
            result = fn()
        except BaseException as exc:
            flight.set_exception(exc)
            raise
        else:
            flight.set_result(result)
            return result
        finally:
            with self._lock:
                self._flights.pop(key, None)

    def _lease(self, leased: list[str], names: Iterable[str]) -> None:
        with self._gc_lock:
            for name in names:
                self._leases[name] += 1
                leased.append(name)

    def _unlease(self, leased: list[str]) -> None:
        with self._gc_lock:
            for name in leased:
                self._leases[name] -= 1
                if self._leases[name] <= 0:
                    del self._leases[name]

    # -- queries ------------------------------------------------------------------------

    def find(self, text: str) -> ImageRecord | None:
        """An image by id, id prefix or reference (``busybox``, ``…@sha256:…``)."""
        return self.store.find(text)

    def list(self) -> list[ImageRecord]:
        return self.store.list()

    def config(self, rec: ImageRecord) -> ImageConfig:
        cached = self._configs.get(rec.config.digest)
        if cached is None:
            cached = parse_config(self.content.read(rec.config.digest), f"config {rec.config.digest}")
            self._configs[rec.config.digest] = cached
        return cached

    def progress(self) -> list[PullProgress]:
        with self._lock:
            return list(self._progress.values())

    def rootfs(self, rec: ImageRecord) -> list[str]:
        """The image's snapshot dirs, top first (overlayfs ``lowerdir``)."""
        return self.snapshots.lowerdirs(rec.chain_id) if rec.chain_id else []

    # -- remove and collect ---------------------------------------------------------------

    def remove(self, text: str) -> bool:
        """RemoveImage: by id, every name goes with the image; by a name, that name,
        and the image when it was its last. False when there is no such image."""
        rec = self.store.find(text)
        if rec is None:
            return False
        with self._gc_lock:
            named = [n for n in rec.references() if _matches(text, n)]
            if named and len(rec.references()) > len(named):
                for name in named:
                    rec = self.store.untag(rec, name)
                # Repo digests of a tag-only removal stay only while a tag remains.
                if not rec.repo_tags:
                    self.store.delete(rec.id)
            else:
                self.store.delete(rec.id)
            self._collect()
        return True

    def gc(self) -> None:
        with self._gc_lock:
            self._collect()

    def _collect(self) -> None:
        """Delete content and snapshots no image, container or pull needs (under
        ``_gc_lock``)."""
        keep_content: set[str] = set(self._leases)
        keep_chains: set[str] = set(self._leases) | set(self.in_use())
        for rec in self.store.list():
            keep_content.update([rec.manifest.digest, rec.config.digest,
                                 *[d.digest for d in rec.layers]])
            if rec.index is not None:
                keep_content.add(rec.index.digest)
            keep_chains.update(chain_ids(rec.diff_ids))
        for digest in list(self.content.list()):
            if digest not in keep_content:
                self.content.delete(digest)
        for chain in list(self.snapshots.list()):
            if chain not in keep_chains:
                self.snapshots.remove(chain)
        self._usage = None

    # -- disk -----------------------------------------------------------------------------

    def usage(self) -> tuple[int, int]:
        """(bytes, inodes) the image filesystem really uses (blocks, each inode once)."""
        cached = self._usage
        if cached is not None:
            return cached
        seen: set[tuple[int, int]] = set()
        used = inodes = 0
        for top in (self.content.root, self.snapshots.root, self.store.directory):
            for dirpath, dirnames, filenames in os.walk(top):
                for name in [*dirnames, *filenames, ""]:
                    try:
                        st = os.lstat(os.path.join(dirpath, name) if name else dirpath)
                    except FileNotFoundError:
                        continue
                    if (st.st_dev, st.st_ino) in seen:
                        continue
                    seen.add((st.st_dev, st.st_ino))
                    used += st.st_blocks * 512
                    inodes += 1
        self._usage = (used, inodes)
        return self._usage

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


# An archive's image without a name: recorded by id only.
_UNNAMED = Reference("docker.io", "import/unnamed")


class Source(Protocol):
    """Where an image comes from: a registry, an archive."""

    name: str

    def resolve(self) -> Descriptor: ...
    def manifest(self, desc: Descriptor) -> bytes: ...
    def blob(self, desc: Descriptor, write: Callable[[bytes], None]) -> None: ...


class RegistrySource:
    """The image of *ref* in its registry."""

    def __init__(self, client: RegistryClient, ref: Reference, creds: Credentials) -> None:
        self.client, self.ref, self.creds, self.name = client, ref, creds, str(ref)

    def resolve(self) -> Descriptor:
        return self.client.resolve(self.ref, self.creds).descriptor

    def manifest(self, desc: Descriptor) -> bytes:
        return self.client.fetch_manifest(self.ref, desc, self.creds)

    def blob(self, desc: Descriptor, write: Callable[[bytes], None]) -> None:
        self.client.fetch_blob(self.ref, desc, write, self.creds)


def _is_index(media_type: str, data: bytes) -> bool:
    """Whether a manifest document is an index (by its media type, or, when the
    registry sent a generic one, by its own ``mediaType`` or a ``manifests`` list)."""
    if media_type in INDEX_TYPES:
        return True
    if media_type in MANIFEST_TYPES:
        return False
    import json
    try:
        doc = json.loads(data)
    except ValueError:
        return False
    return isinstance(doc, dict) and (doc.get("mediaType") in INDEX_TYPES or "manifests" in doc)


def _matches(text: str, name: str) -> bool:
    if text == name:
        return True
    try:
        ref = parse(text)
    except ImageError:
        return False
    return name in (ref.with_tag(), ref.with_digest(ref.digest) if ref.digest else "")
