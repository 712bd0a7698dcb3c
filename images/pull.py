"""Making an image present: resolve, fetch manifests and config, fetch and unpack layers.

``Puller.materialize`` is what a registry pull and an archive import share: the image
comes from a ``Source``. It resolves the reference, fetches the manifest (choosing this
machine's from an index, or checking a lone manifest's platform) and the config, then
each missing layer, downloading and unpacking the layers side by side: at most
``max_concurrent_downloads`` downloads at a time for each pull, as containerd counts
them (an unpack does not hold a download slot). A layer whose chain is already unpacked
is neither fetched nor unpacked again. Nothing is recorded until every piece is verified
and in place, so a failed pull lists nothing and leaves only complete blobs and
snapshots, which the next pull reuses and garbage collection removes when no image
needs them.

Concurrency: two pulls that need one blob or one snapshot share its download or unpack
(``SingleFlight``); what a pull works with is leased (``Leases``) so a garbage
collection leaves it alone.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

from .content import ContentStore
from .errors import InvalidContent, StorageError
from .flights import SingleFlight
from .hosts import Credentials
from .leases import Leases
from .manifest import (INDEX_TYPES, MANIFEST_TYPES, Descriptor, check_platform,
                       layer_compression, parse_config, parse_index, parse_manifest,
                       select_platform)
from .reference import Reference
from .registry import RegistryClient
from .snapshots import Snapshots, chain_ids
from .store import ImageRecord, ImageStore
from .unpack import unpack_layer

__all__ = ["Puller", "PullProgress", "Source", "RegistrySource"]

log = logging.getLogger(__name__)

MAX_LAYER_THREADS = 16   # layers in progress at once in one pull (downloads are fewer)


@dataclass
class PullProgress:
    """What an in-flight pull has done, for ``cri-shim ctl pull``'s progress bar."""

    reference: str
    started: float = field(default_factory=time.monotonic)
    total_bytes: int = 0
    done_bytes: int = 0
    layers: int = 0
    layers_done: int = 0


class Source(Protocol):
    """Where an image comes from: a registry, an archive."""

    name: str

    def resolve(self) -> Descriptor: ...
    def manifest(self, desc: Descriptor) -> bytes: ...
    def blob(self, desc: Descriptor, write: Callable[[bytes], None]) -> None: ...


class RegistrySource:
    """The image of *ref* in its registry; *creds* are the client's (kubelet's), or
    None to use the registry table's for each host."""

    def __init__(self, client: RegistryClient, ref: Reference, creds: Credentials | None) -> None:
        self.client, self.ref, self.creds, self.name = client, ref, creds, str(ref)

    def resolve(self) -> Descriptor:
        return self.client.resolve(self.ref, self.creds).descriptor

    def manifest(self, desc: Descriptor) -> bytes:
        return self.client.fetch_manifest(self.ref, desc, self.creds)

    def blob(self, desc: Descriptor, write: Callable[[bytes], None]) -> None:
        self.client.fetch_blob(self.ref, desc, write, self.creds)


class Puller:
    def __init__(self, content: ContentStore, snapshots: Snapshots, store: ImageStore,
                 leases: Leases, *, max_concurrent_downloads: int = 3,
                 clock: Callable[[], int] = time.time_ns) -> None:
        self.content, self.snapshots, self.store = content, snapshots, store
        self.leases = leases
        self.flights = SingleFlight()
        self.max_concurrent_downloads = max(1, max_concurrent_downloads)
        self._clock = clock
        self._lock = threading.Lock()
        self._progress: dict[int, PullProgress] = {}
        self.recorded: Callable[[], None] = lambda: None   # told after a record is written

    def progress(self) -> list[PullProgress]:
        with self._lock:
            return list(self._progress.values())

    def materialize(self, ref: Reference | None, source: Source) -> ImageRecord:
        """Make the image *source* has present and named *ref* (None: an archive's
        unnamed image, recorded by id only)."""
        progress = PullProgress(str(ref) if ref else source.name)
        key = id(progress)
        with self._lock:
            self._progress[key] = progress
        leased: list[str] = []
        what = str(ref) if ref else source.name
        try:
            top = source.resolve()
            self.leases.hold(leased, [top.digest])
            index = None
            manifest_desc = top
            for _ in range(3):   # an index, maybe an index of indexes, then the manifest
                data = self._manifest_bytes(source, manifest_desc)
                if not _is_index(manifest_desc.media_type, data):
                    break
                index = index or manifest_desc
                manifest_desc = select_platform(parse_index(data, f"{what} index"), what)
                self.leases.hold(leased, [manifest_desc.digest])
            else:
                raise InvalidContent(f"{what}: indexes nested more than twice")
            manifest = parse_manifest(data, manifest_desc.media_type, f"{what} manifest")
            self.leases.hold(leased, [manifest.config.digest, *[d.digest for d in manifest.layers]])
            config_bytes = self._blob_bytes(source, manifest.config)
            config = parse_config(config_bytes, f"{what} config {manifest.config.digest}")
            if index is None:
                check_platform(config, what)
            if len(config.diff_ids) != len(manifest.layers):
                raise InvalidContent(f"{what}: the manifest has {len(manifest.layers)} layers, "
                                     f"the config {len(config.diff_ids)} diff_ids")
            chains = chain_ids(config.diff_ids)
            self.leases.hold(leased, chains)
            self._layers(what, source, manifest.layers, config.diff_ids, chains, progress)
            size = manifest_desc.size + manifest.config.size + sum(d.size for d in manifest.layers)
            rec = ImageRecord(id=manifest.config.digest, manifest=Descriptor(
                manifest.media_type, manifest_desc.digest, manifest_desc.size),
                index=Descriptor(index.media_type, index.digest, index.size) if index else None,
                config=manifest.config, layers=manifest.layers, diff_ids=config.diff_ids,
                chain_id=chains[-1] if chains else "", size=size + (index.size if index else 0),
                created_at=self._clock())
            with self.leases.lock:
                stored = self.store.add(rec, ref) if ref is not None else self.store.add_unnamed(rec)
                self.recorded()
            log.info("pulled %s: image %s, %d layers, %d bytes", what, rec.id[:19],
                     len(manifest.layers), rec.size)
            return stored
        finally:
            self.leases.release(leased)
            with self._lock:
                self._progress.pop(key, None)

    # -- manifests and blobs ----------------------------------------------------------

    def _manifest_bytes(self, source: Source, desc: Descriptor) -> bytes:
        if self.content.has(desc.digest):
            return self.content.read(desc.digest)

        def fetch() -> bytes:
            data = source.manifest(desc)
            self.content.put(data, desc.digest, f"{source.name} manifest {desc.digest}")
            return data
        return self.flights.do(f"blob {desc.digest}", fetch)

    def _blob_bytes(self, source: Source, desc: Descriptor) -> bytes:
        if not self.content.has(desc.digest):
            self._download(source, desc, None)
        return self.content.read(desc.digest)

    def _download(self, source: Source, desc: Descriptor, progress: PullProgress | None) -> None:
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
        self.flights.do(f"blob {desc.digest}", fetch)

    # -- layers -----------------------------------------------------------------------

    def _layers(self, what: str, source: Source, layers: tuple[Descriptor, ...],
                diff_ids: tuple[str, ...], chains: list[str], progress: PullProgress) -> None:
        missing = [i for i, c in enumerate(chains) if not self.snapshots.exists(c)]
        if not missing:
            return
        progress.layers = len(missing)
        progress.total_bytes = sum(layers[i].size for i in missing
                                   if not self.content.has(layers[i].digest))
        done: dict[int, threading.Event] = {i: threading.Event() for i in missing}
        downloads = threading.Semaphore(self.max_concurrent_downloads)

        def below(i: int) -> Callable[[], Iterable[str]]:
            def lowers() -> list[str]:
                for j in range(i):       # a hard link into a lower layer: wait for it
                    if j in done:
                        done[j].wait()
                return self.snapshots.lowerdirs(chains[i - 1]) if i else []
            return lowers

        def one(i: int) -> None:
            try:
                layer = layers[i]
                if not self.content.has(layer.digest):
                    with downloads:
                        self._download(source, layer, progress)
                self.flights.do(f"snapshot {chains[i]}", lambda: self._unpack(
                    what, i, layer, diff_ids[i], chains, below(i)))
                progress.layers_done += 1
            finally:
                done[i].set()

        # Layers start bottom first, so a layer waiting for a lower one waits for one
        # that is already running.
        with ThreadPoolExecutor(max_workers=min(len(missing), MAX_LAYER_THREADS),
                                thread_name_prefix="layer") as pool:
            futures = [pool.submit(one, i) for i in missing]
            errors = []
            for f in futures:
                try:
                    f.result()
                except BaseException as exc:
                    errors.append(exc)
        if errors:
            raise errors[0]

    def _unpack(self, what: str, i: int, layer: Descriptor, diff_id: str,
                chains: list[str], lowers: Callable[[], Iterable[str]]) -> None:
        if self.snapshots.exists(chains[i]):
            return
        prepared = self.snapshots.prepare(chains[i], chains[i - 1] if i else "")
        try:
            unpack_layer(self.content.path(layer.digest), layer_compression(layer.media_type),
                         prepared.fs, layer=f"{i} ({layer.digest}) of {what}", diff_id=diff_id,
                         lowers=lowers)
        except OSError as exc:
            prepared.abort()
            raise StorageError(f"unpacking layer {i} ({layer.digest}) of {what}", exc.errno) from exc
        except BaseException:
            prepared.abort()
            raise
        # Published in any order: only a complete image's record ever names a chain, and
        # a chain whose parent failed is collected as garbage.
        prepared.commit()


def _is_index(media_type: str, data: bytes) -> bool:
    """Whether a manifest document is an index (by its media type, or, when the
    registry sent a generic one, by its own ``mediaType`` or a ``manifests`` list)."""
    if media_type in INDEX_TYPES:
        return True
    if media_type in MANIFEST_TYPES:
        return False
    try:
        doc = json.loads(data)
    except ValueError:
        return False
    return isinstance(doc, dict) and (doc.get("mediaType") in INDEX_TYPES or "manifests" in doc)
