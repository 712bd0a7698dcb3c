"""Snapshots: one directory per layer chain, shared by every image that has the chain.

A snapshot is keyed by its chain id (OCI image-spec: the first layer's chain id is its
diff id, every next one ``sha256(parent chain id + " " + diff id)``), lives in
``<root>/<hex>/fs`` with its parent's chain id in ``<root>/<hex>/parent``, and holds
only its own layer's files (overlayfs lower dirs: an image's rootfs is the chain's
``fs`` dirs, top first). A snapshot is made in ``<root>/.tmp-<random>`` and renamed into
place once unpacked, so a half-unpacked layer is never used; ``clean`` removes the
leftovers of a crash. Who uses a snapshot (images, containers) is the caller's to
record; ``remove`` removes one.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import secrets
import shutil
from collections.abc import Iterator

from .digest import parse_digest
from .errors import StorageError

__all__ = ["chain_ids", "Snapshots", "Prepared"]


def chain_ids(diff_ids: list[str] | tuple[str, ...]) -> list[str]:
    """The chain id of every layer of an image, bottom first."""
    out: list[str] = []
    for diff_id in diff_ids:
        if not out:
            out.append(diff_id)
        else:
            out.append("sha256:" + hashlib.sha256(f"{out[-1]} {diff_id}".encode()).hexdigest())
    return out


_libc = ctypes.CDLL(None, use_errno=True)


def _syncfs(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if _libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), path)
    finally:
        os.close(fd)


class Prepared:
    """A snapshot being unpacked: ``fs`` is the empty directory to fill."""

    def __init__(self, snapshots: "Snapshots", chain_id: str, parent: str) -> None:
        self.snapshots, self.chain_id, self.parent = snapshots, chain_id, parent
        self.dir = os.path.join(snapshots.root, f".tmp-{secrets.token_hex(8)}")
        self.fs = os.path.join(self.dir, "fs")
        try:
            os.makedirs(self.fs, mode=0o755)
        except OSError as exc:
            raise StorageError(f"cannot make {self.fs}", exc.errno) from exc

    def commit(self) -> None:
        """Publish it (another pull may have published the same chain meanwhile). The
        unpacked files are flushed to disk first (``syncfs``): a snapshot is trusted by
        its name ever after, so it must not be named before it is whole."""
        try:
            with open(os.path.join(self.dir, "parent"), "w") as f:
                f.write(self.parent)
            final = self.snapshots.dir(self.chain_id)
            if os.path.isdir(final):
                self.abort()
                return
            _syncfs(self.dir)
            os.rename(self.dir, final)
        except OSError as exc:
            self.abort()
            raise StorageError(f"cannot commit snapshot {self.chain_id}", exc.errno) from exc

    def abort(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


class Snapshots:
    """The snapshot directory *root*; thread-safe for different chains."""

    def __init__(self, root: str) -> None:
        self.root = root
        os.makedirs(root, mode=0o711, exist_ok=True)

    def dir(self, chain_id: str) -> str:
        return os.path.join(self.root, parse_digest(chain_id, "chain id")[1])

    def fs(self, chain_id: str) -> str:
        return os.path.join(self.dir(chain_id), "fs")

    def exists(self, chain_id: str) -> bool:
        return os.path.isdir(self.fs(chain_id))

    def parent(self, chain_id: str) -> str:
        with open(os.path.join(self.dir(chain_id), "parent")) as f:
            return f.read().strip()

    def prepare(self, chain_id: str, parent: str) -> Prepared:
        return Prepared(self, chain_id, parent)

    def lowerdirs(self, chain_id: str) -> list[str]:
        """The ``fs`` dirs of the chain, top first (overlayfs ``lowerdir`` order)."""
        dirs = []
        while chain_id:
            dirs.append(self.fs(chain_id))
            chain_id = self.parent(chain_id)
        return dirs

    def remove(self, chain_id: str) -> None:
        path = self.dir(chain_id)
        trash = os.path.join(self.root, f".tmp-{secrets.token_hex(8)}")
        try:
            os.rename(path, trash)   # gone from view at once, then deleted
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StorageError(f"cannot remove snapshot {chain_id}", exc.errno) from exc
        shutil.rmtree(trash, ignore_errors=True)

    def list(self) -> Iterator[str]:
        for name in sorted(os.listdir(self.root)):
            if not name.startswith(".") and os.path.isdir(os.path.join(self.root, name, "fs")):
                yield f"sha256:{name}"

    def clean(self) -> int:
        """Remove half-made and half-removed snapshots a crash left."""
        leftovers = [n for n in os.listdir(self.root) if n.startswith(".tmp-")]
        for name in leftovers:
            shutil.rmtree(os.path.join(self.root, name), ignore_errors=True)
        return len(leftovers)
