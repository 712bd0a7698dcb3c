"""The content store: blobs by digest under ``<root>/blobs/<algorithm>/<hex>``.

A blob is written to ``<root>/ingest/<random>`` while it is hashed and counted, and
renamed into place only once its digest and size are the descriptor's and its bytes are
on disk (fsync, as containerd's content writer), so a torn, corrupt or power-cut download
is never visible under its digest; a failed write removes its temp file. Paths come only
from digests (checked by ``parse_digest``), never from names a client sent. Leftover
ingest files of a crash are removed by ``clean_ingest`` at start-up.
"""

from __future__ import annotations

import errno
import os
import secrets
from collections.abc import Iterator

from .digest import Hasher, parse_digest
from .errors import DigestMismatch, ImageError, StorageError

__all__ = ["ContentStore", "Writer"]


class Writer:
    """An ingest in progress; ``commit`` verifies and publishes, ``abort`` discards."""

    def __init__(self, store: "ContentStore", digest: str, size: int | None, where: str) -> None:
        self.store = store
        self.digest = digest
        self.hasher = Hasher(digest, size, where)
        self.temp = os.path.join(store.ingest_dir, secrets.token_hex(12))
        try:
            self._fd = os.open(self.temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StorageError(f"cannot create {self.temp}", exc.errno) from exc

    def write(self, chunk: bytes) -> None:
        self.hasher.update(chunk)
        view = memoryview(chunk)
        try:
            while view:
                view = view[os.write(self._fd, view):]
        except OSError as exc:
            self.abort()
            raise StorageError(f"cannot write {self.temp}", exc.errno) from exc

    def commit(self) -> str:
        """Verify, then rename into place; returns the blob's path. Raises
        ``DigestMismatch`` (the temp file removed)."""
        try:
            self.hasher.verify()
        except DigestMismatch:
            self.abort()
            raise
        path = self.store.path(self.digest)
        try:
            os.fsync(self._fd)   # on disk before it has its name: a blob is trusted by name
            os.close(self._fd)
            self._fd = -1
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
            os.replace(self.temp, path)
            _fsync_dir(os.path.dirname(path))
        except OSError as exc:
            self.abort()
            raise StorageError(f"cannot commit {path}", exc.errno) from exc
        return path

    def abort(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        try:
            os.unlink(self.temp)
        except FileNotFoundError:
            pass

    def __enter__(self) -> "Writer":
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None:
            self.abort()


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ContentStore:
    """Blobs under *root*; thread-safe (each write has its own temp file; the same
    blob written twice at once ends the same)."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.blobs_dir = os.path.join(root, "blobs")
        self.ingest_dir = os.path.join(root, "ingest")
        for d in (self.blobs_dir, self.ingest_dir):
            os.makedirs(d, mode=0o700, exist_ok=True)

    def path(self, digest: str) -> str:
        algorithm, hex_ = parse_digest(digest)
        return os.path.join(self.blobs_dir, algorithm, hex_)

    def has(self, digest: str) -> bool:
        return os.path.isfile(self.path(digest))

    def read(self, digest: str, limit: int = 8 << 20) -> bytes:
        """A small blob's bytes (manifests, configs). Raises ``ImageError`` when it is
        missing or larger than *limit*."""
        path = self.path(digest)
        try:
            with open(path, "rb") as f:
                data = f.read(limit + 1)
        except FileNotFoundError:
            raise ImageError(f"content {digest} is not in the store") from None
        except OSError as exc:
            raise StorageError(f"cannot read {path}", exc.errno) from exc
        if len(data) > limit:
            raise ImageError(f"content {digest} is larger than {limit} bytes")
        return data

    def writer(self, digest: str, size: int | None, where: str) -> Writer:
        return Writer(self, digest, size, where)

    def put(self, data: bytes, digest: str, where: str) -> str:
        """Store *data* (verified against *digest*); returns its path."""
        if self.has(digest):
            return self.path(digest)
        with self.writer(digest, len(data), where) as w:
            w.write(data)
            return w.commit()

    def delete(self, digest: str) -> None:
        try:
            os.unlink(self.path(digest))
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise StorageError(f"cannot remove {self.path(digest)}", exc.errno) from exc

    def list(self) -> Iterator[str]:
        for algorithm in sorted(os.listdir(self.blobs_dir)):
            for hex_ in sorted(os.listdir(os.path.join(self.blobs_dir, algorithm))):
                yield f"{algorithm}:{hex_}"

    def clean_ingest(self) -> int:
        """Remove what interrupted writes left; returns how many files."""
        removed = 0
        for name in os.listdir(self.ingest_dir):
            try:
                os.unlink(os.path.join(self.ingest_dir, name))
                removed += 1
            except OSError as exc:
                if exc.errno != errno.ENOENT:
                    raise StorageError(f"cannot clean {self.ingest_dir}", exc.errno) from exc
        return removed
