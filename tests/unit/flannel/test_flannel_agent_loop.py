"""The node agent's loop against a fake store and a fake data path (no root)."""

from __future__ import annotations

import json

import logging
from ipaddress import IPv4Network

import pytest

from flannel.agent import Agent, AgentConfig, Backoff, open_store, vxlan_backend, AgentError
from flannel.subnetenv import CONFLIST, write_conflist
from flannelcni.subnetenv import read_subnet_env
from flannel.vxlan import DataPathError
from flannel_fakes import NETWORK, FakeDataPath, FakeMasq, FakeStore, peer_lease
from nodeipam.lease import NetworkConfig


class Waits:
    """Agent.wait: records delays; stops the agent after *limit* waits."""

    def __init__(self, agent_ref: list, limit: int = 100) -> None:
        self.delays: list[float] = []
        self.agent_ref, self.limit = agent_ref, limit

    def __call__(self, delay: float) -> bool:
        self.delays.append(delay)
        if len(self.delays) >= self.limit:
            self.agent_ref[0].stop.set()
        return False


@pytest.fixture
def make(tmp_path):
    def make(store: FakeStore | None = None, *, network=NETWORK, ip_masq=False, ttl=None,
             clock=lambda: 1000.0, wait_limit=100):
        store = store or FakeStore(NetworkConfig(network=NETWORK, backend={"Type": "vxlan"}),
                                   clock=clock)
        config = AgentConfig(node_name="node-a", network=network, subnet_file=str(tmp_path / "subnet.env"),
                             conf_dir=str(tmp_path / "net.d"), ip_masq=ip_masq, lease_ttl=ttl)
        ref: list = []
        waits = Waits(ref, wait_limit)
        agent = Agent(config, store, FakeDataPath(), masq=FakeMasq(), clock=clock, wait=waits)
        ref.append(agent)
        agent.waits = waits
        return agent
    return make


def test_setup_in_flanneld_order_and_files_written(make, tmp_path):
    store = FakeStore(NetworkConfig(network=NETWORK, backend={"Type": "vxlan"}))
    store.put(peer_lease("node-b", 2))                  # next-fit after it: 10.244.3.0/24
    agent = make(store, ip_masq=True)
    assert agent.run(once=True) == 0
    dp = agent.datapath
    assert dp.ops == [("ensure", 1, 8472), ("configure", "10.244.3.0/24", "10.244.0.0/16"),
                      ("sync", ("node-b",))]
    assert store.acquired == [{"node": "node-a", "public_ip": "198.18.0.1",
                               "backend_data": {"VNI": 1, "VtepMAC": "02:aa:bb:cc:dd:01"}, "ttl": None}]
    assert agent.masq.ops == [("ensure", "10.244.0.0/16", "10.244.3.0/24")]
    assert (tmp_path / "subnet.env").read_bytes() == (
        b"FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\n"
        b"FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n")
    assert read_subnet_env(str(tmp_path / "subnet.env")).mtu == 1450
    # A subnet.env away from /run/flannel must be named in the conflist, or the plugin
    # would read the default one.
    conf = json.loads((tmp_path / "net.d" / "10-flannel.conflist").read_bytes())
    assert conf["plugins"][0]["subnetFile"] == str(tmp_path / "subnet.env")
    assert "watch" not in store.calls                   # --once: set up and exit


def test_default_paths_write_kube_flannels_conflist_byte_for_byte(tmp_path):
    config = AgentConfig(node_name="n", conf_dir=str(tmp_path))
    assert config.conflist_extra() == {}
    write_conflist(str(tmp_path), plugin_extra=config.conflist_extra())
    assert (tmp_path / "10-flannel.conflist").read_bytes() == CONFLIST


def test_per_node_paths_go_into_the_conflist(tmp_path):
    config = AgentConfig(node_name="n", subnet_file="/x/subnet.env", plugin_data_dir="/x/flannel",
                         ipam_data_dir="/x/ipam")
    assert config.conflist_extra() == {"subnetFile": "/x/subnet.env", "dataDir": "/x/flannel",
                                       "ipam": {"dataDir": "/x/ipam"}}


def test_network_config_is_stored_from_flag_when_missing(make):
    store = FakeStore(None)
    agent = make(store)
    assert agent.run(once=True) == 0
    assert store.config == NetworkConfig(network=NETWORK, backend={"Type": "vxlan"})
    assert store.calls[:3] == ["get_network_config", "set_network_config", "acquire"]


def test_no_network_config_and_no_flag_exits_1(make, caplog):
    agent = make(FakeStore(None), network=None)
    assert agent.run(once=True) == 1
    assert "pass --network" in caplog.text
    assert agent.datapath.ops == []


def test_backend_config():
    assert vxlan_backend({"Type": "vxlan"}) == (1, 8472)
    assert vxlan_backend({"Type": "VXLAN", "VNI": 4096, "Port": 4789}) == (4096, 4789)
    with pytest.raises(AgentError, match="only the vxlan backend"):
        vxlan_backend({"Type": "udp"})
    with pytest.raises(AgentError, match="integers"):
        vxlan_backend({"Type": "vxlan", "VNI": "1"})


def test_cidr_exhausted_exits_1_without_writing_files(make, tmp_path, caplog):
    store = FakeStore(NetworkConfig(network=IPv4Network("10.244.0.0/24"), backend={"Type": "vxlan"}))
    store.put(peer_lease("node-b", 0, ip="198.18.0.2"))     # holds the only subnet
    agent = make(store)
    assert agent.run(once=True) == 1
    assert "no remaining CIDRs" in caplog.text
    assert not (tmp_path / "subnet.env").exists()


def test_device_failure_is_a_configuration_error(make, caplog):
    agent = make()
    agent.datapath.fail_ensure = DataPathError(99, "no interface holds 198.18.0.1")
    assert agent.run(once=True) == 1
    assert "cannot set up flannel.1" in caplog.text


def test_store_unavailable_at_start_backs_off_exponentially(make):
    store = FakeStore(NetworkConfig(network=NETWORK, backend={"Type": "vxlan"}))
    store.fail = 4
    agent = make(store)
    assert agent.run(once=True) == 0
    assert agent.waits.delays == [1.0, 2.0, 4.0, 8.0]
    assert agent.lease is not None


def test_backoff_caps_and_resets():
    b = Backoff(1, 30)
    assert [b.next() for _ in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    b.reset()
    assert b.next() == 1


def _running(make, store=None, **kw):
    agent = make(store, **kw)
    assert agent.run(once=True) == 0
    agent.datapath.ops.clear()
    return agent


def _step(agent, n: int = 1):
    for _ in range(n):
        agent.step()


def test_watch_events_add_change_and_remove_peers(make):
    agent = _running(make)
    store, dp = agent.store, agent.datapath
    _step(agent)                                        # first watch: the snapshot (only us)
    store.put(peer_lease("node-b", 2))
    store.put(peer_lease("node-c", 3))
    _step(agent)
    assert dp.ops == [("add", "node-b"), ("add", "node-c")]
    store.put(peer_lease("node-b", 2))                  # unchanged: nothing to do
    store.put(peer_lease("node-c", 3, mac="02:00:00:00:00:33"))   # VtepMAC changed
    _step(agent)
    assert dp.ops[2:] == [("remove", "node-c"), ("add", "node-c")]
    assert dp.peers["node-c"].vtep_mac == "02:00:00:00:00:33"
    store.remove("node-b")
    _step(agent)
    assert dp.ops[4:] == [("remove", "node-b")]
    assert sorted(dp.peers) == ["node-c"]


def test_garbage_peer_is_skipped_and_logged_others_unaffected(make, caplog):
    agent = _running(make)
    store, dp = agent.store, agent.datapath
    _step(agent)
    caplog.set_level(logging.WARNING)
    store.put(peer_lease("node-bad", 4, backend_data={"VNI": 1}))
    store.put(peer_lease("node-udp", 5, backend_type="udp"))
    store.put(peer_lease("node-c", 3))
    _step(agent)
    assert dp.ops == [("add", "node-c")]
    assert "skipping lease of node node-bad (10.244.4.0/24): backend data VtepMAC None" in caplog.text
    assert "skipping lease of node node-udp" in caplog.text
    store.remove("node-bad")                            # never programmed: nothing to undo
    _step(agent)
    assert dp.ops == [("add", "node-c")]


def test_netlink_failure_for_one_peer_leaves_the_others(make, caplog):
    agent = _running(make)
    store, dp = agent.store, agent.datapath
    _step(agent)
    dp.fail_nodes = {"node-b"}
    store.put(peer_lease("node-b", 2))
    store.put(peer_lease("node-c", 3))
    _step(agent)
    assert dp.ops == [("add", "node-c")]
    assert "node node-b (added)" in caplog.text


def test_store_outage_keeps_the_data_path_and_resyncs_after(make):
    agent = _running(make, wait_limit=3)
    store, dp = agent.store, agent.datapath
    store.put(peer_lease("node-b", 2))
    _step(agent)
    dp.ops.clear()
    store.fail = 10**6                                  # etcd is down for good
    assert agent.run() == 0                             # stopped by Waits after 3 waits
    assert agent.waits.delays == [1.0, 2.0, 4.0]
    assert dp.ops == [] and sorted(dp.peers) == ["node-b"]
    # etcd is back, and node-b left meanwhile: the resync removes it.
    store.fail = 0
    store.remove("node-b")
    agent.step()
    assert dp.ops == [("sync", ())]
    assert dp.peers == {}


def test_own_lease_removed_means_acquire_again(make):
    agent = _running(make)
    agent.step()
    agent.store.remove("node-a")
    agent.step()
    assert agent.lease is None                          # run() sets up again next
    agent.setup()
    assert agent.store.calls.count("acquire") == 2 and agent.lease.node == "node-a"


def test_lease_is_renewed_before_expiry_then_resynced(make):
    now = [1000.0]
    agent = _running(make, ttl=100.0, clock=lambda: now[0])
    assert agent.lease.expires_at == 1100.0             # clock + ttl
    agent.step()
    assert "renew" not in agent.store.calls
    assert agent.store.watch_timeouts[-1] == 2.0
    now[0] = 1049.0                                     # renew at expiry - min(1h, ttl/2)
    agent.step()
    assert agent.store.watch_timeouts[-1] == pytest.approx(1.0)
    now[0] = 1050.0
    agent.step()
    assert agent.store.calls[-2:] == ["renew", "leases"]
    assert agent.lease.expires_at == 1150.0
    assert agent.datapath.ops[-1] == ("sync", ())


def test_own_public_ip_is_never_a_peer(make):
    agent = _running(make)
    agent.step()
    agent.store.put(peer_lease("node-a", 0, ip="198.18.0.1"))   # our own lease, rewritten
    agent.store.put(peer_lease("alias-of-a", 5, ip="198.18.0.1"))   # under another label
    agent.step()
    assert agent.datapath.ops == []


def test_open_store_specs(tmp_path):
    store = open_store(f"file:{tmp_path}/leases.json")
    assert type(store).__name__ == "FileLeaseStore"
    for bad in ("bogus", "file:", "etcd:", "http://127.0.0.1:2379"):
        with pytest.raises(ValueError, match="want file:/path or etcd:"):
            open_store(bad)


def test_store_network_mismatch_is_logged_and_the_store_wins(make, caplog):
    agent = make(network=IPv4Network("10.99.0.0/16"))
    assert agent.run(once=True) == 0
    assert "--network 10.99.0.0/16 ignored: the store says 10.244.0.0/16" in caplog.text


def test_masq_rules_are_checked_again_on_every_resync_and_failures_are_not_fatal(make, caplog):
    agent = _running(make, ip_masq=True)
    assert agent.masq.ops == [("ensure", "10.244.0.0/16", "10.244.0.0/24")]   # the first node's
    agent.resync()
    assert len(agent.masq.ops) == 2

    def broken(network, subnet):
        raise OSError("iptables-restore failed (4): Another app is currently holding the xtables lock")
    agent.masq.ensure = broken
    agent.resync()
    assert "masquerade rules: iptables-restore failed" in caplog.text
    assert agent.datapath.ops[-1] == ("sync", ())


def test_main_rejects_a_bad_store_spec(capsys):
    from flannel.agent import main
    assert main(["--node-name", "a", "--store", "consul:x"]) == 2
    assert "want file:/path or etcd:" in capsys.readouterr().err


def test_metrics_count_renewals_and_peers(make):
    """What ``--metrics-address`` serves moves with the agent's loop."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    from flannel.metrics import serve_metrics

    def scrape(server) -> dict:
        host, port = server.server_address[:2]
        text = urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10).read().decode()
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for f in text_string_to_metric_families(text) for s in f.samples}

    now = [1000.0]
    store = FakeStore(NetworkConfig(network=NETWORK, backend={"Type": "vxlan"}), clock=lambda: now[0])
    store.put(peer_lease("node-b", 2))
    agent = _running(make, store, ttl=100.0, clock=lambda: now[0])
    server = serve_metrics(agent, "127.0.0.1:0")
    try:
        got = scrape(server)
        assert got[("cri_shim_agent_peers", ())] == 1
        assert got[("cri_shim_agent_lease_renewals_total", ())] == 0
        subnet = str(agent.lease.subnet)
        assert got[("cri_shim_agent_lease_expiry_timestamp_seconds", (("subnet", subnet),))] == 1100.0
        now[0] = 1050.0
        agent.step()                                     # renewed, then resynced
        store.put(peer_lease("node-c", 4))
        agent.step()
        got = scrape(server)
        assert got[("cri_shim_agent_lease_renewals_total", ())] == 1
        assert got[("cri_shim_agent_lease_expiry_timestamp_seconds", (("subnet", subnet),))] == 1150.0
        assert got[("cri_shim_agent_peers", ())] == 2
        assert got[("cri_shim_agent_lease_renewal_failures_total", ())] == 0
    finally:
        server.shutdown()
        server.server_close()
