"""Images on this node: pull, look up, list, remove, import, and what they use on disk.

``ImageService`` composes the registry client, the content store, the snapshots, the
image store and the ``Puller`` (``images.pull``: how an image is made present), under
``<root>/{content,snapshots,records}``. Two pulls of one reference with the same
credentials share one pull. ``remove`` drops names and records, then collects what no
image, container or pull needs; ``collect_garbage`` does that at start-up too, so the
leftovers of a crashed pull do not wait for an unrelated RemoveImage. ``in_use`` (set
by the container side) names the chain ids containers run on; it is called while
garbage collection holds ``leases.lock`` and must not call back into this service.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tarfile
import time
from collections.abc import Callable, Iterable

from .archive import images_in
from .content import ContentStore
from .errors import ImageError, InvalidArchive
from .hosts import Credentials, RegistryConfig
from .leases import Leases
from .manifest import ImageConfig, parse_config
from .pull import Puller, PullProgress, RegistrySource
from .reference import parse
from .registry import RegistryClient
from .snapshots import Snapshots, chain_ids
from .store import ImageRecord, ImageStore

__all__ = ["ImageService"]

log = logging.getLogger(__name__)


class ImageService:
    def __init__(self, root: str, registry: RegistryConfig | None = None, *,
                 max_concurrent_downloads: int = 3, clock: Callable[[], int] = time.time_ns) -> None:
        self.root = root
        self.content = ContentStore(os.path.join(root, "content"))
        self.snapshots = Snapshots(os.path.join(root, "snapshots"))
        self.store = ImageStore(os.path.join(root, "records"))
        self.client = RegistryClient(registry or RegistryConfig())
        self.leases = Leases()
        self.puller = Puller(self.content, self.snapshots, self.store, self.leases,
                             max_concurrent_downloads=max_concurrent_downloads, clock=clock)
        self.puller.recorded = self._forget_usage
        self.in_use: Callable[[], Iterable[str]] = lambda: ()
        self._configs: dict[str, ImageConfig] = {}
        self._usage: tuple[int, int] | None = None
        self.content.clean_ingest()
        self.snapshots.clean()

    # -- pull and import --------------------------------------------------------------

    def pull(self, reference: str, creds: Credentials | None = None) -> ImageRecord:
        """Pull *reference* (Docker's grammar) with the client's *creds* (None: the
        registry table's for each host); returns the image's record. Raises an
        ``ImageError`` (nothing half-pulled is listed then)."""
        ref = parse(reference)
        source = RegistrySource(self.client, ref, creds)
        who = hashlib.sha256(repr(creds).encode()).hexdigest()[:16]
        return self.puller.flights.do(f"pull {ref} {who}",
                                      lambda: self.puller.materialize(ref, source))

    def import_archive(self, path: str) -> list[ImageRecord]:
        """Load every image of the archive *path* (OCI layout tar, or docker save);
        returns their records. An image the archive does not name gets no name but its
        id. Raises ``InvalidArchive`` and the pull errors."""
        try:
            tf = tarfile.open(path, "r:*")
        except (OSError, tarfile.TarError) as exc:
            raise InvalidArchive(f"{path}: cannot open the archive: {exc}") from None
        with tf:
            return [self.puller.materialize(ref, source) for ref, source in images_in(tf, path)]

    def progress(self) -> list[PullProgress]:
        return self.puller.progress()

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
        with self.leases.lock:
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

    def collect_garbage(self) -> None:
        """Delete what no image, container or pull needs (also run at start-up)."""
        with self.leases.lock:
            self._collect()

    def _collect(self) -> None:
        """Delete content and snapshots no image, container or pull needs (under
        ``leases.lock``)."""
        leased = self.leases.names()
        keep_content: set[str] = set(leased)
        keep_chains: set[str] = leased | set(self.in_use())
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

    def _forget_usage(self) -> None:
        self._usage = None


def _matches(text: str, name: str) -> bool:
    if text == name:
        return True
    try:
        ref = parse(text)
    except ImageError:
        return False
    return name in (ref.with_tag(), ref.with_digest(ref.digest) if ref.digest else "")
