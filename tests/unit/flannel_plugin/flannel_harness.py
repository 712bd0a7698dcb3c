"""Running the flannel CNI plugin in-process, its delegate behind the fake ``Exec``.

Imported by the tests as ``flannel_harness``; the ``flannel`` fixture is in conftest.py.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from libcni.testing import FakeExec

from flannelcni import plugin

BIN_DIR = "/opt/cni/bin"
SUBNET_ENV = ("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\n"
              "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n")
# kube-flannel's 10-flannel.conflist
CONFLIST = {"name": "cbr0", "cniVersion": "0.3.1", "plugins": [
    {"type": "flannel", "delegate": {"hairpinMode": True, "isDefaultGateway": True}},
    {"type": "portmap", "capabilities": {"portMappings": True}}]}


@dataclass
class Outcome:
    rc: int
    stdout: bytes
    stderr: str

    @property
    def json(self) -> Any:
        return json.loads(self.stdout)


@dataclass
class Flannel:
    """One node's flannel plugin: a subnet.env, a dataDir and a fake delegate runner."""

    tmp: Path
    exec: FakeExec

    @property
    def subnet_file(self) -> Path:
        return self.tmp / "subnet.env"

    @property
    def data_dir(self) -> Path:
        return self.tmp / "flannel"

    def saved(self, container_id: str = "ctr1") -> Path:
        return self.data_dir / container_id

    def conf(self, version: str | None = "0.3.1", **extra: Any) -> dict[str, Any]:
        """The flannel entry of kube-flannel's conflist as libcni hands it over,
        pointed at this test's subnet.env and dataDir."""
        conf: dict[str, Any] = dict(CONFLIST["plugins"][0], name="cbr0",
                                    subnetFile=str(self.subnet_file), dataDir=str(self.data_dir))
        if version is not None:
            conf["cniVersion"] = version
        conf.update(extra)
        return conf

    def env(self, command: str, container_id: str = "ctr1") -> dict[str, str]:
        return {"CNI_COMMAND": command, "CNI_CONTAINERID": container_id,
                "CNI_NETNS": "/var/run/netns/cni-1", "CNI_IFNAME": "eth0",
                "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAME=web",
                "CNI_PATH": BIN_DIR + ":/usr/lib/cni",
                "PATH": "/usr/bin", "SOMETHING_ELSE": "kept"}

    def run(self, command: str, conf: dict[str, Any] | bytes, **env: str) -> Outcome:
        stdin = conf if isinstance(conf, bytes) else json.dumps(conf).encode()
        out, err = io.BytesIO(), io.StringIO()
        rc = plugin.run(exec_=self.exec, environ=self.env(command) | env, stdin=stdin,
                        stdout=out, stderr=err)
        return Outcome(rc, out.getvalue(), err.getvalue())


def make_flannel(tmp_path: Path) -> Flannel:
    """A node with kube-flannel's usual subnet.env written."""
    node = Flannel(tmp_path, FakeExec())
    node.subnet_file.write_text(SUBNET_ENV)
    return node
