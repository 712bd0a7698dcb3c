"""CNIConfig: what each plugin receives and what comes back, ADD and DEL."""

from __future__ import annotations

import base64
import json
import os
import stat
from ipaddress import ip_address, ip_interface, ip_network

import pytest
from cni_fakes import ALL_VERSIONS, FakeExec, conflist

import libcni

BRIDGE_RESULT = libcni.Result(
    "1.1.0",
    interfaces=(libcni.Interface("cni0", "aa:bb:cc:00:00:01"),
                libcni.Interface("veth1", "aa:bb:cc:00:00:02"),
                libcni.Interface("eth0", "0a:58:0a:00:00:02", "/var/run/netns/cni-1234")),
    ips=(libcni.IPConfig(ip_interface("10.0.0.2/24"), ip_address("10.0.0.1"), 2),
         libcni.IPConfig(ip_interface("fd00::2/64"), ip_address("fd00::1"), 2)),
    routes=(libcni.Route(ip_network("0.0.0.0/0"), ip_address("10.0.0.1")),
            libcni.Route(ip_network("::/0"))),
    dns=libcni.DNS(nameservers=("10.0.0.10",), search=("svc.cluster.local",)))

EXPECTED_ARGS = ("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;"
                 "K8S_POD_INFRA_CONTAINER_ID=c0ffee;K8S_POD_UID=u-1")
PATH = "/opt/cni/bin" + os.pathsep + "/usr/lib/cni"


def attach_env(command: str) -> dict[str, str]:
    return {"CNI_COMMAND": command, "CNI_CONTAINERID": "c0ffee",
            "CNI_NETNS": "/var/run/netns/cni-1234", "CNI_IFNAME": "eth0",
            "CNI_ARGS": EXPECTED_ARGS, "CNI_PATH": PATH}


def cache_file(cache_dir: str, network: str = "testnet") -> str:
    return os.path.join(cache_dir, "results", f"{network}-c0ffee-eth0")


# --- ADD ----------------------------------------------------------------------------

@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_add_stdin_and_env_per_version(config, fake_exec, rt, version):
    net = conflist(version)
    fake_exec.script("bridge", "ADD", result=BRIDGE_RESULT.to_dict(version))

    result = config.add_network_list(net, rt)

    assert fake_exec.commands() == [("bridge", "ADD"), ("portmap", "ADD")]
    bridge, portmap = fake_exec.calls
    for call in (bridge, portmap):
        assert call.cni_env == attach_env("ADD")
        assert call.env["PATH"] == os.environ["PATH"]  # inherited, like pkg/invoke
        assert call.path == f"/opt/cni/bin/{call.plugin}"
    assert bridge.stdin == {"type": "bridge", "bridge": "cni0", "name": "testnet",
                            "cniVersion": version,
                            "ipam": {"type": "host-local", "subnet": "10.0.0.0/24"}}
    assert portmap.stdin == {
        "type": "portmap", "capabilities": {"portMappings": True}, "name": "testnet",
        "cniVersion": version, "prevResult": BRIDGE_RESULT.to_dict(version),
        "runtimeConfig": {"portMappings": [
            {"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": ""}]}}
    assert result.cni_version == version
    assert result == libcni.parse_result(BRIDGE_RESULT.to_dict(version))


def test_add_stdin_bytes_are_what_libcni_marshals(config, fake_exec, rt):
    net = conflist("1.0.0", [
        {"type": "bridge", "mtu": 1450, "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.0.0.0/24"}]]},
         "comment": "<a & b>"},
        {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True},
    ])
    fake_exec.script("bridge", "ADD", result={
        "cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "sandbox": "/ns"}],
        "ips": [{"interface": 0, "address": "10.0.0.2/24"}], "dns": {}})
    config.add_network_list(net, rt)
    # Compact, keys sorted at every level, numbers as Go prints float64, HTML escaped.
    assert fake_exec.calls[0].stdin_bytes == (
        b'{"cniVersion":"1.0.0","comment":"\\u003ca \\u0026 b\\u003e","ipam":{"ranges":'
        b'[[{"subnet":"10.0.0.0/24"}]],"type":"host-local"},"mtu":1450,"name":"testnet",'
        b'"type":"bridge"}')
    assert fake_exec.calls[1].stdin_bytes == (
        b'{"capabilities":{"portMappings":true},"cniVersion":"1.0.0","name":"testnet",'
        b'"prevResult":{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"/ns"}],'
        b'"ips":[{"address":"10.0.0.2/24","interface":0}]},"runtimeConfig":{"portMappings":'
        b'[{"containerPort":80,"hostIP":"","hostPort":8080,"protocol":"tcp"}]},"snat":true,'
        b'"type":"portmap"}')


# What libcni v1.3.0 writes for one result, checked with its own code (pkg/types,
# cacheAdd, InjectConf) on the result {eth0 with mac and sandbox, 10.1.0.2/24 via
# 10.1.0.1 on interface 0, a default route, no DNS}.
LIBCNI_RESULT = {"cniVersion": "1.0.0",
                 "interfaces": [{"name": "eth0", "mac": "aa:bb:cc:dd:ee:ff", "sandbox": "/var/run/netns/x"}],
                 "ips": [{"address": "10.1.0.2/24", "gateway": "10.1.0.1", "interface": 0}],
                 "routes": [{"dst": "0.0.0.0/0"}]}
LIBCNI_BYTES = {
    # (version) -> (cache file "result" and any prevResult with runtimeConfig,
    #               prevResult without runtimeConfig: the Go structs' field order)
    "1.0.0": (b'{"cniVersion":"1.0.0","interfaces":[{"mac":"aa:bb:cc:dd:ee:ff","name":"eth0",'
              b'"sandbox":"/var/run/netns/x"}],"ips":[{"address":"10.1.0.2/24","gateway":"10.1.0.1",'
              b'"interface":0}],"routes":[{"dst":"0.0.0.0/0"}]}',) * 2,
    "0.3.1": (b'{"cniVersion":"0.3.1","dns":{},"interfaces":[{"mac":"aa:bb:cc:dd:ee:ff","name":"eth0",'
              b'"sandbox":"/var/run/netns/x"}],"ips":[{"address":"10.1.0.2/24","gateway":"10.1.0.1",'
              b'"interface":0,"version":"4"}],"routes":[{"dst":"0.0.0.0/0"}]}',
              b'{"cniVersion":"0.3.1","interfaces":[{"name":"eth0","mac":"aa:bb:cc:dd:ee:ff",'
              b'"sandbox":"/var/run/netns/x"}],"ips":[{"version":"4","interface":0,"address":'
              b'"10.1.0.2/24","gateway":"10.1.0.1"}],"routes":[{"dst":"0.0.0.0/0"}],"dns":{}}'),
    "0.2.0": (b'{"cniVersion":"0.2.0","dns":{},"ip4":{"gateway":"10.1.0.1","ip":"10.1.0.2/24",'
              b'"routes":[{"dst":"0.0.0.0/0"}]}}',
              b'{"cniVersion":"0.2.0","ip4":{"ip":"10.1.0.2/24","gateway":"10.1.0.1","routes":'
              b'[{"dst":"0.0.0.0/0"}]},"dns":{}}'),
}
LIBCNI_BYTES["1.1.0"] = tuple(b.replace(b"1.0.0", b"1.1.0") for b in LIBCNI_BYTES["1.0.0"])
LIBCNI_BYTES["0.4.0"] = tuple(b.replace(b"0.3.1", b"0.4.0") for b in LIBCNI_BYTES["0.3.1"])


def _between(data: bytes, start: bytes, end: bytes) -> bytes:
    i = data.index(start) + len(start)
    return data[i:data.index(end, i)]


@pytest.mark.parametrize("version", sorted(LIBCNI_BYTES))
def test_prev_result_and_cache_bytes_are_libcnis(fake_exec, cache_dir, rt, version):
    config = libcni.CNIConfig(["/opt/cni/bin"], exec=fake_exec, cache_dir=cache_dir)
    # tuning declares no capability: its prevResult is not re-parsed by a runtimeConfig
    # injection, so 0.x results keep the Go structs' field order.
    net = conflist(version, [{"type": "bridge"}, {"type": "tuning"},
                             {"type": "portmap", "capabilities": {"portMappings": True}}])
    sorted_bytes, struct_bytes = LIBCNI_BYTES[version]
    fake_exec.script("bridge", "ADD", result=libcni.parse_result(LIBCNI_RESULT).to_dict(version))
    config.add_network_list(net, rt)
    _, tuning, portmap = fake_exec.calls
    assert _between(tuning.stdin_bytes, b'"prevResult":', b',"type"') == struct_bytes
    assert _between(portmap.stdin_bytes, b'"prevResult":', b',"runtimeConfig"') == sorted_bytes
    with open(cache_file(cache_dir), "rb") as f:
        assert f.read().endswith(b',"result":' + sorted_bytes + b"}")   # result is the last field
    fake_exec.calls.clear()
    config.del_network_list(net, rt)
    if libcni.version_ge(version, "0.4.0"):   # DEL carries the cached result from 0.4.0 on
        _, tuning, bridge = fake_exec.calls
        for call in (tuning, bridge):
            assert _between(call.stdin_bytes, b'"prevResult":', b',"type"') == struct_bytes


@pytest.mark.parametrize("list_version,answered", [
    ("1.0.0", "0.4.0"), ("0.4.0", "1.0.0"), ("1.1.0", "0.2.0"), ("0.3.1", "1.1.0")])
def test_add_prev_result_is_converted_to_list_version(config, fake_exec, rt,
                                                      list_version, answered):
    net = conflist(list_version)
    fake_exec.script("bridge", "ADD", result=BRIDGE_RESULT.to_dict(answered))
    config.add_network_list(net, rt)
    expected = libcni.parse_result(BRIDGE_RESULT.to_dict(answered)).to_dict(list_version)
    assert fake_exec.calls[1].stdin["prevResult"] == expected


def test_add_prev_result_that_cannot_convert_is_passed_as_is(config, fake_exec, rt):
    net = conflist("0.2.0")
    no_ips = {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0"}]}
    fake_exec.script("bridge", "ADD", result=no_ips)
    config.add_network_list(net, rt)
    assert fake_exec.calls[1].stdin["prevResult"] == no_ips


def test_add_result_without_cni_version_is_in_the_config_version(config, fake_exec, rt):
    net = conflist("0.4.0", [{"type": "bridge"}])
    fake_exec.script("bridge", "ADD", result={"ips": [{"version": "4", "address": "10.0.0.5/24"}]})
    result = config.add_network_list(net, rt)
    assert result.cni_version == "0.4.0"
    assert [str(ip.address) for ip in result.ips] == ["10.0.0.5/24"]


def test_capabilities_filter_runtime_config(config, fake_exec, rt):
    net = conflist("1.0.0", [{"type": "bridge"}, {
        "type": "tuning",
        "capabilities": {"portMappings": True, "bandwidth": False, "dns": True, "mac": True},
        "runtimeConfig": {"mac": "from-file"}}])
    rt = libcni.RuntimeConf(rt.container_id, rt.netns, rt.ifname, rt.args,
                         {**rt.capability_args, "mac": "0a:00:00:00:00:01", "ips": ["10.0.0.9/24"]})
    config.add_network_list(net, rt)
    # Only declared-true capabilities present in the args; the file's runtimeConfig is
    # replaced, not merged (libcni injectRuntimeConfig).
    assert fake_exec.calls[1].stdin["runtimeConfig"] == {
        "mac": "0a:00:00:00:00:01",
        "portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": ""}]}
    assert "runtimeConfig" not in fake_exec.calls[0].stdin


def test_runtime_config_in_file_kept_when_no_capability_matches(config, fake_exec):
    net = conflist("1.0.0", [{"type": "bridge", "capabilities": {"mac": True},
                              "runtimeConfig": {"mac": "file"}}])
    config.add_network_list(net, libcni.RuntimeConf("c1", "/ns", "eth0"))
    assert fake_exec.calls[0].stdin["runtimeConfig"] == {"mac": "file"}


def test_add_failure_stops_the_chain_and_caches_nothing(config, fake_exec, rt, cache_dir):
    net = conflist("1.0.0", [{"type": "bridge"}, {"type": "portmap"}, {"type": "bandwidth"}])
    fake_exec.script("portmap", "ADD", error=(11, "iptables busy", "try later"))
    with pytest.raises(libcni.PluginError) as info:
        config.add_network_list(net, rt)
    err = info.value
    assert (err.code, err.msg, err.details, err.plugin, err.command) == (
        11, "iptables busy", "try later", "portmap", "ADD")
    assert str(err) == 'plugin "portmap" failed on ADD (CNI error code 11): iptables busy: try later'
    assert fake_exec.commands() == [("bridge", "ADD"), ("portmap", "ADD")]
    assert not os.path.exists(cache_file(cache_dir))


def test_add_plugin_not_found(cache_dir, rt):
    fake = FakeExec(available=["bridge"])
    config = libcni.CNIConfig(["/a", "/b"], exec=fake, cache_dir=cache_dir)
    with pytest.raises(libcni.PluginNotFound) as info:
        config.add_network_list(conflist("1.0.0"), rt)
    assert str(info.value) == 'failed to find plugin "portmap" in path [/a /b]'
    assert info.value.plugin == "portmap" and info.value.command == "ADD"


@pytest.mark.parametrize("container_id,ifname,code,msg", [
    ("", "eth0", libcni.ERR_UNKNOWN_CONTAINER, "missing containerID"),
    ("-bad", "eth0", libcni.ERR_INVALID_ENV, "invalid characters in containerID"),
    ("c1", "", libcni.ERR_INVALID_ENV, "interface name is empty"),
    ("c1", "x" * 16, libcni.ERR_INVALID_ENV, "interface name is too long"),
    ("c1", "..", libcni.ERR_INVALID_ENV, "interface name is . or .."),
    ("c1", "eth 0", libcni.ERR_INVALID_ENV,
     "interface name contains / or : or whitespace characters"),
])
def test_add_validates_the_attachment(config, fake_exec, container_id, ifname, code, msg):
    with pytest.raises(libcni.CNIError) as info:
        config.add_network_list(conflist(), libcni.RuntimeConf(container_id, "/ns", ifname))
    assert (info.value.code, info.value.msg) == (code, msg)
    assert fake_exec.calls == []


# --- the cache ----------------------------------------------------------------------

def test_cache_file_is_libcni_format(config, fake_exec, rt, cache_dir):
    net = conflist("1.0.0")
    fake_exec.script("bridge", "ADD", result=BRIDGE_RESULT.to_dict("1.0.0"))
    config.add_network_list(net, rt)
    path = cache_file(cache_dir)
    data = open(path, "rb").read()
    obj = json.loads(data)
    assert list(obj) == ["kind", "containerId", "config", "ifName", "networkName", "netns",
                         "cniArgs", "capabilityArgs", "result"]  # Go struct order
    assert obj["kind"] == "cniCacheV1"
    assert base64.b64decode(obj["config"]) == net.raw
    assert (obj["containerId"], obj["ifName"], obj["networkName"], obj["netns"]) == (
        "c0ffee", "eth0", "testnet", "/var/run/netns/cni-1234")
    assert obj["cniArgs"] == [list(a) for a in rt.args]
    assert obj["capabilityArgs"] == {
        "bandwidth": {"ingressRate": 1000},
        "portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": ""}]}
    assert obj["result"] == BRIDGE_RESULT.to_dict("1.0.0")
    assert b'"result":{"cniVersion":"1.0.0","dns":{' in data  # nested keys sorted
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
    assert os.listdir(os.path.dirname(path)) == ["testnet-c0ffee-eth0"]  # no temp files


def test_cache_omits_empty_fields(config, fake_exec, cache_dir):
    config.add_network_list(conflist("1.0.0"), libcni.RuntimeConf("c0ffee", "", "eth0"))
    obj = json.loads(open(cache_file(cache_dir), "rb").read())
    assert list(obj) == ["kind", "containerId", "config", "ifName", "networkName", "result"]


def test_cache_stores_the_result_in_its_own_version(config, fake_exec, rt, cache_dir):
    fake_exec.script("portmap", "ADD", result=BRIDGE_RESULT.to_dict("0.4.0"))
    config.add_network_list(conflist("1.0.0"), rt)
    obj = json.loads(open(cache_file(cache_dir), "rb").read())
    assert obj["result"] == BRIDGE_RESULT.to_dict("0.4.0")


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_get_cached_result(config, fake_exec, rt, version):
    net = conflist(version)
    assert config.get_cached_result(net, rt) is None
    fake_exec.script("bridge", "ADD", result=BRIDGE_RESULT.to_dict("1.1.0"))
    config.add_network_list(net, rt)
    cached = config.get_cached_result(net, rt)
    assert cached is not None and cached.cni_version == version
    assert cached == BRIDGE_RESULT.convert(version)
    assert [str(ip.address.ip) for ip in cached.sandbox_ips("eth0")] == ["10.0.0.2", "fd00::2"]


def test_get_cached_attachments(config, fake_exec, rt):
    config.add_network_list(conflist(name="one"), rt)
    config.add_network_list(conflist(name="two"), libcni.RuntimeConf("other", "/ns", "eth1"))
    got = [(e.network, e.container_id, e.ifname) for e in config.get_cached_attachments()]
    assert got == [("one", "c0ffee", "eth0"), ("two", "other", "eth1")]
    assert [e.network for e in config.get_cached_attachments("other")] == ["two"]


# --- DEL ----------------------------------------------------------------------------

@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_del_reverse_order_with_cached_prev_result(config, fake_exec, rt, cache_dir, version):
    net = conflist(version)
    fake_exec.script("bridge", "ADD", result=BRIDGE_RESULT.to_dict(version))
    config.add_network_list(net, rt)
    fake_exec.calls.clear()

    config.del_network_list(net, rt)

    assert fake_exec.commands() == [("portmap", "DEL"), ("bridge", "DEL")]
    portmap, bridge = fake_exec.calls
    assert portmap.cni_env == attach_env("DEL") and bridge.cni_env == attach_env("DEL")
    expected_bridge = {"type": "bridge", "bridge": "cni0", "name": "testnet",
                       "cniVersion": version,
                       "ipam": {"type": "host-local", "subnet": "10.0.0.0/24"}}
    if libcni.prev_result_on_del(version):  # spec 0.4.0: DEL carries prevResult
        expected_bridge["prevResult"] = BRIDGE_RESULT.to_dict(version)
    assert bridge.stdin == expected_bridge
    assert portmap.stdin["runtimeConfig"] == {"portMappings": [
        {"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": ""}]}
    assert ("prevResult" in portmap.stdin) == libcni.prev_result_on_del(version)
    assert not os.path.exists(cache_file(cache_dir))


def test_del_is_best_effort(config, fake_exec, rt, cache_dir):
    net = conflist("1.0.0", [{"type": "a"}, {"type": "b"}, {"type": "c"}])
    config.add_network_list(net, rt)
    fake_exec.calls.clear()
    fake_exec.script("c", "DEL", error=(7, "c broke", ""))
    fake_exec.script("b", "DEL", stdout=b"not json", returncode=2)
    with pytest.raises(libcni.PluginError) as info:
        config.del_network_list(net, rt)
    assert fake_exec.commands() == [("c", "DEL"), ("b", "DEL"), ("a", "DEL")]
    assert (info.value.plugin, info.value.code, info.value.msg) == ("c", 7, "c broke")
    assert any('plugin "b" failed on DEL' in n for n in info.value.__notes__)
    assert os.path.exists(cache_file(cache_dir))  # kept for the retry


def test_del_without_cache_runs_the_given_list(config, fake_exec, rt):
    config.del_network_list(conflist("1.0.0"), rt)
    assert fake_exec.commands() == [("portmap", "DEL"), ("bridge", "DEL")]
    assert all("prevResult" not in c.stdin for c in fake_exec.calls)


def test_del_prefers_the_cached_config_and_args(config, fake_exec, rt):
    old = conflist("1.0.0", [{"type": "a", "x": 1}, {"type": "b"}])
    config.add_network_list(old, rt)
    fake_exec.calls.clear()
    edited = conflist("1.1.0", [{"type": "c"}])
    config.del_network_list(edited, libcni.RuntimeConf("c0ffee", "", "eth0"))
    assert fake_exec.commands() == [("b", "DEL"), ("a", "DEL")]
    call = fake_exec.calls[1]
    assert call.stdin["cniVersion"] == "1.0.0" and call.stdin["x"] == 1
    assert call.cni_env["CNI_ARGS"] == EXPECTED_ARGS  # from the cache
    assert call.cni_env["CNI_NETNS"] == ""  # the netns is the caller's (gone here)


def test_del_with_unusable_cached_result_runs_without_it(config, fake_exec, rt, cache_dir):
    net = conflist("1.0.0")
    config.add_network_list(net, rt)
    path = cache_file(cache_dir)
    obj = json.loads(open(path, "rb").read())
    obj["result"] = {"cniVersion": "9.9.9"}
    open(path, "w").write(json.dumps(obj))
    fake_exec.calls.clear()
    fake_exec.script("bridge", "DEL", error=(5, "once", ""))
    with pytest.raises(libcni.PluginError):
        config.del_network_list(net, rt)
    assert [("prevResult" in c.stdin) for c in fake_exec.calls] == [False, False]
    assert os.path.exists(path)  # kept for the retry, unlike libcni
    del fake_exec.scripts[("bridge", "DEL")]
    config.del_network_list(net, rt)
    assert not os.path.exists(path)


def test_del_with_missing_plugin_still_runs_the_rest(cache_dir, rt):
    fake = FakeExec(available=["bridge"])
    config = libcni.CNIConfig(["/opt/cni/bin"], exec=fake, cache_dir=cache_dir)
    with pytest.raises(libcni.PluginNotFound):
        config.del_network_list(conflist("1.0.0"), rt)
    assert fake.commands() == [("bridge", "DEL")]


def test_timeout_is_passed_to_exec(fake_exec, cache_dir, rt):
    config = libcni.CNIConfig(["/bin"], exec=fake_exec, cache_dir=cache_dir, timeout=7.5)
    config.add_network_list(conflist(), rt)
    assert {c.timeout for c in fake_exec.calls} == {7.5}
