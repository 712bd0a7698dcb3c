"""CNI spec versions: which we speak, how they compare, what each one allows.

Follows libcni's ``pkg/version``: a version string is up to three dot-separated
integers and the empty string means 0.1.0 (the spec's default when ``cniVersion`` is
absent).
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = [
    "SUPPORTED_VERSIONS",
    "CURRENT_VERSION",
    "parse_version",
    "is_supported",
    "version_ge",
    "negotiate_version",
    "command_supported",
    "prev_result_on_del",
    "result_family",
]

SUPPORTED_VERSIONS: tuple[str, ...] = ("0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0",
                                       "1.0.0", "1.1.0")
CURRENT_VERSION = "1.1.0"

# The first spec version that has each command (SPEC.md; libcni api.go checks).
_COMMAND_SINCE = {
    "ADD": "0.1.0",
    "DEL": "0.1.0",
    "VERSION": "0.2.0",
    "CHECK": "0.4.0",
    "STATUS": "1.1.0",
    "GC": "1.1.0",
}


def parse_version(version: str) -> tuple[int, int, int]:
    """``"0.3.1"`` -> ``(0, 3, 1)``; ``""`` -> ``(0, 1, 0)``. Raises ``ValueError``."""
    if version == "":
        return (0, 1, 0)
    parts = version.split(".")
    if len(parts) > 3:
        raise ValueError(f'invalid version "{version}": too many parts')
    nums: list[int] = []
    for part in parts:
        if not (part.isascii() and part.isdigit()):
            raise ValueError(f'invalid version "{version}": "{part}" is not a number')
        nums.append(int(part))
    while len(nums) < 3:
        nums.append(0)
    return (nums[0], nums[1], nums[2])


def is_supported(version: str) -> bool:
    """Whether we can speak *version* exactly (plugins compare version strings
    exactly, so ``"1.0"`` is not ``"1.0.0"``). The empty string counts as 0.1.0."""
    return version == "" or version in SUPPORTED_VERSIONS


def version_ge(version: str, other: str) -> bool:
    """``version >= other``, numerically. Raises ``ValueError`` on a malformed string."""
    return parse_version(version) >= parse_version(other)


def negotiate_version(cni_version: str, cni_versions: Iterable[str]) -> str:
    """The version to use for a conflist with ``cniVersion`` and ``cniVersions``.

    Spec 1.1.0: pick the highest of ``cniVersions`` (plus ``cniVersion``) that we
    support. libcni takes the highest not above its own version; we also skip versions
    that do not exist, so a typo cannot be chosen. Returns ``cni_version`` unchanged
    when ``cni_versions`` is empty. Raises ``ValueError`` for a malformed entry or when
    none of the listed versions is supported.
    """
    listed = list(cni_versions)
    if not listed:
        return cni_version
    candidates = [v for v in listed if _check(v) and is_supported(v) and v != ""]
    if cni_version and _check(cni_version) and is_supported(cni_version):
        candidates.append(cni_version)
    if not candidates:
        raise ValueError(f"none of cniVersions {listed} is supported "
                         f"(supported: {', '.join(SUPPORTED_VERSIONS)})")
    return max(candidates, key=parse_version)


def _check(version: str) -> bool:
    parse_version(version)  # raises on malformed input, like libcni
    return True


def command_supported(command: str, version: str) -> bool:
    """Whether *command* exists at spec *version* (CHECK >= 0.4.0, STATUS/GC >= 1.1.0)."""
    since = _COMMAND_SINCE.get(command)
    if since is None:
        return False
    return version_ge(version, since)


def prev_result_on_del(version: str) -> bool:
    """Whether DEL (and CHECK) carry the cached ``prevResult`` (spec >= 0.4.0)."""
    return version_ge(version, "0.4.0")


def result_family(version: str) -> str:
    """The wire shape of a result: ``"0.2"`` (ip4/ip6), ``"0.4"`` (ips with
    ``version``) or ``"1.0"`` (ips without ``version``). Raises ``ValueError`` for an
    unsupported version."""
    if version in ("", "0.1.0", "0.2.0"):
        return "0.2"
    if version in ("0.3.0", "0.3.1", "0.4.0"):
        return "0.4"
    if version in ("1.0.0", "1.1.0"):
        return "1.0"
    raise ValueError(f'unsupported CNI result version "{version}"')
