"""Parsing conflists and confs, loading a conf dir."""

from __future__ import annotations

import json
import os

import pytest

import libcni

FLANNEL = (b'{\n  "name": "cbr0",\n  "cniVersion": "0.3.1",\n  "plugins": [\n'
           b'    {"type": "flannel", "delegate": {"hairpinMode": true, "isDefaultGateway": true}},\n'
           b'    {"type": "portmap", "capabilities": {"portMappings": true}}\n  ]\n}\n')


def write(d, name, data):
    path = os.path.join(str(d), name)
    with open(path, "wb") as f:
        f.write(data if isinstance(data, bytes) else json.dumps(data).encode())
    return path


def test_conflist_keeps_raw_bytes_and_plugin_objects():
    net = libcni.conflist_from_bytes(FLANNEL, source="10-flannel.conflist")
    assert net.raw == FLANNEL
    assert (net.name, net.cni_version, net.source) == ("cbr0", "0.3.1", "10-flannel.conflist")
    assert [p.type for p in net.plugins] == ["flannel", "portmap"]
    assert net.plugins[0].raw == {"type": "flannel",
                                  "delegate": {"hairpinMode": True, "isDefaultGateway": True}}
    assert net.plugins[0].capabilities == frozenset()
    assert net.plugins[1].capabilities == frozenset({"portMappings"})
    assert (net.disable_check, net.disable_gc, net.cni_versions) == (False, False, ())


def test_capabilities_only_true_ones():
    net = libcni.conflist_from_bytes(json.dumps({"name": "n", "cniVersion": "1.0.0", "plugins": [
        {"type": "x", "capabilities": {"a": True, "b": False}}]}).encode())
    assert net.plugins[0].capabilities == frozenset({"a"})


@pytest.mark.parametrize("value,expected", [(True, True), ("TRUE", True), ("false", False),
                                            (False, False)])
def test_disable_flags_accept_bool_or_string(value, expected):
    net = libcni.conflist_from_bytes(json.dumps({
        "name": "n", "cniVersion": "1.1.0", "disableCheck": value, "disableGC": value,
        "plugins": [{"type": "x"}]}).encode())
    assert net.disable_check is expected and net.disable_gc is expected


@pytest.mark.parametrize("cni_version,cni_versions,expected", [
    ("1.0.0", ["1.0.0", "1.1.0"], "1.1.0"),
    ("", ["0.4.0", "1.0.0"], "1.0.0"),
    ("0.3.1", ["0.4.0", "2.0.0"], "0.4.0"),      # skip versions we do not speak
    ("1.0.0", ["1.5.0"], "1.0.0"),
    ("1.0.0", [], "1.0.0"),
])
def test_cni_versions_negotiation(cni_version, cni_versions, expected):
    net = libcni.conflist_from_bytes(json.dumps({
        "name": "n", "cniVersion": cni_version, "cniVersions": cni_versions,
        "plugins": [{"type": "x"}]}).encode())
    assert net.cni_version == expected
    assert net.cni_versions == tuple(cni_versions)


@pytest.mark.parametrize("doc,message", [
    (b'{"name": "n", "plugins": [', "invalid JSON at line 1 column 27"),
    (b'{"name": "n", "x": NaN, "plugins": [{"type": "x"}]}', "invalid JSON"),
    (b'[]', "not a JSON object"),
    (b'{"cniVersion": "1.0.0", "plugins": [{"type": "x"}]}', 'missing "name"'),
    (b'{"name": "", "plugins": [{"type": "x"}]}', '"name" is empty'),
    (b'{"name": "a b", "plugins": [{"type": "x"}]}', "invalid characters in network name"),
    (b'{"name": 5, "plugins": [{"type": "x"}]}', '"name" must be a string'),
    (b'{"name": "n"}', 'no "plugins" list'),
    (b'{"name": "n", "plugins": []}', "no plugins in list"),
    (b'{"name": "n", "plugins": {}}', '"plugins" must be a list'),
    (b'{"name": "n", "plugins": [{"bridge": "cni0"}]}', 'plugin 0: missing "type"'),
    (b'{"name": "n", "plugins": [{"type": "x"}, 7]}', "plugin 1 is not a JSON object"),
    (b'{"name": "n", "plugins": [{"type": "../x"}]}', 'invalid plugin type "../x"'),
    (b'{"name": "n", "plugins": [{"type": "x", "capabilities": {"a": "yes"}}]}',
     '"capabilities" must map names to true/false'),
    (b'{"name": "n", "plugins": [{"type": "x", "ipam": "host-local"}]}', '"ipam" must be an object'),
    (b'{"name": "n", "cniVersion": "0.5.0", "plugins": [{"type": "x"}]}',
     'unsupported cniVersion "0.5.0"'),
    (b'{"name": "n", "cniVersion": "1.0", "plugins": [{"type": "x"}]}',
     'unsupported cniVersion "1.0"'),
    (b'{"name": "n", "cniVersion": 1, "plugins": [{"type": "x"}]}', '"cniVersion" must be a string'),
    (b'{"name": "n", "cniVersions": ["3.0.0"], "plugins": [{"type": "x"}]}',
     "none of cniVersions ['3.0.0'] is supported"),
    (b'{"name": "n", "cniVersions": ["x.y"], "plugins": [{"type": "x"}]}', 'invalid version "x.y"'),
    (b'{"name": "n", "disableCheck": "maybe", "plugins": [{"type": "x"}]}',
     '"disableCheck" must be a boolean'),
])
def test_invalid_conflists_say_what_is_wrong(doc, message):
    with pytest.raises(libcni.ConfigError) as info:
        libcni.conflist_from_bytes(doc, source="/etc/cni/net.d/bad.conflist")
    assert message in info.value.msg
    assert str(info.value).startswith("/etc/cni/net.d/bad.conflist: ")
    assert info.value.path == "/etc/cni/net.d/bad.conflist"
    assert info.value.code == libcni.ERR_INVALID_NETWORK_CONFIG


def test_conf_is_wrapped_like_libcni_conf_list_from_conf():
    data = b'{"cniVersion": "0.4.0", "name": "mynet", "type": "bridge", "mtu": 1500.0, "x": "<"}'
    net = libcni.conf_from_bytes(data, source="10-mynet.conf")
    assert (net.name, net.cni_version, net.source) == ("mynet", "0.4.0", "10-mynet.conf")
    assert [p.type for p in net.plugins] == ["bridge"]
    # The list libcni synthesizes (Go map marshal), which is what the cache stores.
    assert net.raw == (b'{"cniVersion":"0.4.0","name":"mynet","plugins":[{"cniVersion":"0.4.0",'
                       b'"mtu":1500,"name":"mynet","type":"bridge","x":"\\u003c"}]}')
    assert libcni.conflist_from_bytes(net.raw) == libcni.conflist_from_bytes(net.raw)


def test_conf_with_plugins_is_rejected_with_a_hint():
    with pytest.raises(libcni.ConfigError, match=r"must be in a \.conflist file"):
        libcni.conf_from_bytes(FLANNEL)


def test_conf_without_version_or_type():
    assert libcni.conf_from_bytes(b'{"name": "n", "type": "loopback"}').cni_version == ""
    with pytest.raises(libcni.ConfigError, match='missing "type"'):
        libcni.conf_from_bytes(b'{"name": "n"}')


# --- conf dir -----------------------------------------------------------------------

def test_load_conf_dir_order_and_extensions(tmp_path):
    write(tmp_path, "20-b.conf", {"cniVersion": "1.0.0", "name": "b", "type": "bridge"})
    write(tmp_path, "10-a.conflist", FLANNEL)
    write(tmp_path, "30-c.json", {"cniVersion": "1.0.0", "name": "c", "type": "ptp"})
    write(tmp_path, "05-ignored.txt", b"{}")
    os.mkdir(tmp_path / "00-dir.conf")
    load = libcni.load_conf_dir(str(tmp_path), max_conf_num=0)
    assert [n.name for n in load.networks] == ["cbr0", "b", "c"]
    assert [n.source for n in load.networks] == [str(tmp_path / f) for f in
                                                 ("10-a.conflist", "20-b.conf", "30-c.json")]
    assert load.skipped == ()


@pytest.mark.parametrize("max_conf_num,expected", [(1, ["a"]), (2, ["a", "b"]), (0, ["a", "b", "c"]),
                                                   (5, ["a", "b", "c"])])
def test_load_conf_dir_max_conf_num_counts_valid_files(tmp_path, max_conf_num, expected):
    write(tmp_path, "00-broken.conflist", b"{not json")
    for name in ("a", "b", "c"):
        write(tmp_path, f"10-{name}.conf", {"cniVersion": "1.0.0", "name": name, "type": "x"})
    load = libcni.load_conf_dir(str(tmp_path), max_conf_num=max_conf_num)
    assert [n.name for n in load.networks] == expected
    assert load.skipped == (libcni.SkippedFile(str(tmp_path / "00-broken.conflist"),
                                            "invalid JSON at line 1 column 2: Expecting property "
                                            "name enclosed in double quotes"),)


def test_load_conf_dir_skips_invalid_files_with_reasons(tmp_path):
    write(tmp_path, "10-noname.conflist", {"cniVersion": "1.0.0", "plugins": [{"type": "x"}]})
    write(tmp_path, "20-list-in-conf.conf", json.loads(FLANNEL))
    write(tmp_path, "30-empty.conflist", b"")
    write(tmp_path, "40-good.conflist", FLANNEL)
    load = libcni.load_conf_dir(str(tmp_path), max_conf_num=0)
    assert [n.name for n in load.networks] == ["cbr0"]
    reasons = {os.path.basename(s.path): s.reason for s in load.skipped}
    assert reasons["10-noname.conflist"] == 'missing "name"'
    assert "must be in a .conflist file" in reasons["20-list-in-conf.conf"]
    assert reasons["30-empty.conflist"].startswith("invalid JSON at line 1 column 1")


def test_load_conf_dir_missing_dir_is_empty(tmp_path):
    assert libcni.load_conf_dir(str(tmp_path / "nope")) == libcni.ConfDirLoad((), ())


def test_conflist_plugins_from_network_subdir(tmp_path):
    # libcni NetworkConfFromFile: <dir>/<name>/*.conf are appended to the inline ones.
    write(tmp_path, "10-net.conflist", {"name": "net", "cniVersion": "1.1.0",
                                        "plugins": [{"type": "bridge"}]})
    os.mkdir(tmp_path / "net")
    write(tmp_path / "net", "b.conf", {"type": "tuning"})
    write(tmp_path / "net", "a.conf", {"type": "portmap"})
    write(tmp_path / "net", "c.json", {"type": "ignored"})
    net = libcni.conflist_from_file(str(tmp_path / "10-net.conflist"))
    assert [p.type for p in net.plugins] == ["bridge", "portmap", "tuning"]
    write(tmp_path, "10-net.conflist", {"name": "net", "loadOnlyInlinedPlugins": True,
                                        "plugins": [{"type": "bridge"}]})
    assert [p.type for p in libcni.conflist_from_file(str(tmp_path / "10-net.conflist")).plugins] == ["bridge"]


def test_conflist_without_inline_plugins_needs_a_subdir(tmp_path):
    path = write(tmp_path, "10-net.conflist", {"name": "net", "cniVersion": "1.1.0"})
    with pytest.raises(libcni.ConfigError, match="no plugin configs found"):
        libcni.conflist_from_file(path)
    os.mkdir(tmp_path / "net")
    write(tmp_path / "net", "a.conf", {"type": "bridge"})
    assert [p.type for p in libcni.conflist_from_file(path).plugins] == ["bridge"]


def test_parsed_configs_are_hashable_values():
    a = libcni.conflist_from_bytes(FLANNEL)
    assert a == libcni.conflist_from_bytes(FLANNEL) and hash(a) == hash(libcni.conflist_from_bytes(FLANNEL))
