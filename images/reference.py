"""Image references: Docker's grammar (distribution/reference) and its normalisation.

``parse("busybox")`` is ``docker.io/library/busybox:latest``; ``parse("localhost:5000/a/b@sha256:…")``
keeps the host with its port and the digest. The first path component is a registry
host when it has a ``.`` or a ``:`` or is ``localhost``; otherwise the host is
``docker.io`` and a one-component name gets ``library/``. A reference with neither tag
nor digest gets ``:latest``; one with both is the digest alone (the tag is dropped, as
containerd's ``ParseDockerRef`` does). Digests are sha256 or sha512 in lowercase hex.
Errors name the part that is wrong.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import InvalidReference

__all__ = ["Reference", "parse", "DEFAULT_DOMAIN", "is_image_id"]

DEFAULT_DOMAIN = "docker.io"
LEGACY_DOMAINS = ("index.docker.io",)
MAX_NAME = 255

_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*\Z")
_DOMAIN_PART = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = re.compile(rf"(?:{_DOMAIN_PART}(?:\.{_DOMAIN_PART})*|\[[0-9a-fA-F:.]+\])(?::[0-9]+)?\Z")
_TAG = re.compile(r"[\w][\w.-]{0,127}\Z", re.ASCII)
_DIGEST = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}\Z")
_HEX_LENGTH = {"sha256": 64, "sha512": 128}
_HEX64 = re.compile(r"(?:sha256:)?[0-9a-f]{64}\Z")


@dataclass(frozen=True)
class Reference:
    """A normalised reference: ``domain``/``path`` with an optional ``tag`` and
    ``digest`` (``sha256:<hex>``)."""

    domain: str
    path: str
    tag: str = ""
    digest: str = ""

    @property
    def name(self) -> str:
        """``docker.io/library/busybox``: the repository, fully qualified."""
        return f"{self.domain}/{self.path}"

    @property
    def object(self) -> str:
        """What is fetched from ``/v2/<path>/manifests/``: the digest, else the tag."""
        return self.digest or self.tag

    def with_tag(self) -> str:
        """``<name>:<tag>`` (a repo tag), or "" when there is no tag."""
        return f"{self.name}:{self.tag}" if self.tag else ""

    def with_digest(self, digest: str) -> str:
        """``<name>@<digest>`` (a repo digest)."""
        return f"{self.name}@{digest}"

    def __str__(self) -> str:
        text = self.name
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def is_image_id(text: str) -> bool:
    """Whether *text* is an image id (``sha256:<64 hex>`` or the bare 64 hex)."""
    return bool(_HEX64.match(text))


def parse(text: str, *, default_tag: str = "latest") -> Reference:
    """Parse and normalise *text*. Raises ``InvalidReference`` naming the wrong part."""
    if not text:
        raise InvalidReference(text, "it is empty")
    if text != text.strip() or any(c.isspace() for c in text):
        raise InvalidReference(text, "it contains whitespace")
    rest, digest = text, ""
    if "@" in rest:
        rest, _, digest = rest.partition("@")
        if not _DIGEST.match(digest):
            raise InvalidReference(text, f'"{digest}" is not a digest (algorithm:hex)')
        algorithm, _, hex_ = digest.partition(":")
        if algorithm not in _HEX_LENGTH:
            raise InvalidReference(text, f'digest algorithm "{algorithm}" is not supported '
                                         "(sha256, sha512)")
        if len(hex_) != _HEX_LENGTH[algorithm] or hex_ != hex_.lower():
            raise InvalidReference(text, f'{algorithm} digest "{hex_}" must have '
                                         f"{_HEX_LENGTH[algorithm]} lowercase hex digits")
    tag = ""
    last = rest.rfind(":")
    if last > rest.rfind("/"):
        rest, tag = rest[:last], rest[last + 1:]
        if not _TAG.match(tag):
            raise InvalidReference(text, f'tag "{tag}" is invalid (letters, digits, _ . -; '
                                         "at most 128, not starting with . or -)")
    if not rest:
        raise InvalidReference(text, "the repository name is empty")
    first, slash, remainder = rest.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        domain, path = first, remainder
        if not _DOMAIN.match(domain):
            raise InvalidReference(text, f'registry host "{domain}" is invalid')
    else:
        domain, path = DEFAULT_DOMAIN, rest
    if domain in LEGACY_DOMAINS:
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and "/" not in path:
        path = f"library/{path}"
    for component in path.split("/"):
        if not _COMPONENT.match(component):
            if component.lower() != component and _COMPONENT.match(component.lower()):
                raise InvalidReference(text, "repository name must be lowercase")
            raise InvalidReference(text, f'repository path component "{component}" is '
                                         "invalid (lowercase letters, digits, separators)")
    if len(f"{domain}/{path}") > MAX_NAME:
        raise InvalidReference(text, f"repository name is longer than {MAX_NAME} characters")
    if digest:
        tag = ""   # name:tag@digest is the digest (containerd's ParseDockerRef drops the tag)
    elif not tag:
        tag = default_tag
    return Reference(domain, path, tag, digest)
