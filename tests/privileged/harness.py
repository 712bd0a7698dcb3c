"""The privileged tests' names for the rig (``testbed``): a node, cri-shim in it, pods.

Everything a test makes lives in its own node namespace and temp dir: the bridge, the
veths and the iptables rules die with the node namespace; pod namespaces are pinned in
the test's own netns dir; host-local's store and libcni's cache are in the temp dir.
"""

from __future__ import annotations

from pathlib import Path

from testbed.netns import Namespace
from testbed.pods import bridge_conflist, pod_config
from testbed.process import REPO, sh
from testbed.server import PLUGIN_DIR, TEST_PLUGIN_DIR, Server

__all__ = ["NodeNamespace", "Shim", "bridge_conflist", "pod_config", "sh", "REPO",
           "PLUGIN_DIR", "TEST_PLUGIN_DIR"]

NodeNamespace = Namespace


class Shim(Server):
    """cri-shim in a test's node namespace, its state under the test's temp dir."""

    def __init__(self, node: Namespace, work: Path, extra_toml: str = "") -> None:
        super().__init__(node, work, extra_toml=extra_toml)
