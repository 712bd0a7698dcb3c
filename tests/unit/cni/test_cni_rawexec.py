"""Real processes: RawExec and CNIConfig running the recorder test plugin (and, when
installed, a real plugin's VERSION). No root, no namespaces: the recorder touches
nothing but its log file."""

from __future__ import annotations

import errno
import json
import logging
import os
import stat
import threading
import time

import pytest
from cni_fakes import RECORDER, REQUIRE_ALL

import libcni

DEBIAN_PLUGINS = "/usr/lib/cni"


def run(conf: dict, command: str = "ADD", timeout: float | None = 10, **kw) -> libcni.ExecOutput:
    env = libcni.build_env(command, "cid", "/ns", "eth0", (("A", "1"),), ["/x"])
    return libcni.RawExec(**kw).run(RECORDER, json.dumps(conf).encode(), env, timeout)


def records(path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_rawexec_passes_stdin_and_env_exactly(tmp_path):
    log = tmp_path / "log"
    conf = {"cniVersion": "1.0.0", "recordTo": str(log), "result": {"cniVersion": "1.0.0"}}
    out = run(conf)
    assert (out.returncode, json.loads(out.stdout)) == (0, {"cniVersion": "1.0.0"})
    [rec] = records(log)
    assert rec["command"] == "ADD"
    assert rec["env"] == {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "cid", "CNI_NETNS": "/ns",
                          "CNI_IFNAME": "eth0", "CNI_ARGS": "A=1", "CNI_PATH": "/x"}
    assert json.loads(rec["stdin"]) == conf


def decode(conf: dict, command: str = "ADD"):
    out = run(conf, command)
    return libcni.decode_output(out, plugin="recorder", command=command, cni_version="1.0.0")


def test_real_error_object():
    with pytest.raises(libcni.PluginError) as info:
        decode({"error": {"code": 11, "msg": "try again", "details": "lock held"}})
    assert (info.value.code, info.value.msg, info.value.details) == (11, "try again", "lock held")


def test_real_garbage_and_empty_output():
    with pytest.raises(libcni.InvalidPluginOutput, match="invalid result"):
        decode({"garbage": "hello"})
    with pytest.raises(libcni.InvalidPluginOutput) as info:
        decode({"garbage": "", "exitCode": 3, "stderr": "bridge: cannot create\n"}, "DEL")
    assert info.value.msg == 'netplugin failed: "bridge: cannot create\\n"'
    with pytest.raises(libcni.InvalidPluginOutput, match="error parsing its diagnostic message"):
        decode({"garbage": "Traceback...", "exitCode": 1})


def test_stderr_is_logged_at_debug(caplog):
    env = libcni.build_env("DEL", "cid", "/ns", "eth0", (), ["/x"])
    with caplog.at_level(logging.DEBUG, logger="libcni.plugins"):
        libcni.exec_plugin(libcni.RawExec(), plugin="recorder", plugin_path=RECORDER,
                           command="DEL", stdin=json.dumps({"stderr": "one\ntwo\n"}).encode(),
                           env=env, timeout=10)
    assert "plugin recorder stderr: two" in [r.getMessage() for r in caplog.records]


def test_timeout_kills_the_plugin_and_its_children(tmp_path):
    pidfile = tmp_path / "child.pid"
    script = tmp_path / "slow"
    script.write_text("#!/bin/sh\nsleep 60 &\necho $! > %s\nwait\n" % pidfile)
    script.chmod(0o755)
    start = time.monotonic()
    with pytest.raises(libcni.ExecTimeout) as info:
        libcni.RawExec().run(str(script), b"{}", {"CNI_COMMAND": "ADD", "PATH": os.environ["PATH"]}, 0.5)
    assert time.monotonic() - start < 10
    assert (info.value.plugin, info.value.command, info.value.code) == ("slow", "ADD", libcni.ERR_TRY_AGAIN_LATER)
    child = int(pidfile.read_text())
    for _ in range(100):  # the grandchild got SIGKILL with the group; wait for it to go
        try:
            with open(f"/proc/{child}/stat") as f:
                if f.read().split(") ")[1].startswith("Z"):
                    break
        except FileNotFoundError:
            break
        time.sleep(0.05)
    else:
        pytest.fail("the plugin's child survived the timeout")


def test_text_file_busy_is_retried(tmp_path):
    script = tmp_path / "busy"
    fd = os.open(script, os.O_WRONLY | os.O_CREAT, 0o755)
    os.write(fd, b"#!/bin/sh\necho '{}'\n")
    try:
        libcni.RawExec(busy_retries=0).run(str(script), b"", {}, 5)
    except libcni.CNIError as exc:
        if not isinstance(exc.__cause__, OSError) or exc.__cause__.errno != errno.ETXTBSY:
            raise
    else:
        os.close(fd)
        if REQUIRE_ALL:
            pytest.fail("exec of a file open for writing did not fail with ETXTBSY")
        pytest.skip("this filesystem does not report ETXTBSY")
    timer = threading.Timer(0.3, os.close, [fd])
    timer.start()
    try:
        out = libcni.RawExec(busy_retries=50, busy_retry_delay=0.05).run(str(script), b"", {}, 5)
    finally:
        timer.join()
    assert out.stdout == b"{}\n"


def test_exec_failures(tmp_path):
    not_exec = tmp_path / "plain"
    not_exec.write_text("#!/bin/sh\n")
    with pytest.raises(libcni.CNIError) as info:
        libcni.RawExec().run(str(not_exec), b"", {}, 5)
    assert info.value.code == libcni.ERR_IO_FAILURE and "Permission denied" in info.value.msg
    with pytest.raises(libcni.PluginNotFound):
        libcni.RawExec().run(str(tmp_path / "gone"), b"", {}, 5)


# --- CNIConfig end to end -----------------------------------------------------------

def test_chain_through_real_processes(recorder_bin, tmp_path):
    log = str(tmp_path / "log")
    first = {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "sandbox": "/ns"}],
             "ips": [{"interface": 0, "address": "10.22.0.5/16", "gateway": "10.22.0.1"}]}
    net = libcni.conflist_from_bytes(json.dumps({
        "cniVersion": "1.0.0", "name": "chain",
        "plugins": [{"type": "a", "recordTo": log, "result": first},
                    {"type": "b", "recordTo": log, "capabilities": {"portMappings": True}},
                    {"type": "c", "recordTo": log, "on": {"DEL": {"error": {"code": 7, "msg": "c"}}}}],
    }).encode())
    cache = str(tmp_path / "cache")
    config = libcni.CNIConfig([str(tmp_path / "nowhere"), recorder_bin], cache_dir=cache, timeout=10)
    rt = libcni.RuntimeConf("pod1", "/ns", "eth0", (("IgnoreUnknown", "1"),),
                         {"portMappings": [{"hostPort": 80, "containerPort": 8080, "protocol": "tcp"}]})

    result = config.add_network_list(net, rt)
    assert [str(ip.address.ip) for ip in result.sandbox_ips("eth0")] == ["10.22.0.5"]
    config.check_network_list(net, rt)
    with pytest.raises(libcni.PluginError) as info:
        config.del_network_list(net, rt)
    assert info.value.plugin == "c"

    recs = records(log)
    assert [(json.loads(r["stdin"])["type"], r["command"]) for r in recs] == [
        ("a", "ADD"), ("b", "ADD"), ("c", "ADD"), ("a", "CHECK"), ("b", "CHECK"), ("c", "CHECK"),
        ("c", "DEL"), ("b", "DEL"), ("a", "DEL")]
    assert recs[0]["env"]["CNI_PATH"] == os.pathsep.join([str(tmp_path / "nowhere"), recorder_bin])
    assert recs[1]["env"]["CNI_ARGS"] == "IgnoreUnknown=1"
    b_add = json.loads(recs[1]["stdin"])
    assert b_add["prevResult"] == first
    assert b_add["runtimeConfig"] == {"portMappings": [{"hostPort": 80, "containerPort": 8080,
                                                        "protocol": "tcp"}]}
    assert json.loads(recs[2]["stdin"])["prevResult"] == first  # b passed it through
    assert all(json.loads(r["stdin"])["prevResult"] == first for r in recs[3:])
    # The cache file survives the failed DEL, 0600.
    path = os.path.join(cache, "results", "chain-pod1-eth0")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_version_through_a_real_process(recorder_bin, monkeypatch):
    config = libcni.CNIConfig([recorder_bin])
    assert config.get_version_info("a").supported_versions == tuple(libcni.SUPPORTED_VERSIONS)
    monkeypatch.setenv("RECORDER_VERSIONS", "unknown")
    assert config.get_version_info("a") == libcni.PluginInfo("0.1.0", ("0.1.0",))
    monkeypatch.setenv("RECORDER_VERSIONS", "0.3.1,0.4.0")
    net = libcni.conflist_from_bytes(b'{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"a"}]}')
    with pytest.raises(libcni.CNIError, match='does not support config version "1.0.0"'):
        config.validate_network_list(net)


def test_real_bridge_version():
    if not os.path.exists(os.path.join(DEBIAN_PLUGINS, "bridge")):
        if REQUIRE_ALL:
            pytest.fail(f"Debian's CNI plugins are not in {DEBIAN_PLUGINS}")
        pytest.skip("Debian's CNI plugins are not installed")
    config = libcni.CNIConfig([DEBIAN_PLUGINS])
    info = config.get_version_info("bridge")
    assert {"0.3.1", "0.4.0", "1.0.0"} <= set(info.supported_versions)
    net = libcni.conflist_from_bytes(b'{"cniVersion":"1.0.0","name":"n","plugins":'
                                  b'[{"type":"bridge"},{"type":"portmap"},{"type":"loopback"}]}')
    config.validate_network_list(net)


def test_caller_deadline_kills_a_real_plugin(tmp_path):
    """The chain runs under the caller's deadline (libcni's ctx): a plugin still
    running at it is killed, well before its own timeout or its sleep."""
    plugin_dir = tmp_path / "bin"
    plugin_dir.mkdir()
    os.symlink(RECORDER, plugin_dir / "recorder")
    net = libcni.conflist_from_bytes(json.dumps({"cniVersion": "1.0.0", "name": "slow", "plugins": [
        {"type": "recorder", "sleep": 30}]}).encode())
    config = libcni.CNIConfig([str(plugin_dir)], cache_dir=str(tmp_path / "cache"), timeout=60)
    start = time.monotonic()
    with pytest.raises(libcni.DeadlineExceeded) as info:
        config.add_network_list(net, libcni.RuntimeConf("cid", "/ns", "eth0"),
                                deadline=time.monotonic() + 0.5)
    assert time.monotonic() - start < 5
    assert info.value.msg.startswith("killed after 0.5") and info.value.plugin == "recorder"
