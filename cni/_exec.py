"""The ``Exec`` protocol, re-exported by ``cni.invoke`` (its documented home).

It lives apart because a ``typing.Protocol`` needs ``typing`` at run time, which a
CNI plugin built on ``cni.skel`` would otherwise import at every start (about 4 ms);
``cni.invoke`` loads this module when ``Exec`` is first asked for, which only the
runtime side (``cni.api``) does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .invoke import ExecOutput

__all__ = ["Exec"]


class Exec(Protocol):
    """Finds and runs plugin binaries. ``run`` returns whatever the plugin produced,
    whatever its exit status; it raises only when the plugin could not be run
    (``PluginNotFound``, ``ExecTimeout``, ``CNIError``)."""

    __module__ = "cni.invoke"

    def run(self, plugin_path: str, stdin: bytes, env: Mapping[str, str],
            timeout: float | None) -> ExecOutput: ...

    def find_plugin(self, name: str, bin_dirs: Sequence[str]) -> str: ...
