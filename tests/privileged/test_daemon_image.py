"""The top-level Dockerfile: built with buildah from a debootstrap'd bookworm base (no
registry to pull one from), then run: ``cri-shim --version``, and make demo's steps
(serve, run a pod through Debian's real plugins, its IP, explain, stop, remove)
inside the image, in a throwaway node namespace of ours."""

from __future__ import annotations

import json
import re

import pytest

from testbed.daemonimage import DaemonImage
from testbed.netns import Namespace
from testbed.pods import bridge_conflist

pytestmark = pytest.mark.privileged

SUBNET = "10.88.0.0/24"
SOCK = "unix:///run/cs/cri.sock"


def demo_script() -> str:
    conflist = json.dumps(bridge_conflist("demo", SUBNET, "/var/lib/cni/networks"))
    ctl = f"cri-shim ctl -r {SOCK}"
    return f"""set -eu
mkdir -p /etc/cni/net.d /run/cs
cat > /etc/cni/net.d/10-demo.conflist <<'CONF'
{conflist}
CONF
cri-shim serve --root /run/cs/root --state /run/cs/state --listen /run/cs/cri.sock \\
  --netns-dir /run/cs/netns --cni-cache-dir /run/cs/cni > /run/cs/log 2>&1 &
server=$!
for i in $(seq 200); do [ -S /run/cs/cri.sock ] && break; sleep 0.1; done
echo '{{"metadata": {{"name": "demo", "namespace": "default", "uid": "u1"}}}}' > /run/cs/pod.json
id=$({ctl} runp /run/cs/pod.json)
{ctl} inspectp "$id" | python3 -c 'import json, sys; print("IP", json.load(sys.stdin)["status"]["network"]["ip"])'
{ctl} explain demo | head -n 1
{ctl} stopp "$id" > /dev/null
{ctl} rmp "$id" > /dev/null
echo "pods left: $({ctl} pods -q | wc -l)"
kill "$server"
wait "$server" || true
grep -q 'serving CRI' /run/cs/log && echo served
"""


def test_the_daemon_image_builds_and_runs_a_pod(tmp_path) -> None:
    image = DaemonImage(tmp_path)
    node = Namespace("crishim-img")
    try:
        image.base()
        image.build()
        assert image.run(["--version"], podman_args=("--network=none",)).strip() == "cri-shim 0.1.0"
        out = image.run(["-c", demo_script()], podman_args=(
            "--privileged", f"--network=ns:{node.path}", "--entrypoint", "/bin/sh"))
        ip = re.search(r"^IP (\S+)$", out, re.M)
        assert ip and ip[1].startswith("10.88.0."), out
        assert "Pod default/demo (attempt 0)" in out and f"IP {ip[1]}" in out
        assert "pods left: 0" in out and "served" in out, out
        assert node.veths() == []                 # the pod's veth went with it
    finally:
        image.close()
        node.delete()
