"""CNIConfig: CHECK, STATUS, GC and validation, per spec version."""

from __future__ import annotations

import json
import os

import pytest
from cni_fakes import ALL_VERSIONS, FakeExec, conflist

import libcni

PATH = "/opt/cni/bin" + os.pathsep + "/usr/lib/cni"
NO_ATTACHMENT_ENV = {"CNI_CONTAINERID": "", "CNI_NETNS": "", "CNI_IFNAME": "",
                     "CNI_ARGS": "", "CNI_PATH": PATH}


# --- CHECK --------------------------------------------------------------------------

@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_check_per_version(config, fake_exec, rt, version):
    net = conflist(version)
    config.add_network_list(net, rt)
    cached = config.get_cached_result(net, rt)
    fake_exec.calls.clear()
    if not libcni.version_ge(version, "0.4.0"):
        with pytest.raises(libcni.CommandNotSupported) as info:
            config.check_network_list(net, rt)
        assert str(info.value) == (f'configuration version "{version}" does not support '
                                   "the CHECK command")
        assert fake_exec.calls == []
        return
    config.check_network_list(net, rt)
    assert fake_exec.commands() == [("bridge", "CHECK"), ("portmap", "CHECK")]
    for call in fake_exec.calls:
        assert call.cni_env["CNI_COMMAND"] == "CHECK"
        assert call.cni_env["CNI_CONTAINERID"] == "c0ffee"
        assert call.stdin["prevResult"] == cached.to_dict(version)
    assert "runtimeConfig" in fake_exec.calls[1].stdin


def test_check_disabled(config, fake_exec, rt):
    net = conflist("1.0.0", disableCheck=True)
    config.check_network_list(net, rt)
    assert fake_exec.calls == []


def test_check_stops_at_the_first_error(config, fake_exec, rt):
    fake_exec.script("bridge", "CHECK", error=(5, "veth missing", ""))
    with pytest.raises(libcni.PluginError) as info:
        config.check_network_list(conflist("1.0.0"), rt)
    assert info.value.command == "CHECK" and info.value.code == 5
    assert fake_exec.commands() == [("bridge", "CHECK")]


# --- STATUS -------------------------------------------------------------------------

@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_status_per_version(config, fake_exec, version):
    net = conflist(version)
    config.get_status_network_list(net)
    if version != "1.1.0":
        assert fake_exec.calls == []  # no STATUS before 1.1.0: libcni reports ready
        return
    assert fake_exec.commands() == [("bridge", "STATUS"), ("portmap", "STATUS")]
    for call in fake_exec.calls:
        assert call.cni_env == {"CNI_COMMAND": "STATUS", **NO_ATTACHMENT_ENV}
    # Only the config, name and version: no prevResult, no runtimeConfig.
    assert fake_exec.calls[1].stdin == {"type": "portmap", "capabilities": {"portMappings": True},
                                        "name": "testnet", "cniVersion": "1.1.0"}


@pytest.mark.parametrize("code", [libcni.ERR_PLUGIN_NOT_AVAILABLE, libcni.ERR_PLUGIN_NOT_AVAILABLE_LIMITED])
def test_status_not_ready(config, fake_exec, code):
    fake_exec.script("bridge", "STATUS", error=(code, "no subnet lease yet", ""))
    with pytest.raises(libcni.PluginError) as info:
        config.get_status_network_list(conflist("1.1.0"))
    assert info.value.code == code
    assert fake_exec.commands() == [("bridge", "STATUS")]


# --- GC -----------------------------------------------------------------------------

def _attach(config, net, container_id, ifname="eth0"):
    config.add_network_list(net, libcni.RuntimeConf(container_id, f"/ns/{container_id}", ifname,
                                                 (("K", container_id),), {"portMappings": []}))


@pytest.mark.parametrize("version", ["0.4.0", "1.0.0", "1.1.0"])
def test_gc_deletes_stale_attachments_and_calls_gc(config, fake_exec, cache_dir, version):
    net = conflist(version)
    other = conflist(version, name="othernet")
    _attach(config, net, "keep")
    _attach(config, net, "stale")
    _attach(config, other, "stale")
    fake_exec.calls.clear()

    config.gc_network_list(net, [libcni.GCAttachment("keep", "eth0"),
                                 libcni.GCAttachment("gone", "eth9")])

    dels = fake_exec.of("DEL")
    assert [(c.plugin, c.cni_env["CNI_CONTAINERID"]) for c in dels] == [
        ("portmap", "stale"), ("bridge", "stale")]
    assert dels[0].cni_env["CNI_NETNS"] == "/ns/stale"  # from the cache
    assert dels[0].cni_env["CNI_ARGS"] == "K=stale"
    remaining = sorted(os.listdir(os.path.join(cache_dir, "results")))
    assert remaining == ["othernet-stale-eth0", "testnet-keep-eth0"]
    gcs = fake_exec.of("GC")
    if version != "1.1.0":
        assert gcs == []
        return
    assert [c.plugin for c in gcs] == ["bridge", "portmap"]
    listed = [{"containerID": "keep", "ifname": "eth0"}, {"containerID": "gone", "ifname": "eth9"}]
    for call in gcs:
        assert call.cni_env == {"CNI_COMMAND": "GC", **NO_ATTACHMENT_ENV}
        assert call.stdin["cni.dev/valid-attachments"] == listed
        assert call.stdin["cni.dev/attachments"] == listed  # libcni sends both (cni#1101)
        assert "prevResult" not in call.stdin and "runtimeConfig" not in call.stdin


def test_gc_disabled(config, fake_exec):
    net = conflist("1.1.0", disableGC="true")
    _attach(config, net, "stale")
    fake_exec.calls.clear()
    config.gc_network_list(net, [])
    assert fake_exec.calls == []


def test_gc_keeps_going_and_raises_the_first_error(config, fake_exec):
    net = conflist("1.1.0")
    _attach(config, net, "stale")
    fake_exec.calls.clear()
    fake_exec.script("bridge", "DEL", error=(5, "del failed", ""))
    fake_exec.script("portmap", "GC", error=(5, "gc failed", ""))
    with pytest.raises(libcni.PluginError) as info:
        config.gc_network_list(net, [])
    assert info.value.msg == "del failed"
    assert any("gc failed" in n for n in info.value.__notes__)
    assert fake_exec.commands() == [("portmap", "DEL"), ("bridge", "DEL"),
                                    ("bridge", "GC"), ("portmap", "GC")]


def test_gc_with_empty_valid_list_sends_an_empty_list(config, fake_exec):
    config.gc_network_list(conflist("1.1.0"), [])
    assert json.loads(fake_exec.calls[0].stdin_bytes)["cni.dev/valid-attachments"] == []


# --- validation ---------------------------------------------------------------------

def test_validate_network_list(cache_dir):
    fake = FakeExec(available=["bridge", "portmap"])
    config = libcni.CNIConfig(["/opt/cni/bin"], exec=fake, cache_dir=cache_dir)
    config.validate_network_list(conflist("1.0.0"))
    version_call = fake.calls[0]
    assert version_call.cni_env["CNI_COMMAND"] == "VERSION"
    assert version_call.stdin_bytes == b'{"cniVersion":"1.1.0"}'


def test_validate_network_list_reports_every_problem(cache_dir):
    fake = FakeExec(available=["bridge"])
    fake.script("bridge", "VERSION", result={"cniVersion": "0.4.0",
                                              "supportedVersions": ["0.3.1", "0.4.0"]})
    config = libcni.CNIConfig(["/opt/cni/bin"], exec=fake, cache_dir=cache_dir)
    with pytest.raises(libcni.CNIError) as info:
        config.validate_network_list(conflist("1.0.0"))
    assert info.value.msg == 'plugin bridge does not support config version "1.0.0"'
    assert info.value.code == libcni.ERR_INCOMPATIBLE_VERSION
    assert any('failed to find plugin "portmap"' in n for n in info.value.__notes__)


def test_version_info_of_a_pre_version_plugin(cache_dir):
    fake = FakeExec()
    fake.script("old", "VERSION", error=(4, "unknown CNI_COMMAND: VERSION", ""))
    fake.script("020", "VERSION", result={"cniVersion": "0.2.0"})
    config = libcni.CNIConfig(["/bin"], exec=fake, cache_dir=cache_dir)
    assert config.get_version_info("old").supported_versions == ("0.1.0",)
    assert config.get_version_info("020").supported_versions == ("0.1.0", "0.2.0")
    config.validate_network_list(conflist("", [{"type": "old"}]))  # "" means 0.1.0
