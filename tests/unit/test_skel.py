"""cni.skel: libcni's pkg/skel behaviour, driven in-process (no subprocess, no root)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from ipaddress import ip_interface
from typing import Any

import pytest

import libcni
from cni.skel import CmdArgs, plugin_main

ALL_VERSIONS = list(libcni.SUPPORTED_VERSIONS)
ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "ctr1", "CNI_NETNS": "/var/run/netns/pod",
       "CNI_IFNAME": "eth0", "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAME=p", "CNI_PATH": "/opt/cni/bin"}


class Plugin:
    """Command functions that record their calls and answer as told."""

    def __init__(self, answer: Any = None) -> None:
        self.calls: list[tuple[str, CmdArgs]] = []
        self.answer = answer

    def func(self, name: str):
        def call(args: CmdArgs) -> Any:
            self.calls.append((name, args))
            if isinstance(self.answer, BaseException):
                raise self.answer
            return self.answer
        return call


def run(env: dict[str, str], conf: dict[str, Any] | bytes | None = None, *,
        plugin: Plugin | None = None, versions: list[str] | None = None, about: str = "",
        with_all: bool = True) -> tuple[int, bytes, str, Plugin]:
    plugin = plugin or Plugin()
    stdin = conf if isinstance(conf, bytes) else json.dumps(conf or {}).encode()
    out, err = io.BytesIO(), io.StringIO()
    funcs = [plugin.func("ADD"), plugin.func("DEL")]
    kwargs = {}
    if with_all:
        kwargs = {"check": plugin.func("CHECK"), "status": plugin.func("STATUS"),
                  "gc": plugin.func("GC")}
    rc = plugin_main(*funcs, **kwargs, supported_versions=versions or ALL_VERSIONS,
                     about=about, environ=env, stdin=stdin, stdout=out, stderr=err)
    return rc, out.getvalue(), err.getvalue(), plugin


def conf(version: str = "1.0.0", **extra: Any) -> dict[str, Any]:
    return {"cniVersion": version, "name": "net1", "type": "test", **extra}


def error_of(stdout: bytes) -> dict[str, Any]:
    return json.loads(stdout)


# --- environment ---------------------------------------------------------------------

@pytest.mark.parametrize("command,missing", [
    ("ADD", "CNI_CONTAINERID,CNI_NETNS,CNI_IFNAME,CNI_PATH"),
    ("CHECK", "CNI_CONTAINERID,CNI_NETNS,CNI_IFNAME,CNI_PATH"),
    ("DEL", "CNI_CONTAINERID,CNI_IFNAME,CNI_PATH"),
    ("GC", "CNI_PATH"),
    ("STATUS", "CNI_PATH"),
    ("", "CNI_COMMAND"),
])
def test_missing_env_per_command(command: str, missing: str) -> None:
    rc, out, _, plugin = run({"CNI_COMMAND": command} if command else {}, conf("0.4.0"))
    assert rc == 1
    assert error_of(out) == {"code": 4, "msg": f"required env variables [{missing}] missing"}
    assert plugin.calls == []


def test_del_needs_no_netns_and_gets_empty_one() -> None:
    env = {k: v for k, v in ENV.items() if k != "CNI_NETNS"} | {"CNI_COMMAND": "DEL"}
    rc, out, _, plugin = run(env, conf())
    assert (rc, out) == (0, b"")
    assert plugin.calls[0][1].netns == ""


def test_about_is_printed_when_no_command() -> None:
    rc, out, err, _ = run({}, conf(), about="CNI plugin test v1", versions=["0.4.0", "1.0.0"])
    assert (rc, out) == (0, b"")
    assert err == "CNI plugin test v1\nCNI protocol versions supported: 0.4.0, 1.0.0\n"


@pytest.mark.parametrize("var,value,code,msg,details", [
    ("CNI_CONTAINERID", "-bad", 4, "invalid characters in containerID", "-bad"),
    ("CNI_CONTAINERID", "a/b", 4, "invalid characters in containerID", "a/b"),
    ("CNI_IFNAME", "x" * 16, 4, "interface name is too long",
     "interface name should be less than 16 characters"),
    ("CNI_IFNAME", "..", 4, "interface name is . or ..", None),
    ("CNI_IFNAME", "eth 0", 4, "interface name contains / or : or whitespace characters", None),
    ("CNI_IFNAME", "eth:0", 4, "interface name contains / or : or whitespace characters", None),
])
def test_invalid_attachment_env(var: str, value: str, code: int, msg: str,
                                details: str | None) -> None:
    rc, out, _, plugin = run(ENV | {var: value}, conf())
    expected = {"code": code, "msg": msg}
    if details:
        expected["details"] = details
    assert rc == 1 and error_of(out) == expected and plugin.calls == []


def test_unknown_command() -> None:
    rc, out, _, _ = run(ENV | {"CNI_COMMAND": "FOO"}, conf())
    assert rc == 1 and error_of(out)["code"] == 4
    assert error_of(out)["msg"] == "unknown CNI_COMMAND: FOO"


# --- config --------------------------------------------------------------------------

@pytest.mark.parametrize("stdin,code,msg", [
    (b"", 6, "error unmarshall network config: unexpected end of JSON input"),
    (b"{not json", 6, None),
    (b'{"cniVersion":"1.0.0","name":5}', 6, "error unmarshall network config: json: cannot "
     "unmarshal number into Go struct field .name of type string"),
    (b'{"cniVersion":"1.0.0"}', 7, "missing network name"),
    (b'{"cniVersion":"1.0.0","name":"bad name"}', 7, "invalid characters found in network name"),
    (b'{"cniVersion":1,"name":"n"}', 6, "decoding version from network config: json: cannot "
     "unmarshal number into Go struct field .cniVersion of type string"),
])
def test_bad_config(stdin: bytes, code: int, msg: str | None) -> None:
    rc, out, _, plugin = run(ENV, stdin)
    assert rc == 1 and error_of(out)["code"] == code and plugin.calls == []
    if msg:
        assert error_of(out)["msg"] == msg


def test_config_keys_match_case_insensitively_like_go() -> None:
    rc, _, _, plugin = run(ENV, b'{"CNIVersion":"0.4.0","Name":"net1"}')
    assert rc == 0 and len(plugin.calls) == 1


@pytest.mark.parametrize("command", ["ADD", "DEL"])
def test_version_mismatch(command: str) -> None:
    rc, out, _, plugin = run(ENV | {"CNI_COMMAND": command}, conf("2.0.0"),
                             versions=["0.3.1", "1.0.0"])
    assert rc == 1 and plugin.calls == []
    assert error_of(out) == {"code": 1, "msg": "incompatible CNI versions",
                             "details": 'config is "2.0.0", plugin supports ["0.3.1" "1.0.0"]'}


def test_missing_cni_version_means_0_1_0() -> None:
    rc, out, _, _ = run(ENV, {"name": "n"}, versions=["1.0.0"])
    assert error_of(out)["details"] == 'config is "0.1.0", plugin supports ["1.0.0"]'


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_check_floor(version: str) -> None:
    rc, out, _, plugin = run(ENV | {"CNI_COMMAND": "CHECK"}, conf(version))
    if libcni.version_ge(version, "0.4.0"):
        assert (rc, out) == (0, b"") and plugin.calls[0][0] == "CHECK"
    else:
        assert error_of(out)["msg"] == "config version does not allow CHECK"
        assert error_of(out)["code"] == 1 and plugin.calls == []


@pytest.mark.parametrize("command", ["GC", "STATUS"])
@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_gc_status_floor(command: str, version: str) -> None:
    rc, out, _, plugin = run({"CNI_COMMAND": command, "CNI_PATH": "/bin"}, conf(version))
    if version == "1.1.0":
        assert (rc, out) == (0, b"") and plugin.calls[0][0] == command
    else:
        assert error_of(out)["msg"] == f"config version does not allow {command}"


def test_plugin_version_does_not_allow_check() -> None:
    rc, out, _, _ = run(ENV | {"CNI_COMMAND": "CHECK"}, conf("1.0.0"), versions=["0.4.0"])
    assert error_of(out)["msg"] == "plugin version does not allow CHECK"


def test_absent_optional_commands_succeed_silently() -> None:
    for command in ("CHECK", "GC", "STATUS"):
        rc, out, _, plugin = run(ENV | {"CNI_COMMAND": command}, conf("1.1.0"), with_all=False)
        assert (rc, out, plugin.calls) == (0, b"", [])


# --- VERSION -------------------------------------------------------------------------

def test_version_needs_no_other_env_and_answers_the_library_version() -> None:
    # skel's PluginInfo.Encode: cniVersion is version.Current() whatever stdin says.
    rc, out, _, plugin = run({"CNI_COMMAND": "VERSION"}, {"cniVersion": "0.4.0"})
    assert rc == 0 and plugin.calls == []
    assert out == (b'{"cniVersion":"1.1.0","supportedVersions":["0.1.0","0.2.0","0.3.0",'
                   b'"0.3.1","0.4.0","1.0.0","1.1.0"]}\n')


@pytest.mark.parametrize("stdin", [b"", b"garbage", b'{"cniVersion":"9.9.9"}'])
def test_version_ignores_stdin(stdin: bytes) -> None:
    rc, out, _, _ = run({"CNI_COMMAND": "VERSION"}, stdin, versions=["0.3.1", "1.0.0"])
    assert rc == 0
    assert out == b'{"cniVersion":"1.1.0","supportedVersions":["0.3.1","1.0.0"]}\n'


# --- calling the command -------------------------------------------------------------

@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_add_gets_cmd_args_and_result_is_printed_in_its_version(version: str) -> None:
    result = libcni.Result(version, interfaces=(libcni.Interface("eth0", sandbox="/ns"),),
                        ips=(libcni.IPConfig(ip_interface("10.0.0.2/24"), interface=0),))
    stdin = json.dumps(conf(version)).encode()
    rc, out, _, plugin = run(ENV, stdin, plugin=Plugin(result))
    assert rc == 0
    assert plugin.calls == [("ADD", CmdArgs("ctr1", "/var/run/netns/pod", "eth0",
                                            "IgnoreUnknown=1;K8S_POD_NAME=p", "/opt/cni/bin",
                                            stdin))]
    assert json.loads(out) == result.to_dict(version)
    # types.PrettyPrint: four-space indent; 0.x in struct order, 1.x sorted.
    assert out.startswith(b'{\n    "cniVersion"')
    keys = list(json.loads(out))
    assert keys == (sorted(keys) if version >= "1" else
                    [k for k in ("cniVersion", "interfaces", "ip4", "ips", "routes", "dns") if k in keys])


@pytest.mark.parametrize("answer,expected", [
    ({"cniVersion": "1.0.0", "ips": []}, b'{\n    "cniVersion": "1.0.0",\n    "ips": []\n}'),
    (b"raw bytes", b"raw bytes"),
    (None, b""),
])
def test_other_answers(answer: Any, expected: bytes) -> None:
    rc, out, _, _ = run(ENV, conf(), plugin=Plugin(answer))
    assert (rc, out) == (0, expected)


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_cni_error_is_printed_with_exit_1(version: str) -> None:
    error = libcni.CNIError(11, "try again", "busy")
    rc, out, _, _ = run(ENV | {"CNI_COMMAND": "DEL"}, conf(version), plugin=Plugin(error))
    assert rc == 1
    # types.Error.Print: no cniVersion, struct order, no trailing newline.
    assert out == b'{\n    "code": 11,\n    "msg": "try again",\n    "details": "busy"\n}'


def test_error_text_is_escaped_as_go_does() -> None:
    rc, out, _, _ = run(ENV, conf(), plugin=Plugin(libcni.CNIError(7, "a <b> & c")))
    assert out == b'{\n    "code": 7,\n    "msg": "a \\u003cb\\u003e \\u0026 c"\n}'


def test_unexpected_exception_is_code_999() -> None:
    rc, out, err, _ = run(ENV, conf(), plugin=Plugin(RuntimeError("boom")))
    assert rc == 1
    assert error_of(out) == {"code": 999, "msg": "boom"}
    assert "Traceback" in err and "RuntimeError: boom" in err


def test_netns_must_not_be_the_plugins_own() -> None:
    own = "/proc/self/ns/net"
    if not os.path.exists(own):
        pytest.skip("no /proc/self/ns/net")
    rc, out, _, plugin = run(ENV | {"CNI_NETNS": own}, conf())
    assert rc == 1 and plugin.calls == []
    assert error_of(out)["code"] == 8
    assert error_of(out)["msg"] == "plugin's netns and netns from CNI_NETNS should not be the same"
    rc, _, _, plugin = run(ENV | {"CNI_NETNS": own, "CNI_NETNS_OVERRIDE": "true"}, conf())
    assert rc == 0 and len(plugin.calls) == 1


def test_skel_imports_nothing_heavy() -> None:
    code = ("import sys, cni.skel; heavy = ('grpc', 'google.protobuf', 'yaml', 'pyroute2'); "
            "print([m for m in heavy if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=os.path.dirname(os.path.dirname(os.path.dirname(
                             os.path.abspath(__file__)))))
    assert out.stdout.strip() == "[]"
