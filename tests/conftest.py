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
