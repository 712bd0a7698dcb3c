"""The sandbox manager with a fake plugin runner and fake netns: no root needed.

These pin down what containerd's CRI plugin does on the networking path: which plugins
run, in which order, with which environment and stdin, and what is left after failures.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import grpc
import pytest
from libcni.testing import FakeExec

import libcni
from cri_shim.config import CNISettings, Config
from cri_shim.errors import AlreadyExists, InvalidArgument, NetworkError, NetworkNotReady, grpc_status
from cri_shim.manager import SandboxFilter, SandboxManager
from cri_shim.podconfig import parse_pod_config
from cri_shim.podnet import PodNetwork
from cri_shim.store import CREATING, NOTREADY, READY, MemoryStore, SandboxRecord

VERSIONS = ["0.3.1", "0.4.0", "1.0.0", "1.1.0"]


class FakeNetns:
    """Plain files instead of bind-mounted namespaces."""

    def __init__(self) -> None:
        self.count = 0

    def new_path(self, netns_dir: str) -> str:
        self.count += 1
        return os.path.join(netns_dir, f"cni-{self.count}")

    def pin(self, path: str, *, loopback_up: bool = False) -> None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Path(path).write_text("lo-up" if loopback_up else "")

    def unpin(self, path: str) -> None:
        Path(path).unlink(missing_ok=True)

    def is_pinned(self, path: str) -> bool:
        return bool(path) and os.path.exists(path)


def write_conflist(conf_dir: Path, version: str = "1.0.0", name: str = "testnet",
                   filename: str = "10-test.conflist", plugins: list | None = None) -> Path:
    conf_dir.mkdir(parents=True, exist_ok=True)
    path = conf_dir / filename
    path.write_text(json.dumps({"cniVersion": version, "name": name, "plugins": plugins or [
        {"type": "bridge", "bridge": "cni0", "ipam": {"type": "host-local", "subnet": "10.0.0.0/24"}},
        {"type": "portmap", "capabilities": {"portMappings": True}}]}))
    return path


class Env:
    def __init__(self, tmp: Path, **cni_settings) -> None:
        self.tmp, self.conf_dir, self.netns_dir = tmp, tmp / "net.d", tmp / "netns"
        self.exec = FakeExec()
        self.netns = FakeNetns()
        self.store = MemoryStore()
        self.config = Config(cni=CNISettings(bin_dirs=("/opt/cni/bin",), conf_dir=str(self.conf_dir),
                                             cache_dir=str(tmp / "cache"), netns_dir=str(self.netns_dir),
                                             setup_serially=True, **cni_settings))
        self.manager = self.new_manager()

    def new_manager(self) -> SandboxManager:
        return SandboxManager(self.config, PodNetwork(self.config.cni, exec=self.exec), self.store,
                              netns=self.netns)

    def spec(self, name: str = "web", **extra):
        cfg = {"metadata": {"name": name, "namespace": "default", "uid": f"u-{name}"},
               "port_mappings": [{"container_port": 80, "host_port": 8080},
                                 {"container_port": 81}], **extra}
        return parse_pod_config(cfg)

    def run(self, name: str = "web", **extra) -> str:
        return self.manager.run(self.spec(name, **extra))

    def pinned(self) -> list[str]:
        return sorted(os.listdir(self.netns_dir)) if self.netns_dir.exists() else []

    def cached(self) -> list[str]:
        d = self.tmp / "cache" / "results"
        return sorted(os.listdir(d)) if d.exists() else []


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return Env(tmp_path)


@pytest.mark.parametrize("version", VERSIONS)
def test_plugin_invocations_are_containerds(env: Env, version: str) -> None:
    write_conflist(env.conf_dir, version)
    sandbox_id = env.run()
    netns = env.manager.get(sandbox_id).netns_path
    assert env.exec.commands() == [("loopback", "ADD"), ("bridge", "ADD"), ("portmap", "ADD")]
    args = ("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;"
            f"K8S_POD_INFRA_CONTAINER_ID={sandbox_id};K8S_POD_UID=u-web")
    lo, bridge, portmap = env.exec.calls
    assert lo.cni_env == {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": sandbox_id, "CNI_NETNS": netns,
                          "CNI_IFNAME": "lo", "CNI_ARGS": args, "CNI_PATH": "/opt/cni/bin"}
    assert lo.stdin == {"cniVersion": "0.3.1", "name": "cni-loopback", "type": "loopback"}
    assert bridge.cni_env["CNI_IFNAME"] == "eth0" and bridge.cni_env["CNI_ARGS"] == args
    assert bridge.stdin == {"cniVersion": version, "name": "testnet", "type": "bridge",
                            "bridge": "cni0", "ipam": {"type": "host-local", "subnet": "10.0.0.0/24"}}
    # portmap gets prevResult and only the published port, as runtimeConfig.
    assert portmap.stdin["runtimeConfig"] == {"portMappings": [
        {"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": ""}]}
    assert portmap.stdin["prevResult"]["ips"][0]["address"] == "10.0.0.2/24"
    assert sorted(env.cached()) == sorted([f"cni-loopback-{sandbox_id}-lo", f"testnet-{sandbox_id}-eth0"])

    env.exec.calls.clear()
    env.manager.stop(sandbox_id)
    assert env.exec.commands() == [("loopback", "DEL"), ("portmap", "DEL"), ("bridge", "DEL")]
    for call in env.exec.calls:
        assert call.cni_env["CNI_NETNS"] == netns
    has_prev = version != "0.3.1"
    assert ("prevResult" in env.exec.calls[2].stdin) == has_prev
    assert env.pinned() == [] and env.cached() == []
    assert env.manager.get(sandbox_id).state == NOTREADY


def test_failed_add_undoes_everything(env: Env) -> None:
    write_conflist(env.conf_dir)
    env.exec.script("portmap", "ADD", error=(7, "bad config", "portMappings broken"))
    with pytest.raises(NetworkError) as exc:
        env.run()
    code, message = grpc_status(exc.value)
    assert code == grpc.StatusCode.UNKNOWN
    assert 'plugin "portmap"' in message and "bad config" in message and "portMappings broken" in message
    assert ("bridge", "DEL") in env.exec.commands() and ("loopback", "DEL") in env.exec.commands()
    assert env.pinned() == [] and env.store.records == {} and env.cached() == []
    assert env.manager.list() == []
    env.exec.scripts.clear()
    env.run()   # the name is free again


def test_try_again_later_is_unavailable(env: Env) -> None:
    write_conflist(env.conf_dir)
    env.exec.script("bridge", "ADD", error=(11, "busy", ""))
    with pytest.raises(NetworkError) as exc:
        env.run()
    assert grpc_status(exc.value)[0] == grpc.StatusCode.UNAVAILABLE


def test_missing_plugin_refused_before_anything_is_made(env: Env) -> None:
    write_conflist(env.conf_dir)
    env.exec.available = {"loopback", "bridge"}
    with pytest.raises(NetworkError) as exc:
        env.run()
    code, message = grpc_status(exc.value)
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert 'failed to find plugin "portmap"' in message
    assert env.exec.calls == [] and env.pinned() == [] and env.store.records == {}


def test_no_config(env: Env) -> None:
    with pytest.raises(NetworkNotReady) as exc:
        env.run()
    assert grpc_status(exc.value)[0] == grpc.StatusCode.FAILED_PRECONDITION
    assert "cni plugin not initialized" in str(exc.value)
    assert env.manager.network_condition() == (
        False, "NetworkPluginNotReady", "Network plugin returns error: cni plugin not initialized")


def test_stop_and_remove_are_idempotent(env: Env) -> None:
    write_conflist(env.conf_dir)
    sandbox_id = env.run()
    env.manager.stop(sandbox_id)
    n = len(env.exec.calls)
    env.manager.stop(sandbox_id)
    assert len(env.exec.calls) == n   # no second DEL
    env.manager.remove(sandbox_id)
    assert len(env.exec.calls) == n   # remove after stop: no DEL either
    env.manager.remove(sandbox_id)
    env.manager.stop("0" * 64)


def test_remove_of_ready_sandbox_runs_one_del(env: Env) -> None:
    write_conflist(env.conf_dir)
    sandbox_id = env.run()
    env.exec.calls.clear()
    env.manager.remove(sandbox_id)
    assert [c for c in env.exec.commands() if c[1] == "DEL"] == [
        ("loopback", "DEL"), ("portmap", "DEL"), ("bridge", "DEL")]
    assert env.store.records == {}


def test_failed_del_keeps_the_sandbox_for_a_retry(env: Env) -> None:
    write_conflist(env.conf_dir)
    sandbox_id = env.run()
    env.exec.script("bridge", "DEL", error=(11, "try later", ""))
    with pytest.raises(NetworkError):
        env.manager.stop(sandbox_id)
    assert env.manager.get(sandbox_id).state == READY and env.pinned()
    env.exec.scripts.clear()
    env.manager.stop(sandbox_id)
    assert env.manager.get(sandbox_id).state == NOTREADY and env.pinned() == []


def test_crash_leftover_is_torn_down_on_recover(env: Env) -> None:
    write_conflist(env.conf_dir)
    planned = env.manager.network.plan()
    netns = str(env.netns_dir / "cni-crashed")
    env.netns.pin(netns)
    rec = SandboxRecord(id="a" * 64, name="web", namespace="default", uid="u", attempt=0,
                        state=CREATING, created_at=1, netns_path=netns, networks=planned,
                        config={"metadata": {"name": "web", "namespace": "default", "uid": "u"}})
    env.store.put(rec)
    manager = env.new_manager()
    manager.recover()
    assert [c for c in env.exec.commands()] == [("loopback", "DEL"), ("portmap", "DEL"), ("bridge", "DEL")]
    assert env.store.records == {} and env.pinned() == [] and manager.list() == []


def test_gc_deletes_attachments_nobody_owns(env: Env) -> None:
    write_conflist(env.conf_dir, "1.1.0")
    keep = env.run("keep")
    gone = env.run("gone")
    env.store.delete(gone)           # as if its record had been lost
    manager = env.new_manager()
    manager.recover()
    env.exec.calls.clear()
    manager.gc()
    dels = [c for c in env.exec.calls if c.command == "DEL"]
    assert {c.cni_env["CNI_CONTAINERID"] for c in dels} == {gone}
    gc_calls = [c for c in env.exec.calls if c.command == "GC"]
    assert [c.plugin for c in gc_calls] == ["bridge", "portmap"]
    assert gc_calls[0].stdin["cni.dev/valid-attachments"] == [{"containerID": keep, "ifname": "eth0"}]
    assert all(gone not in name for name in env.cached())


def test_status_from_cni_1_1_plugins(env: Env) -> None:
    write_conflist(env.conf_dir, "1.1.0")
    assert env.manager.network_condition() == (True, "", "")
    env.exec.script("bridge", "STATUS", error=(50, "no uplink", "waiting for the node agent"))
    ready, reason, message = env.manager.network_condition()
    assert not ready and reason == "NetworkPluginNotReady"
    assert "no uplink" in message and "waiting for the node agent" in message


@pytest.mark.parametrize("pref, expected", [
    ("ipv4", ["10.0.0.2", "fd00::2", "10.1.0.2"]),
    ("ipv6", ["fd00::2", "10.0.0.2", "10.1.0.2"]),
    ("cni", ["fd00::2", "10.0.0.2", "10.1.0.2"]),
])
def test_ip_preference_and_second_network(tmp_path: Path, pref: str, expected: list[str]) -> None:
    env = Env(tmp_path, max_conf_num=2, ip_pref=pref)
    write_conflist(env.conf_dir, name="first", filename="10-a.conflist", plugins=[{"type": "dual"}])
    write_conflist(env.conf_dir, name="second", filename="20-b.conflist", plugins=[{"type": "single"}])

    def dual(call):
        return libcni.ExecOutput(json.dumps({
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "eth0", "sandbox": call.env["CNI_NETNS"]}],
            "ips": [{"address": "fd00::2/64", "interface": 0}, {"address": "10.0.0.2/24", "interface": 0}],
        }).encode())

    def single(call):
        return libcni.ExecOutput(json.dumps({
            "cniVersion": "1.0.0", "interfaces": [{"name": "eth1", "sandbox": call.env["CNI_NETNS"]}],
            "ips": [{"address": "10.1.0.2/24", "interface": 0}]}).encode())

    env.exec.scripts[("dual", "ADD")] = dual
    env.exec.scripts[("single", "ADD")] = single
    sandbox_id = env.run()
    assert [c.cni_env["CNI_IFNAME"] for c in env.exec.calls] == ["lo", "eth0", "eth1"]
    assert env.manager.ips(env.manager.get(sandbox_id)) == expected


def test_concurrent_setup_attaches_every_network(tmp_path: Path) -> None:
    env = Env(tmp_path, max_conf_num=2)
    env.config = env.config.replace_cni(setup_serially=False)
    env.manager = env.new_manager()
    write_conflist(env.conf_dir, name="a", filename="10-a.conflist")
    write_conflist(env.conf_dir, name="b", filename="20-b.conflist")
    sandbox_id = env.run()
    assert sorted(env.manager.get(sandbox_id).results) == ["eth0", "eth1", "lo"]
    assert sorted(c.cni_env["CNI_IFNAME"] for c in env.exec.of("ADD")) == \
        ["eth0", "eth0", "eth1", "eth1", "lo"]


def test_internal_loopback_skips_the_plugin(tmp_path: Path) -> None:
    env = Env(tmp_path, use_internal_loopback=True)
    write_conflist(env.conf_dir)
    sandbox_id = env.run()
    assert ("loopback", "ADD") not in env.exec.commands()
    assert Path(env.manager.get(sandbox_id).netns_path).read_text() == "lo-up"


def test_bandwidth_annotations_reach_the_plugin(env: Env) -> None:
    write_conflist(env.conf_dir, plugins=[
        {"type": "bridge", "ipam": {"type": "host-local", "subnet": "10.0.0.0/24"}},
        {"type": "bandwidth", "capabilities": {"bandwidth": True}}])
    env.run(annotations={"kubernetes.io/ingress-bandwidth": "10M", "kubernetes.io/egress-bandwidth": "1Mi"})
    bw = env.exec.of("ADD")[-1]
    assert bw.stdin["runtimeConfig"] == {"bandwidth": {
        "ingressRate": 10_000_000, "ingressBurst": 2**32 - 1,
        "egressRate": 1_048_576, "egressBurst": 2**32 - 1}}


def test_bad_bandwidth_annotation(env: Env) -> None:
    write_conflist(env.conf_dir)
    with pytest.raises(InvalidArgument, match="kubernetes.io/ingress-bandwidth"):
        env.run(annotations={"kubernetes.io/ingress-bandwidth": "fast"})
    assert env.store.records == {}


def test_conf_dir_changes_take_effect_without_restart(env: Env) -> None:
    net = env.manager.network
    assert not net.status().ready
    path = write_conflist(env.conf_dir, name="one")
    assert [n.name for n in net.status().networks] == ["one"]
    # A new version written by rename (what most tools do).
    tmp = env.conf_dir / ".tmp"
    tmp.write_text(json.dumps({"cniVersion": "1.0.0", "name": "two", "plugins": [{"type": "bridge"}]}))
    os.replace(tmp, path)
    assert [n.name for n in net.status().networks] == ["two"]
    path.unlink()
    assert not net.status().ready
    env.conf_dir.rmdir()
    assert not net.status().ready
    write_conflist(env.conf_dir, name="three")   # conf dir recreated
    assert [n.name for n in net.status().networks] == ["three"]


def test_conf_template_rendered_on_pod_cidr(tmp_path: Path) -> None:
    template = tmp_path / "template.json"
    template.write_text('{"cniVersion": "1.0.0", "name": "containerd-net", "plugins": [{"type": "bridge", '
                        '"ipam": {"type": "host-local", "ranges": [{{range $i, $r := .PodCIDRRanges}}'
                        '{{if $i}}, {{end}}[{"subnet": "{{$r}}"}]{{end}}], "routes": ['
                        '{{range $i, $r := .Routes}}{{if $i}}, {{end}}{"dst": "{{$r}}"}{{end}}]}}]}')
    env = Env(tmp_path, conf_template=str(template))
    env.manager.update_pod_cidrs("10.88.0.0/24,fd00:1::/64")
    conf = json.loads((env.conf_dir / "10-containerd-net.conflist").read_text())
    assert conf["plugins"][0]["ipam"]["ranges"] == [[{"subnet": "10.88.0.0/24"}], [{"subnet": "fd00:1::/64"}]]
    assert conf["plugins"][0]["ipam"]["routes"] == [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]
    assert env.manager.network_condition()[0]
    with pytest.raises(InvalidArgument):
        env.manager.update_pod_cidrs("10.88.0.0/33")


def test_names_prefixes_and_filters(env: Env) -> None:
    write_conflist(env.conf_dir)
    a = env.run("a", labels={"app": "x"})
    env.run("b", labels={"app": "y"})
    with pytest.raises(AlreadyExists):
        env.run("a")
    assert env.manager.get(a[:10]).id == a
    assert [r.id for r in env.manager.list(SandboxFilter(labels={"app": "x"}))] == [a]
    assert [r.name for r in env.manager.list(SandboxFilter(state=READY))] == ["a", "b"]
    with pytest.raises(InvalidArgument, match="sandbox id is required"):
        env.manager.get("")
    for sid in ("abc" + "0" * 61, "abd" + "0" * 61):
        env.store.put(SandboxRecord(id=sid, name=sid, namespace="d", uid="", attempt=0,
                                    state=NOTREADY, created_at=1))
    manager = env.new_manager()
    manager.recover()
    with pytest.raises(InvalidArgument, match="ambiguous"):
        manager.get("ab")
    assert manager.get("abc00000000").id.startswith("abc")


def test_restart_rebuilds_from_the_store(env: Env) -> None:
    write_conflist(env.conf_dir)
    a = env.run()
    ips = env.manager.ips(env.manager.get(a))
    manager = env.new_manager()
    manager.recover()
    rec = manager.get(a)
    assert rec.state == READY and manager.ips(rec) == ips
    assert [(n.name, n.ifname) for n in rec.networks] == [("cni-loopback", "lo"), ("testnet", "eth0")]
    assert b'"name": "testnet"' in rec.networks[1].conflist


def test_ready_sandbox_whose_netns_vanished_is_released_on_recover(env: Env) -> None:
    """After a reboot the netns is gone but host-local's IP files are not."""
    write_conflist(env.conf_dir)
    sandbox_id = env.run()
    env.netns.unpin(env.manager.get(sandbox_id).netns_path)
    env.exec.calls.clear()
    manager = env.new_manager()
    manager.recover()
    assert env.exec.commands() == [("loopback", "DEL"), ("portmap", "DEL"), ("bridge", "DEL")]
    assert all(c.cni_env["CNI_NETNS"] == "" for c in env.exec.calls)
    assert manager.get(sandbox_id).state == NOTREADY
    assert env.cached() == []


def test_failed_repair_at_start_is_retried_by_stop(env: Env) -> None:
    write_conflist(env.conf_dir)
    sandbox_id = env.run()
    env.netns.unpin(env.manager.get(sandbox_id).netns_path)
    env.exec.script("bridge", "DEL", error=(11, "store locked", ""))
    manager = env.new_manager()
    manager.recover()                                   # repair fails: owed
    assert manager.get(sandbox_id).state == NOTREADY and manager.get(sandbox_id).networks
    env.exec.scripts.clear()
    env.exec.calls.clear()
    manager.stop(sandbox_id)                            # ... and is paid here
    assert ("bridge", "DEL") in env.exec.commands()
    assert manager.get(sandbox_id).networks == () and env.cached() == []


def test_failed_undo_keeps_the_sandbox_listed(env: Env) -> None:
    write_conflist(env.conf_dir)
    env.exec.script("portmap", "ADD", error=(7, "bad", ""))
    env.exec.script("bridge", "DEL", error=(11, "busy", ""))
    with pytest.raises(NetworkError):
        env.run()
    [rec] = env.manager.list()
    assert rec.state == NOTREADY and env.pinned()        # visible, retried by stop/remove
    with pytest.raises(AlreadyExists):
        env.run()                                        # the name stays reserved
    env.exec.scripts.clear()
    env.manager.remove(rec.id)
    assert env.pinned() == [] and env.store.records == {} and env.cached() == []
    env.run()


def test_eth0_without_ip_fails_and_is_undone(env: Env) -> None:
    write_conflist(env.conf_dir, plugins=[{"type": "noip"}])
    env.exec.script("noip", "ADD", result={"cniVersion": "1.0.0"})
    with pytest.raises(NetworkError, match="no IP address on eth0"):
        env.run()
    assert env.pinned() == [] and env.store.records == {}


def test_plugins_from_the_network_subdirectory_are_kept(env: Env) -> None:
    env.conf_dir.mkdir()
    (env.conf_dir / "10-sub.conflist").write_text(json.dumps(
        {"cniVersion": "1.0.0", "name": "subnet", "plugins": [{"type": "bridge"}]}))
    (env.conf_dir / "subnet").mkdir()
    (env.conf_dir / "subnet" / "20-portmap.conf").write_text(json.dumps(
        {"type": "portmap", "capabilities": {"portMappings": True}}))
    sandbox_id = env.run()
    assert ("portmap", "ADD") in env.exec.commands()
    env.exec.calls.clear()
    env.manager.stop(sandbox_id)
    assert env.exec.commands() == [("loopback", "DEL"), ("portmap", "DEL"), ("bridge", "DEL")]


def test_sandbox_being_created_is_not_listed(env: Env) -> None:
    write_conflist(env.conf_dir)
    seen = {}

    def peek(call):
        seen["list"] = env.manager.list()
        return libcni.ExecOutput(json.dumps(call.stdin["prevResult"]).encode())

    env.exec.scripts[("portmap", "ADD")] = peek
    sandbox_id = env.run()
    assert seen["list"] == []
    assert [r.id for r in env.manager.list()] == [sandbox_id]


def test_networks_are_attached_at_the_same_time(tmp_path: Path) -> None:
    """go-cni's Setup: both ADDs are in flight together (the barrier needs both)."""
    env = Env(tmp_path)
    env.config = env.config.replace_cni(setup_serially=False)
    env.manager = env.new_manager()
    write_conflist(env.conf_dir, plugins=[{"type": "bridge", "ipam": {}}])
    barrier = threading.Barrier(2, timeout=5)

    def meet(call):
        barrier.wait()
        from libcni.testing import default_result
        return libcni.ExecOutput(json.dumps(default_result(call)).encode())

    env.exec.scripts[("loopback", "ADD")] = meet
    env.exec.scripts[("bridge", "ADD")] = meet
    env.run()
    # And a failure in one network while the other succeeds undoes both.
    env.exec.scripts[("bridge", "ADD")] = libcni.ExecOutput(
        json.dumps({"code": 7, "msg": "nope"}).encode(), b"", 1)
    env.exec.scripts.pop(("loopback", "ADD"))
    env.exec.calls.clear()
    with pytest.raises(NetworkError, match="nope"):
        env.run("other")
    assert {c.plugin for c in env.exec.of("DEL")} == {"loopback", "bridge"}
