"""The image error tree.

::

    ImageError                    every error of this package
    ├── InvalidReference          an image reference that does not parse (names the part)
    ├── ImageNotFound             the registry (or the store) has no such image/tag
    ├── RegistryUnavailable       no host of the registry could be reached (names them)
    ├── AuthFailed                the registry refused our credentials (its own answer)
    ├── InvalidContent            a manifest, config or layer that is not what it claims
    │   ├── DigestMismatch        bytes whose digest or size is not the descriptor's
    │   ├── NoMatchingPlatform    an index without an entry for this machine
    │   └── UnsafeLayer           a layer entry that would land outside its snapshot
    ├── InvalidArchive            an image archive (``ctl import``) that cannot be read
    ├── HostsConfigError          a hosts.toml or registry table (or auth value) unusable
    └── StorageError              our own disk failed (full, read-only); carries errno

The CRI layer maps these to gRPC codes in ``cri_shim.errors``; nothing here knows gRPC.
"""

from __future__ import annotations

import os

__all__ = ["ImageError", "InvalidReference", "ImageNotFound", "RegistryUnavailable",
           "AuthFailed", "InvalidContent", "DigestMismatch", "NoMatchingPlatform",
           "UnsafeLayer", "InvalidArchive", "HostsConfigError", "StorageError"]


class ImageError(Exception):
    """Base of every image error."""


class InvalidReference(ImageError, ValueError):
    """The reference does not follow Docker's grammar; the message names the part."""

    def __init__(self, reference: str, problem: str) -> None:
        super().__init__(f'invalid image reference "{reference}": {problem}')
        self.reference = reference


class ImageNotFound(ImageError):
    """No such image: the registry answered 404 for it, or the store has none."""


class RegistryUnavailable(ImageError):
    """Every host tried failed to answer; ``hosts`` are the URLs tried."""

    def __init__(self, message: str, hosts: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.hosts = hosts


class AuthFailed(ImageError):
    """The registry (or its token service) refused; the message is its answer."""


class InvalidContent(ImageError):
    """Content that is not what its descriptor or media type says."""


class DigestMismatch(InvalidContent):
    """Bytes whose digest or size differs from the descriptor's."""


class NoMatchingPlatform(InvalidContent):
    """An index with no manifest for the wanted platform."""


class UnsafeLayer(InvalidContent):
    """A layer entry that would escape its snapshot, or that cannot be represented."""


class InvalidArchive(ImageError):
    """An image archive that cannot be read."""


class HostsConfigError(ImageError):
    """A hosts.toml, a registry table or an ``auth`` value that cannot be used; names
    the file and key."""


class StorageError(ImageError):
    """A write or read of our own store failed; ``errno`` says why."""

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(f"{message}: {os.strerror(errno)}" if errno else message)
        self.errno = errno
