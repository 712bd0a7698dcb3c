"""``cri-shim ctl explain``: a pod's whole story from the recorded trace and the node,
with Debian's real plugins in a throwaway node."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from cri_shim.api import api_pb2 as pb

from .harness import REPO, Shim, bridge_conflist, pod_config

pytestmark = pytest.mark.privileged

SUBNET = "10.88.0.0/24"


def explain(shim: Shim, *args: str) -> subprocess.CompletedProcess:
    """ctl explain run on the node (inside its netns), as an operator would."""
    return subprocess.run(["nsenter", f"--net={shim.node.path}", sys.executable, "-m", "cri_shim", "ctl",
                           "-r", f"unix://{shim.socket}", "explain", *args], capture_output=True,
                          text=True, timeout=60, env={"PYTHONPATH": str(REPO), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})


def test_explain_tells_the_whole_story(shim: Shim, tmp_path) -> None:
    shim.write_conf("10-test.conflist", bridge_conflist("testnet", SUBNET, shim.ipam_dir))
    (shim.conf_dir / "05-broken.conf").write_text("{not json")
    shim.write_conf("20-later.conflist", bridge_conflist("later", "10.89.0.0/24", shim.ipam_dir))
    shim.start()
    sandbox_id = shim.runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=pod_config("web"))).pod_sandbox_id
    ip = shim.runtime.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id)).status.network.ip

    out = explain(shim, "web", "--svg", str(tmp_path / "web.svg"))
    assert out.returncode == 0, out.stderr
    text = out.stdout
    for words in (f"Pod default/web (attempt 0), sandbox {sandbox_id[:13]}, READY, IP {ip}",
                  f"runtime config   {shim.work / 'config.toml'}",
                  "05-broken.conf", "skipped: invalid JSON",
                  '10-test.conflist             chosen: network "testnet"',
                  "20-later.conflist            not read: max_conf_num = 1",
                  "netns pin", "bridge ADD eth0, network testnet: ok",
                  "exec /usr/lib/cni/bridge", "CNI_IFNAME=eth0", f"CNI_CONTAINERID={sandbox_id}",
                  '"type":"host-local"', "portmap ADD eth0", "loopback ADD lo",
                  f"the pod's IP: {ip}",
                  f"in the pod's netns: eth0 UP {ip}/24",
                  "in the pod's netns: route default via 10.88.0.1 dev eth0",
                  "on the node: bridge cni0 10.88.0.1/24"):
        assert words in text, f"{words!r} not in:\n{text}"
    svg = (tmp_path / "web.svg").read_text()
    assert svg.startswith("<svg") and f"IP {ip}" in svg and "IPAM (host-local)" in svg

    # The same by id prefix, as JSON; in crictl inspectp's info too.
    report = json.loads(explain(shim, sandbox_id[:8], "--json").stdout)
    run = report["trace"]["run"]
    assert [s["plugin"] for s in run["steps"] if s["kind"] == "exec"] and run["outcome"]["ips"] == [ip]
    assert run["recording_ms"] < 5
    st = shim.runtime.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id, verbose=True))
    assert json.loads(st.info["info"])["trace"]["run"]["steps"] == run["steps"]

    # A restart keeps it; a stop adds its own part.
    shim.stop()
    shim.start()
    shim.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=sandbox_id))
    text = explain(shim, "default/web").stdout
    assert "RunPodSandbox at" in text and "StopPodSandbox at" in text
    assert "bridge DEL eth0, network testnet: ok" in text and "netns unpin" in text
    assert "in the pod's netns" not in text                 # gone with the netns
    shim.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id))


def test_explain_names_what_it_cannot_find(shim: Shim) -> None:
    shim.write_conf("10-test.conflist", bridge_conflist("testnet", SUBNET, shim.ipam_dir))
    shim.start()
    out = explain(shim, "nobody")
    assert out.returncode == 1
    assert 'no sandbox with id, id prefix or pod name "nobody"' in out.stderr


def test_explain_a_host_network_pod(shim: Shim) -> None:
    shim.write_conf("10-test.conflist", bridge_conflist("testnet", SUBNET, shim.ipam_dir))
    shim.start()
    cfg = pod_config("hostpod")
    cfg.linux.security_context.namespace_options.network = pb.NODE
    sandbox_id = shim.runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=cfg)).pod_sandbox_id
    text = explain(shim, "hostpod").stdout
    assert "host network: the pod uses the node's own addresses; no CNI plugin ran" in text
    assert " exec " not in text
    shim.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=sandbox_id))
    shim.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id))
