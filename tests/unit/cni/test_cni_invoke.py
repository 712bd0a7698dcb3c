"""Environment, plugin lookup and output decoding (no processes)."""

from __future__ import annotations

import logging
import os

import pytest
from cni_fakes import FakeExec

import libcni

BASE = {"PATH": "/usr/bin", "CNI_COMMAND": "stale", "CNI_NETNS": "stale", "HOME": "/root"}
ARGS = (("IgnoreUnknown", "1"), ("K8S_POD_NAME", "web"))


@pytest.mark.parametrize("command", ["ADD", "DEL", "CHECK"])
def test_env_for_attachment_commands(command):
    env = libcni.build_env(command, "cid", "/ns", "eth0", ARGS, ["/a", "/b"], base=BASE)
    assert env == {"PATH": "/usr/bin", "HOME": "/root", "CNI_COMMAND": command,
                   "CNI_CONTAINERID": "cid", "CNI_NETNS": "/ns", "CNI_IFNAME": "eth0",
                   "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAME=web",
                   "CNI_PATH": "/a" + os.pathsep + "/b"}


@pytest.mark.parametrize("command", ["STATUS", "GC"])
def test_env_for_network_commands_has_no_attachment(command):
    # libcni passes an empty RuntimeConf: the variables are set, but empty.
    env = libcni.build_env(command, "cid", "/ns", "eth0", ARGS, ["/a"], base=BASE)
    assert {k: v for k, v in env.items() if k.startswith("CNI_")} == {
        "CNI_COMMAND": command, "CNI_CONTAINERID": "", "CNI_NETNS": "", "CNI_IFNAME": "",
        "CNI_ARGS": "", "CNI_PATH": "/a"}


def test_env_for_version_has_placeholders():
    env = libcni.build_env("VERSION", base={})
    assert env == {"CNI_COMMAND": "VERSION", "CNI_CONTAINERID": "", "CNI_NETNS": "dummy",
                   "CNI_IFNAME": "dummy", "CNI_ARGS": "", "CNI_PATH": "dummy"}


def test_env_inherits_os_environ_by_default():
    env = libcni.build_env("ADD", "c", "/n", "eth0")
    assert env["PATH"] == os.environ["PATH"]


def test_find_plugin(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (b / "bridge").write_text("")
    (a / "bridge").mkdir()  # a directory is not a plugin
    assert libcni.find_plugin("bridge", [str(a), str(b)]) == str(b / "bridge")
    with pytest.raises(libcni.PluginNotFound) as info:
        libcni.find_plugin("macvlan", [str(a), str(b)])
    assert str(info.value) == f'failed to find plugin "macvlan" in path [{a} {b}]'
    with pytest.raises(libcni.PluginNotFound):
        libcni.find_plugin("../b/bridge", [str(a)])


def decode(stdout: bytes, returncode: int = 0, command: str = "ADD", stderr: bytes = b"",
           version: str = "1.0.0"):
    return libcni.decode_output(libcni.ExecOutput(stdout, stderr, returncode), plugin="bridge",
                             command=command, cni_version=version)


def test_decode_error_object():
    with pytest.raises(libcni.PluginError) as info:
        decode(b'{"cniVersion":"1.0.0","code":7,"msg":"bad config","details":"no ipam"}', 1)
    err = info.value
    assert type(err) is libcni.PluginError
    assert (err.code, err.msg, err.details, err.plugin, err.command) == (
        7, "bad config", "no ipam", "bridge", "ADD")
    assert err.to_dict("1.0.0") == {"cniVersion": "1.0.0", "code": 7, "msg": "bad config",
                                    "details": "no ipam"}
    assert str(err) == 'plugin "bridge" failed on ADD (CNI error code 7): bad config: no ipam'


@pytest.mark.parametrize("stdout,returncode,command,stderr,message", [
    # libcni pkg/invoke/raw_exec.go pluginErr, word for word.
    (b"", 1, "DEL", b"", "netplugin failed with no error message: exit status 1"),
    (b"", -9, "ADD", b"", "netplugin failed with no error message: signal: killed"),
    (b"", -11, "ADD", b"", "netplugin failed with no error message: signal: segmentation fault"),
    (b"", 2, "ADD", b"line 1\nfatal: no \"bridge\"\n",
     'netplugin failed: "line 1\\nfatal: no \\"bridge\\"\\n"'),
    (b"panic: runtime error", 2, "ADD", b"",
     'netplugin failed but error parsing its diagnostic message "panic: runtime error": '
     "invalid character 'p' looking for beginning of value"),
    (b'{"code": "7", "msg": "x"}', 1, "ADD", b"",
     'netplugin failed but error parsing its diagnostic message "{\\"code\\": \\"7\\", '
     '\\"msg\\": \\"x\\"}": json: cannot unmarshal string into Go struct field Error.code of type uint'),
    (b'["code"]', 1, "ADD", b"",
     'netplugin failed but error parsing its diagnostic message "[\\"code\\"]": '
     "json: cannot unmarshal array into Go value of type types.Error"),
    (b"\xff\x01", 1, "ADD", b"", 'diagnostic message "\\xff\\x01": invalid character'),
])
def test_decode_failure_without_error_object(stdout, returncode, command, stderr, message):
    with pytest.raises(libcni.InvalidPluginOutput) as info:
        decode(stdout, returncode, command, stderr=stderr)
    err = info.value
    assert message in err.msg
    assert (err.code, err.plugin, err.command) == (0, "bridge", command)
    assert isinstance(err, libcni.PluginError)


@pytest.mark.parametrize("stdout,message", [
    (b"", "succeeded but printed no result"),
    (b"{not json", "invalid result: Expecting property name"),
    (b'{"cniVersion":"7.0.0"}', 'invalid result: unsupported CNI result version "7.0.0"'),
])
def test_decode_invalid_result(stdout, message):
    with pytest.raises(libcni.InvalidPluginOutput) as info:
        decode(stdout, 0, "ADD", stderr=b"line 1\nfatal: no bridge\n")
    assert message in info.value.msg
    assert "stderr: line 1\nfatal: no bridge" in info.value.details


def test_decode_error_object_without_msg():
    with pytest.raises(libcni.PluginError) as info:
        decode(b"{}", 3)
    assert (info.value.code, info.value.msg) == (0, "exit status 3 with an empty error message")
    with pytest.raises(libcni.PluginError) as info:
        decode(b"null", 3)
    assert (info.value.code, info.value.msg) == (0, "exit status 3 with an empty error message")


def test_decode_success():
    assert decode(b"", 0, "DEL") is None
    assert decode(b"garbage is ignored on success", 0, "CHECK") is None
    result = decode(b'{"ips":[{"address":"10.0.0.2/24"}]}', version="1.1.0")
    assert result.cni_version == "1.1.0"


def test_stderr_tail_is_bounded():
    stderr = "".join(f"line {i}\n" for i in range(100)).encode()
    with pytest.raises(libcni.InvalidPluginOutput) as info:
        decode(b"", 0, stderr=stderr)
    assert info.value.details == "stderr: " + "\n".join(f"line {i}" for i in range(90, 100))


def test_exec_plugin_logs_one_line_per_run(caplog):
    fake = FakeExec()
    fake.script("bridge", "DEL", error=(11, "busy", ""))
    env = libcni.build_env("DEL", "c0ffee", "/ns", "eth0", (), ["/bin"])
    with caplog.at_level(logging.INFO, logger="libcni.plugins"):
        with pytest.raises(libcni.PluginError):
            libcni.exec_plugin(fake, plugin="bridge", plugin_path="/bin/bridge", command="DEL",
                            stdin=b"{}", env=env, timeout=None)
        libcni.exec_plugin(fake, plugin="portmap", plugin_path="/bin/portmap", command="STATUS",
                        stdin=b"{}", env=libcni.build_env("STATUS"), timeout=None)
    lines = [r.getMessage() for r in caplog.records if r.name == "libcni.plugins"]
    assert len(lines) == 2
    assert lines[0].startswith("plugin=bridge command=DEL container=c0ffee ifname=eth0 duration_ms=")
    assert lines[0].endswith("result=error code=11")
    assert lines[1].startswith("plugin=portmap command=STATUS container=- ifname=- ")
    assert lines[1].endswith("result=ok")


def test_exec_layer_os_errors_become_cni_errors():
    fake = FakeExec()
    fake.script("bridge", "ADD", raises=PermissionError(13, "Permission denied"))
    with pytest.raises(libcni.CNIError) as info:
        libcni.exec_plugin(fake, plugin="bridge", plugin_path="/bin/bridge", command="ADD",
                        stdin=b"{}", env={"CNI_COMMAND": "ADD"}, timeout=None)
    assert info.value.code == libcni.ERR_IO_FAILURE and info.value.plugin == "bridge"


def test_error_tree():
    for cls in (libcni.PluginError, libcni.ExecTimeout, libcni.PluginNotFound, libcni.ConfigError,
                libcni.CommandNotSupported):
        assert issubclass(cls, libcni.CNIError)
    assert issubclass(libcni.InvalidPluginOutput, libcni.PluginError)
    err = libcni.CNIError(libcni.ERR_IO_FAILURE, "disk full")
    assert str(err) == "disk full" and err.details == "" and err.plugin is None
    assert err.to_json() == '{"code": 5, "msg": "disk full"}'
    assert str(libcni.ExecTimeout("bridge", "ADD", 2.5)) == (
        'plugin "bridge" failed on ADD: timed out after 2.5s and was killed')
    assert str(libcni.ConfigError("bad", "/etc/x.conf")) == "/etc/x.conf: bad"
