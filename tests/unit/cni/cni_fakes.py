"""What the cni/libcni tests share beside ``libcni.testing``: the recorder plugin and
the list of spec versions that version-dependent tests are parametrized over."""

from __future__ import annotations

import os

from cni.version import SUPPORTED_VERSIONS
from libcni.testing import BIN_DIR, Call, FakeExec, conflist, default_result  # noqa: F401

PLUGINS_DIR = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "plugins"))
RECORDER = os.path.join(PLUGINS_DIR, "recorder")
# Every spec version: version-dependent behaviour is parametrized over these.
ALL_VERSIONS = list(SUPPORTED_VERSIONS)
# Under CRI_SHIM_REQUIRE_ALL=1 (make test, CI) a missing prerequisite fails, not skips.
REQUIRE_ALL = os.environ.get("CRI_SHIM_REQUIRE_ALL") == "1"
