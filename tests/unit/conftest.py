from __future__ import annotations

import os
import sys

# The fake plugin runner lives beside the cni/ tests; the sandbox manager's tests use it too.
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "cni"))
