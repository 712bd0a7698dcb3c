"""flannel ADD/DEL/CHECK/VERSION: the delegate run through the Exec seam (a fake)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from ipaddress import ip_address, ip_interface, ip_network
from pathlib import Path

import pytest
from flannel_harness import BIN_DIR, CONFLIST, Flannel

import libcni
from cni.version import SUPPORTED_VERSIONS
from flannelcni import plugin
from libcni.testing import Call, FakeExec

ALL_VERSIONS = list(SUPPORTED_VERSIONS)

REPO = Path(__file__).resolve().parents[3]
BRIDGE_RESULT = libcni.Result(
    "1.0.0",
    interfaces=(libcni.Interface("cni0", "aa:bb:cc:00:00:01"),
                libcni.Interface("veth1", "aa:bb:cc:00:00:02"),
                libcni.Interface("eth0", "0a:58:0a:f4:01:02", "/var/run/netns/cni-1")),
    ips=(libcni.IPConfig(ip_interface("10.244.1.2/24"), ip_address("10.244.1.1"), 2),),
    routes=(libcni.Route(ip_network("10.244.0.0/16")), libcni.Route(ip_network("0.0.0.0/0"),
                                                              ip_address("10.244.1.1"))),
    dns=libcni.DNS())


def test_add_saves_before_running_the_delegate_with_the_same_env(flannel: Flannel) -> None:
    seen: list[bytes] = []

    def bridge(call: Call) -> libcni.ExecOutput:
        seen.append(flannel.saved().read_bytes())  # already on disk when the delegate runs
        return libcni.ExecOutput(json.dumps(BRIDGE_RESULT.to_dict("0.3.1")).encode())

    flannel.exec.scripts[("bridge", "ADD")] = bridge
    out = flannel.run("ADD", flannel.conf())
    assert out.rc == 0
    (call,) = flannel.exec.calls
    assert seen == [call.stdin_bytes]
    assert call.path == f"{BIN_DIR}/bridge"  # the first CNI_PATH dir
    assert call.env == flannel.env("ADD")  # this process's environment, unchanged
    assert call.timeout is None


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_result_is_the_delegates_in_the_conf_version(flannel: Flannel, version: str) -> None:
    flannel.exec.script("bridge", "ADD", result=BRIDGE_RESULT.to_dict(version))
    out = flannel.run("ADD", flannel.conf(version))
    assert out.rc == 0
    assert flannel.exec.calls[0].stdin["cniVersion"] == version
    assert out.json == BRIDGE_RESULT.convert(version).to_dict(version)
    assert out.stdout.startswith(b'{\n    "cniVersion": "' + version.encode())


def test_delegate_error_passes_through_and_file_stays(flannel: Flannel) -> None:
    flannel.exec.script("bridge", "ADD", error=(11, "failed to allocate", "range full"))
    out = flannel.run("ADD", flannel.conf())
    assert out.rc == 1
    assert out.json == {"code": 11, "msg": "failed to allocate",
                        "details": "range full"}
    assert flannel.saved().exists()  # as flannel: the runtime's DEL cleans up


def test_delegate_not_found(flannel: Flannel) -> None:
    flannel.exec = FakeExec(available=[])
    out = flannel.run("ADD", flannel.conf(), CNI_PATH="/nowhere")
    assert out.json == {"code": 999,
                        "msg": 'failed to delegate add: failed to find plugin "bridge" in path '
                               '[/nowhere]'}


def test_del_without_saved_file_succeeds_without_the_delegate(flannel: Flannel) -> None:
    out = flannel.run("DEL", flannel.conf(), CNI_NETNS="")
    assert (out.rc, out.stdout) == (0, b"")
    assert flannel.exec.calls == []


def test_del_runs_the_saved_config_and_removes_it(flannel: Flannel) -> None:
    assert flannel.run("ADD", flannel.conf()).rc == 0
    saved = flannel.saved().read_bytes()
    # An edited conf does not matter: DEL uses what ADD saved.
    out = flannel.run("DEL", flannel.conf(delegate={"type": "ipvlan"}))
    assert (out.rc, out.stdout) == (0, b"")
    add, delete = flannel.exec.calls
    assert (delete.plugin, delete.command, delete.stdin_bytes) == ("bridge", "DEL", saved)
    assert delete.env == flannel.env("DEL")
    assert not flannel.saved().exists()
    assert flannel.run("DEL", flannel.conf()).rc == 0  # DEL again: nothing to do
    assert len(flannel.exec.calls) == 2


def test_failed_del_keeps_the_file_for_a_retry(flannel: Flannel) -> None:
    assert flannel.run("ADD", flannel.conf()).rc == 0
    flannel.exec.script("bridge", "DEL", error=(11, "busy", ""))
    out = flannel.run("DEL", flannel.conf())
    assert out.rc == 1 and out.json == {"code": 11, "msg": "busy"}
    assert flannel.saved().exists()
    del flannel.exec.scripts[("bridge", "DEL")]
    assert flannel.run("DEL", flannel.conf()).rc == 0
    assert not flannel.saved().exists()


def test_del_with_unreadable_saved_config_gives_up_quietly(flannel: Flannel) -> None:
    flannel.data_dir.mkdir()
    flannel.saved().write_text("{garbage")
    out = flannel.run("DEL", flannel.conf())
    assert (out.rc, out.stdout) == (0, b"")
    assert out.stderr.startswith("failed to parse netconf: ") and not out.stderr.endswith("\n")
    assert flannel.exec.calls == []


@pytest.mark.parametrize("saved,error", [
    (b"[1]", "json: cannot unmarshal array into Go value of type types.PluginConf"),
    (b'{"type":5}', "json: cannot unmarshal number into Go struct field PluginConf.type of type string"),
])
def test_del_with_saved_config_of_wrong_shape(flannel: Flannel, saved: bytes, error: str) -> None:
    flannel.data_dir.mkdir()
    flannel.saved().write_bytes(saved)
    out = flannel.run("DEL", flannel.conf())
    assert (out.rc, out.stdout, out.stderr) == (0, b"", f"failed to parse netconf: {error}")


def test_add_writes_what_it_sends_the_delegate_and_the_delegates_stderr(flannel: Flannel) -> None:
    flannel.exec.script("bridge", "ADD", result=BRIDGE_RESULT.to_dict("0.3.1"),
                        stderr=b"bridge says hi\n")
    out = flannel.run("ADD", flannel.conf())
    assert out.rc == 0
    sent = flannel.exec.calls[0].stdin_bytes.decode()
    assert out.stderr == f"delegateAdd: netconf sent to delegate plugin:\n{sent}bridge says hi\n"


def test_about_names_the_upstream_release(flannel: Flannel) -> None:
    out = flannel.run("", b"", CNI_COMMAND="")
    assert out.rc == 0
    first, second = out.stderr.splitlines()
    assert first.startswith("CNI Plugin flannel version v1.9.1 (linux/") and first.endswith(" commit cri-shim")
    assert second == "CNI protocol versions supported: 0.1.0, 0.2.0, 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0"


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_check_does_nothing(flannel: Flannel, version: str) -> None:
    out = flannel.run("CHECK", flannel.conf(version))
    assert flannel.exec.calls == []
    if libcni.version_ge(version, "0.4.0"):
        assert (out.rc, out.stdout) == (0, b"")
    else:
        assert out.json["msg"] == "config version does not allow CHECK"


def test_version(flannel: Flannel) -> None:
    out = flannel.run("VERSION", b'{"cniVersion":"0.3.1"}')  # skel ignores stdin
    assert out.stdout == (b'{"cniVersion":"1.1.0","supportedVersions":["0.1.0","0.2.0","0.3.0",'
                          b'"0.3.1","0.4.0","1.0.0","1.1.0"]}\n')


def test_through_libcni_with_kube_flannel_conflist(flannel: Flannel, tmp_path: Path) -> None:
    """Our libcni runs the conflist; "flannel" is this plugin, in-process."""
    def run_flannel(call: Call) -> libcni.ExecOutput:
        out, err = io.BytesIO(), io.StringIO()
        rc = plugin.run(exec_=flannel.exec, environ=call.env, stdin=call.stdin_bytes,
                        stdout=out, stderr=err)
        return libcni.ExecOutput(out.getvalue(), err.getvalue().encode(), rc)

    runtime = FakeExec()
    runtime.scripts[("flannel", "ADD")] = runtime.scripts[("flannel", "DEL")] = run_flannel
    conf = dict(CONFLIST, plugins=[flannel.conf(None), CONFLIST["plugins"][1]])
    net = libcni.conflist_from_bytes(json.dumps(conf).encode())
    config = libcni.CNIConfig([BIN_DIR], exec=runtime, cache_dir=str(tmp_path / "cache"))
    rt = libcni.RuntimeConf("ctr1", "/var/run/netns/cni-1", "eth0")
    flannel.exec.script("bridge", "ADD", result=BRIDGE_RESULT.to_dict("0.3.1"))

    result = config.add_network_list(net, rt)

    assert result.to_dict("0.3.1") == BRIDGE_RESULT.to_dict("0.3.1")
    assert runtime.commands() == [("flannel", "ADD"), ("portmap", "ADD")]
    assert runtime.calls[1].stdin["prevResult"] == BRIDGE_RESULT.to_dict("0.3.1")
    assert flannel.exec.calls[0].stdin["name"] == "cbr0"
    config.del_network_list(net, rt)
    assert runtime.commands()[2:] == [("portmap", "DEL"), ("flannel", "DEL")]
    assert flannel.exec.commands() == [("bridge", "ADD"), ("bridge", "DEL")]
    assert not flannel.saved().exists()


def test_executable_answers_version_and_imports_nothing_heavy() -> None:
    env = dict(os.environ, CNI_COMMAND="VERSION", PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "flannelcni.plugin"], env=env,
                         input=b"", capture_output=True, check=True, cwd="/")
    assert json.loads(out.stdout)["cniVersion"] == "1.1.0"
    imported = {line.split("|")[-1].strip() for line in out.stderr.decode().splitlines()
                if line.startswith("import time:")}
    assert {"cni.skel", "flannelcni"} <= imported   # the plugin runs as __main__
    # VERSION is skel's own answer: no command module, no subnet.env reader.
    assert not {"flannelcni.add", "flannelcni.delete", "flannelcni.subnetenv"} & imported
    for heavy in ("grpc", "google.protobuf", "yaml", "pyroute2", "cri_shim"):
        assert not any(m == heavy or m.startswith(heavy + ".") for m in imported), heavy
