from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from .harness import NodeNamespace, Shim


@pytest.fixture
def node() -> Iterator[NodeNamespace]:
    ns = NodeNamespace()
    try:
        yield ns
    finally:
        ns.close()


@pytest.fixture
def shim(node: NodeNamespace, tmp_path: Path) -> Iterator[Shim]:
    """A cri-shim (not yet started: write a conf, then ``.start()``) in a fresh node."""
    s = Shim(node=node, work=tmp_path)
    try:
        yield s
    finally:
        s.stop()
        s.force_clean()
