"""The registry contract (``registry_contract``) on the memory and file registries; the
etcd one runs in tests/privileged/test_nodeipam_etcd.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from nodeipam import FileRegistry, MemoryRegistry
from tests.unit.nodeipam.registry_contract import RegistryContract


class TestMemoryRegistry(RegistryContract):
    @pytest.fixture
    def registry(self) -> MemoryRegistry:
        return MemoryRegistry()

    @pytest.fixture
    def other(self, registry: MemoryRegistry) -> MemoryRegistry:
        return registry


class TestFileRegistry(RegistryContract):
    @pytest.fixture
    def registry(self, tmp_path: Path) -> FileRegistry:
        return FileRegistry(tmp_path / "state" / "leases.json", poll_interval=0.01)

    @pytest.fixture
    def other(self, registry: FileRegistry) -> FileRegistry:
        return FileRegistry(registry.path, poll_interval=0.01)
