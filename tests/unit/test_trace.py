"""The trace a sandbox keeps (bounded, routed by sandbox id), and explain's text and
picture of one, flannel's delegate included. No root needed."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace

import pytest

import libcni
from cri_shim import trace as tr
from cri_shim.ctlprint import CtlError
from cri_shim.explain import render_text, resolve
from cri_shim.explainsvg import render_svg


def exec_record(sandbox: str, plugin: str = "bridge", stdin: bytes = b"{}", stdout: bytes = b"{}",
                ifname: str = "eth0", outcome: str = "ok", stderr: bytes = b"") -> libcni.PluginExec:
    return libcni.PluginExec(plugin, "ADD", sandbox, ifname, 0.01, outcome, f"/opt/cni/bin/{plugin}",
                             {"CNI_COMMAND": "ADD", "CNI_IFNAME": ifname, "PATH": "/bin"}, stdin, stdout,
                             time.monotonic(), stderr)


def test_steps_and_texts_are_bounded() -> None:
    t = tr.Trace("RunPodSandbox")
    for _ in range(tr.MAX_STEPS + 5):
        t.exec_step(exec_record("s", stdin=b"x" * (tr.MAX_TEXT * 3)))
    data = t.finish(ips=["10.0.0.2"])
    assert len(data["steps"]) == tr.MAX_STEPS and data["dropped_steps"] == 5
    stdin = data["steps"][0]["stdin"]
    assert len(stdin) < tr.MAX_TEXT + 100 and f"[{tr.MAX_TEXT * 2} characters cut]" in stdin
    assert data["steps"][0]["env"] == {"CNI_COMMAND": "ADD", "CNI_IFNAME": "eth0"}   # CNI_* only
    assert len(json.dumps(data)) <= tr.MAX_BYTES               # the whole trace, too
    assert data["steps"][0]["stdin"].startswith("x")           # the early steps keep their texts
    assert data["steps"][-1]["stdin"].startswith("[dropped: the trace is kept under")
    assert data["recording_ms"] >= 0


def test_binary_output_cannot_blow_the_trace_up() -> None:
    t = tr.Trace("RunPodSandbox")
    for _ in range(tr.MAX_STEPS):
        t.exec_step(exec_record("s", stdout=bytes(range(128, 256)) * 200, stderr=b"\xff" * 9000))
    data = t.finish()
    assert len(json.dumps(data)) <= tr.MAX_BYTES
    assert "\\x80" in data["steps"][0]["output"]               # not UTF-8: kept as \xNN


def test_recorder_routes_execs_to_their_sandbox_only() -> None:
    r = tr.Recorder()
    a, b = r.begin("a" * 64, tr.Trace("RunPodSandbox", networks={"eth0": "podnet"})), tr.Trace("x")
    libcni.plugins._observers[-1](exec_record("a" * 64))      # as libcni calls it
    libcni.plugins._observers[-1](exec_record("b" * 64))      # no trace open for b
    r.end("a" * 64)
    libcni.plugins._observers[-1](exec_record("a" * 64))      # after the end: not kept
    steps = a.finish()["steps"]
    assert len(steps) == 1 and steps[0]["network"] == "podnet" and not b.finish()["steps"]
    del r, a
    import gc
    gc.collect()
    before = len(libcni.plugins._observers)
    libcni.plugins._observers[-1](exec_record("c" * 64))      # a dead recorder unhooks itself
    assert len(libcni.plugins._observers) == before - 1


def _flannel_report() -> dict:
    t = tr.Trace("RunPodSandbox", {"file": "/etc/cri-shim/config.toml", "conf_dir": "/etc/cni/net.d",
                                   "max_conf_num": 1, "bin_dirs": ["/opt/cni/bin"],
                                   "files": [{"path": "/etc/cni/net.d/10-flannel.conflist",
                                              "status": "chosen", "network": "cbr0"}]},
                 networks={"eth0": "cbr0"})
    flannel_conf = {"type": "flannel", "name": "cbr0", "delegate": {"hairpinMode": True}}
    result = {"cniVersion": "1.0.0", "ips": [{"address": "10.244.1.5/24", "gateway": "10.244.1.1"}]}
    delegate = {"type": "bridge", "name": "cbr0", "ipam": {"type": "host-local"}}
    t.exec_step(exec_record("s" * 64, "flannel", json.dumps(flannel_conf).encode(), json.dumps(result).encode(),
                            stderr=b"delegateAdd: netconf sent to delegate plugin:\n" + json.dumps(delegate).encode()))
    return {"sandbox": {"id": "s" * 64, "name": "web", "namespace": "default", "attempt": 0, "state": "READY",
                        "ip": "10.244.1.5", "additional_ips": [], "netns": "/run/netns/x", "host_network": False},
            "trace": {"run": t.finish(ips=["10.244.1.5"])},
            "now": {"flannel": {"subnet_file": "/run/flannel/subnet.env",
                                "subnet_env": {"FLANNEL_NETWORK": "10.244.0.0/16", "FLANNEL_SUBNET": "10.244.1.1/24",
                                               "FLANNEL_MTU": "1450", "FLANNEL_IPMASQ": "true"},
                                "delegate": {"path": "/var/lib/cni/flannel/" + "s" * 64,
                                             "config": {"type": "bridge", "bridge": "cni0"}},
                                "overlay_routes": [{"dst": "10.244.2.0/24", "gateway": "10.244.2.0",
                                                    "dev": "flannel.1", "flags": ["onlink"]}]},
                    "node_bridge": [{"bridge": "cni0", "address": "10.244.1.1/24"}]}}


def test_text_tells_flannels_part() -> None:
    text = render_text(_flannel_report())
    for words in ("10-flannel.conflist", 'chosen: network "cbr0"', "flannel ADD eth0, network cbr0: ok",
                  "this node's podCIDR lease 10.244.1.1/24 of 10.244.0.0/16, MTU 1450",
                  "delegated to bridge with the config saved in /var/lib/cni/flannel/",
                  "overlay route 10.244.2.0/24 via 10.244.2.0 dev flannel.1 onlink (another node's podCIDR)",
                  "on the node: bridge cni0 10.244.1.1/24", "the pod's IP: 10.244.1.5",
                  'delegate (bridge) stdin {"type":"bridge","name":"cbr0","ipam":{"type":"host-local"}}'):
        assert words in text, words


def test_picture_draws_kubelet_to_the_ip_through_flannels_delegate() -> None:
    svg = render_svg(_flannel_report())
    assert svg.startswith("<svg") and svg.rstrip().endswith("</svg>")
    order = [svg.index(f">{name}<") for name in ("kubelet", "cri-shim", "flannel", "bridge (delegate)",
                                                  "IPAM (host-local)")]
    assert order == sorted(order)                           # the lifelines, left to right
    assert "IP 10.244.1.5" in svg and "10.244.1.5/24" in svg
    import xml.dom.minidom
    xml.dom.minidom.parseString(svg)                        # well-formed


def _client(*items: tuple[str, str, str, int]) -> SimpleNamespace:
    sandboxes = [SimpleNamespace(id=i, metadata=SimpleNamespace(name=n, namespace=ns, attempt=a), created_at=a)
                 for i, n, ns, a in items]
    return SimpleNamespace(ListPodSandbox=lambda req: SimpleNamespace(items=sandboxes))


def test_resolve_by_id_prefix_name_and_namespace() -> None:
    c = _client(("abc1" + "0" * 60, "web", "default", 0), ("abc2" + "0" * 60, "web", "default", 1),
                ("def0" + "0" * 60, "db", "prod", 0), ("fed0" + "0" * 60, "db", "dev", 0))
    assert resolve(c, "def0").startswith("def0")
    assert resolve(c, "web").startswith("abc2")             # the newest attempt
    assert resolve(c, "prod/db").startswith("def0")
    with pytest.raises(CtlError, match="in several namespaces"):
        resolve(c, "db")
    with pytest.raises(CtlError, match="the start of 2 sandbox ids"):
        resolve(c, "abc")
    with pytest.raises(CtlError, match='no sandbox with id, id prefix or pod name "zzz"'):
        resolve(c, "zzz")


def test_a_name_wins_over_an_id_prefix() -> None:
    c = _client(("cafe" + "1" * 60, "web", "default", 0), ("dddd" + "0" * 60, "cafe", "default", 0))
    assert resolve(c, "cafe").startswith("dddd")


def test_malformed_traces_are_shown_not_crashed_on() -> None:
    report = _flannel_report()
    report["trace"]["run"]["steps"] += [{"kind": "exec"}, "not a step", {"kind": "netns"},
                                        {"kind": "exec", "stdin": json.dumps({"type": "flannel",
                                                                              "delegate": "nope"})}]
    report["trace"]["stop"] = {"steps": [{}]}
    text = render_text(report)
    assert "? ? : ? in 0.0 ms" in text                         # an exec step with nothing in it
    assert render_svg(report).startswith("<svg")
    old = dict(report, trace={})
    assert "No trace of its RunPodSandbox" in render_text(old)
