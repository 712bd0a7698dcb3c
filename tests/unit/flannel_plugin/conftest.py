from __future__ import annotations

from pathlib import Path

import pytest
from flannel_harness import Flannel, make_flannel


@pytest.fixture
def flannel(tmp_path: Path) -> Flannel:
    return make_flannel(tmp_path)
