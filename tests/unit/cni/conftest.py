from __future__ import annotations

import os

import pytest
from cni_fakes import RECORDER

import libcni
from libcni.testing import FakeExec


@pytest.fixture
def fake_exec() -> FakeExec:
    return FakeExec()


@pytest.fixture
def cache_dir(tmp_path) -> str:
    return str(tmp_path / "cache")


@pytest.fixture
def config(fake_exec, cache_dir) -> libcni.CNIConfig:
    return libcni.CNIConfig(["/opt/cni/bin", "/usr/lib/cni"], exec=fake_exec, cache_dir=cache_dir)


@pytest.fixture
def rt() -> libcni.RuntimeConf:
    return libcni.RuntimeConf(
        container_id="c0ffee", netns="/var/run/netns/cni-1234", ifname="eth0",
        args=(("IgnoreUnknown", "1"), ("K8S_POD_NAMESPACE", "default"),
              ("K8S_POD_NAME", "web"), ("K8S_POD_INFRA_CONTAINER_ID", "c0ffee"),
              ("K8S_POD_UID", "u-1")),
        capability_args={"portMappings": [
            {"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": ""},
        ], "bandwidth": {"ingressRate": 1000}})


@pytest.fixture
def recorder_bin(tmp_path) -> str:
    """A bin dir where plugin types a, b, c and recorder all run the recorder."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("a", "b", "c", "recorder"):
        os.symlink(RECORDER, bin_dir / name)
    return str(bin_dir)
