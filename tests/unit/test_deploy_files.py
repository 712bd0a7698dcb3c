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


def test_daemonset_has_what_a_runtime_needs_from_the_host() -> None:
    docs = list(yaml.safe_load_all((DEPLOY / "cri-shim.yaml").read_text()))
    kinds = {d["kind"]: d for d in docs}
    assert set(kinds) == {"ConfigMap", "DaemonSet"}
    conf = config.parse(kinds["ConfigMap"]["data"]["config.toml"], source="configmap")
    pod = kinds["DaemonSet"]["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True and pod["hostPID"] is True
    (c,) = pod["containers"]
    assert c["securityContext"]["privileged"] is True
    assert c["args"] == ["serve", "--config", "/etc/cri-shim/config.toml"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    host = {m["mountPath"]: volumes[m["name"]].get("hostPath", {}).get("path") for m in c["volumeMounts"]}
    for path in ("/run/netns", "/var/lib/cni", "/etc/cni/net.d", "/opt/cni/bin", conf.root, conf.state,
                 "/sys/fs/cgroup"):
        assert host.get(path) == path, path        # the host's own path, at the same place
    assert mounts["/run/netns"]["mountPropagation"] == "Bidirectional"   # pins seen by the host
    assert conf.cni.conf_dir == "/etc/cni/net.d" and "/opt/cni/bin" in conf.cni.bin_dirs
    assert conf.address.startswith(conf.state)     # the socket lands on the host's /run/cri-shim
