"""Test-wide rules.

Tests marked ``privileged`` need root, network namespaces and Debian's CNI plugins;
tests marked ``compat`` need the independent CRI stubs venv. Where a prerequisite is
missing they skip, except under ``CRI_SHIM_REQUIRE_ALL=1`` (what ``make test`` and CI
set), where a missing prerequisite is a failure: a skipped test proves nothing.
"""

from __future__ import annotations

import os
import shutil

import pytest

REQUIRE_ALL = os.environ.get("CRI_SHIM_REQUIRE_ALL") == "1"
PLUGIN_DIR = "/usr/lib/cni"


def _privileged_missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    for plugin in ("bridge", "host-local", "loopback", "portmap"):
        if not os.access(os.path.join(PLUGIN_DIR, plugin), os.X_OK):
            return f"needs Debian's containernetworking-plugins ({PLUGIN_DIR}/{plugin})"
    for tool in ("ip", "nsenter", "unshare", "iptables"):
        if shutil.which(tool) is None:
            return f"needs {tool}"
    return None


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("privileged"):
        missing = _privileged_missing()
        if missing:
            if REQUIRE_ALL:
                pytest.fail(f"privileged test cannot run: {missing} (CRI_SHIM_REQUIRE_ALL=1)")
            pytest.skip(missing)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests of the real crictl run only with ``CRI_SHIM_CRICTL`` set: crictl is not
    packaged for Debian and cannot be fetched here, so without it they are not
    collected (deselected, not skipped)."""
    if os.environ.get("CRI_SHIM_CRICTL"):
        return
    keep = [i for i in items if not i.get_closest_marker("crictl")]
    if len(keep) != len(items):
        config.hook.pytest_deselected(items=[i for i in items if i.get_closest_marker("crictl")])
        items[:] = keep
