"""A corpus of malformed inputs from the CNI side (issue 14): conflists a user can
write wrong, and what a plugin can print wrong. Each gets a clear error naming what
was wrong (the file, the plugin), the right code, and nothing is left."""

from __future__ import annotations

import grpc
import pytest

from cri_shim.api import api_pb2 as pb

from .harness import Shim, bridge_conflist, pod_config

pytestmark = pytest.mark.privileged

SUBNET = "10.88.0.0/24"

# (file name, contents, words the error must hold)
CONFLISTS = [
    ("10-a.conflist", "", "10-a.conflist"),
    ("10-a.conflist", "{", "10-a.conflist"),
    ("10-a.conflist", "[]", "10-a.conflist"),
    ("10-a.conflist", '{"cniVersion": "1.0.0", "name": "x"}', "10-a.conflist"),
    ("10-a.conflist", '{"cniVersion": "1.0.0", "name": "x", "plugins": []}', "10-a.conflist"),
    ("10-a.conflist", '{"cniVersion": "1.0.0", "plugins": [{"type": "bridge"}]}', "10-a.conflist"),
    ("10-a.conflist", '{"cniVersion": "1.0.0", "name": "x", "plugins": [{}]}', "10-a.conflist"),
    ("10-a.conflist", '{"cniVersion": "1.0.0", "name": "x", "plugins": "bridge"}', "10-a.conflist"),
    ("10-a.conflist", '{"cniVersion": 1, "name": "x", "plugins": [{"type": "bridge"}]}', "10-a.conflist"),
    ("10-a.conflist", '{"cniVersion": "9.9.9", "name": "x", "plugins": [{"type": "bridge"}]}', "10-a.conflist"),
    ("10-a.conflist", '\xef\xbb\xbf{"name": "x"}', "10-a.conflist"),
    ("10-a.conf", '{"cniVersion": "1.0.0", "name": "x"}', "10-a.conf"),
    ("10-a.conf", '{"cniVersion": "1.0.0", "type": "bridge"}', "10-a.conf"),
    ("10-a.json", "null", "10-a.json"),
]


@pytest.mark.parametrize("name,text,words", CONFLISTS)
def test_malformed_conflists(shim: Shim, name: str, text: str, words: str) -> None:
    shim.write_conf(name, text)
    shim.start()
    with pytest.raises(grpc.RpcError) as exc:
        shim.runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=pod_config("c")), timeout=30)
    assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION, exc.value.details()
    assert words in exc.value.details(), exc.value.details()
    assert shim.leftovers() == {}


# (what the plugin prints on ADD, its exit code, words the error must hold)
OUTPUTS = [
    ("", 0, "shim-test"),
    ("{", 0, "shim-test"),
    ("[]", 0, "shim-test"),
    ("null", 0, "no IP address on eth0"),   # Go's json reads null as an empty result, as libcni does
    ('{"cniVersion": "1.0.0", "ips": "nope"}', 0, "shim-test"),
    ('{"cniVersion": "1.0.0", "ips": [{"address": "not-an-ip"}]}', 0, "shim-test"),
    ('{"cniVersion": "1.0.0", "interfaces": [{"name": 3}]}', 0, "shim-test"),
    ('{"cniVersion": "0.0.1"}', 0, "shim-test"),
    ("x" * 300000, 0, "shim-test"),
    ("", 1, "shim-test"),
    ("not json at all", 2, "shim-test"),
    ('{"code": "seven", "msg": 1}', 1, "shim-test"),
    ('{"code": 7}', 1, "CNI error code 7"),
    ("\udcff\x00\x01", 0, "shim-test"),
]


@pytest.mark.parametrize("output,code,words", OUTPUTS)
def test_malformed_plugin_outputs(shim: Shim, output: str, code: int, words: str) -> None:
    plugin = {"type": "shim-test", "output": output.encode("utf-8", "surrogateescape").decode("latin-1"),
              "exitCode": code}
    shim.write_conf("10-test.conflist", bridge_conflist("testnet", SUBNET, shim.ipam_dir, portmap=False,
                                                        extra=[plugin]))
    shim.start()
    with pytest.raises(grpc.RpcError) as exc:
        shim.runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=pod_config("o")), timeout=30)
    details = exc.value.details() or ""
    assert exc.value.code() in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.FAILED_PRECONDITION), details
    assert words in details and not details.startswith("internal error:"), details
    assert len(details.encode()) <= 4096                   # a huge output is cut to fit the trailer
    # bridge had made the veth and taken an IP: all undone
    assert shim.runtime.ListPodSandbox(pb.ListPodSandboxRequest()).items == []
    assert shim.leftovers("testnet") == {}
