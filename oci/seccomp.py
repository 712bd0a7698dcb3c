"""Seccomp profiles: containerd's default (``RuntimeDefault``) and Localhost files.

``seccomp_default.json`` holds the syscall rules of containerd's default profile
(contrib/seccomp, v2.0.0, for x86-64) as an OCI ``linux.seccomp`` object, with three
keys of ours on the rules that depend on the container: ``_caps`` (kept only when
every listed capability is in the bounding set), ``_not_caps`` (kept only when none
is) and ``_min_kernel``. ``default_profile`` resolves them for one container, as
containerd's ``DefaultProfile(spec)`` does, after its capabilities are final.
"""

from __future__ import annotations

import copy
import json
import os
from functools import lru_cache
from importlib import resources
from typing import Any, Iterable

__all__ = ["default_profile", "load_localhost", "SeccompError"]


class SeccompError(ValueError):
    """A Localhost profile that cannot be read or is not a seccomp object."""


@lru_cache(maxsize=1)
def _rules() -> dict[str, Any]:
    return json.loads(resources.files("oci").joinpath("seccomp_default.json").read_text())


def _kernel() -> tuple[int, ...]:
    release = os.uname().release.split("-")[0]
    return tuple(int(p) for p in release.split(".")[:2] if p.isdigit())


def default_profile(bounding: Iterable[str]) -> dict[str, Any]:
    """The default profile for a container with *bounding* capabilities."""
    caps = set(bounding)
    base = _rules()
    kernel = _kernel()
    rules = []
    for rule in base["syscalls"]:
        if any(c not in caps for c in rule.get("_caps", ())):
            continue
        if any(c in caps for c in rule.get("_not_caps", ())):
            continue
        minimum = rule.get("_min_kernel")
        if minimum and kernel < tuple(int(p) for p in minimum.split(".")):
            continue
        rules.append({k: copy.deepcopy(v) for k, v in rule.items() if not k.startswith("_")})
    return {"defaultAction": base["defaultAction"], "architectures": list(base["architectures"]),
            "syscalls": rules}


def load_localhost(path: str) -> dict[str, Any]:
    """A Localhost profile: the file at *path* on the node, an OCI ``linux.seccomp``
    object (Docker's profile format is the same for what runc reads). Raises
    ``SeccompError`` with containerd's words."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise SeccompError(f'cannot load seccomp profile "{path}": {exc.strerror}') from exc
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise SeccompError(f'decoding seccomp profile failed "{path}": {exc}') from exc
    if not isinstance(doc, dict) or "defaultAction" not in doc:
        raise SeccompError(f'decoding seccomp profile failed "{path}": no defaultAction')
    return doc
