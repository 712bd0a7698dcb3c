"""The deploy/ files agree with cri-shim's own defaults."""

from __future__ import annotations

from pathlib import Path

import yaml

from cri_shim import config

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
CRICTL_KEYS = {"runtime-endpoint", "image-endpoint", "timeout", "debug", "pull-image-on-create",
               "disable-pull-on-run"}   # cri-tools' pkg/common config keys


def test_crictl_yaml_points_at_the_default_socket() -> None:
    conf = yaml.safe_load((DEPLOY / "crictl.yaml").read_text())
    assert set(conf) <= CRICTL_KEYS
    socket = config.load(None).address
    assert conf["runtime-endpoint"] == conf["image-endpoint"] == f"unix://{socket}"
    assert isinstance(conf["timeout"], int)
