"""Content digests (``sha256:<hex>``): parsing, and hashing bytes as they go by."""

from __future__ import annotations

import hashlib
import re

from .errors import DigestMismatch, InvalidContent

__all__ = ["parse_digest", "sha256_of", "Hasher"]

_DIGEST = re.compile(r"(sha256):([0-9a-f]{64})\Z|(sha512):([0-9a-f]{128})\Z")


def parse_digest(text: object, where: str = "digest") -> tuple[str, str]:
    """(algorithm, hex) of a digest we can verify (sha256, sha512). Raises
    ``InvalidContent`` naming *where*; the hex becomes a file name only after this."""
    m = _DIGEST.match(text) if isinstance(text, str) else None
    if m is None:
        raise InvalidContent(f"{where}: {text!r} is not a sha256 or sha512 digest")
    return (m[1], m[2]) if m[1] else (m[3], m[4])


def sha256_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Hasher:
    """Counts and hashes what is written; ``verify`` compares with the descriptor."""

    def __init__(self, digest: str, size: int | None, where: str) -> None:
        self.algorithm, self.expected = parse_digest(digest, where)
        self.digest = digest
        self.size = size
        self.where = where
        self.written = 0
        self._hash = hashlib.new(self.algorithm)

    def update(self, chunk: bytes) -> None:
        self.written += len(chunk)
        if self.size is not None and self.written > self.size:
            raise DigestMismatch(f"{self.where}: more than the {self.size} bytes the descriptor "
                                 "says")
        self._hash.update(chunk)

    def verify(self) -> None:
        """Raise ``DigestMismatch`` unless size and digest are the descriptor's."""
        if self.size is not None and self.written != self.size:
            raise DigestMismatch(f"{self.where}: {self.written} bytes, the descriptor says "
                                 f"{self.size}")
        got = self._hash.hexdigest()
        if got != self.expected:
            raise DigestMismatch(f"{self.where}: digest {self.algorithm}:{got}, the descriptor "
                                 f"says {self.digest}")
