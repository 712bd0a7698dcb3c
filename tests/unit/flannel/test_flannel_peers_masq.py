"""Peer leases as the VXLAN backend reads them, and flanneld's masquerade rules."""

from __future__ import annotations

import subprocess
from ipaddress import IPv4Address, IPv4Network

import pytest

from flannel.masq import CHAIN, IPMasq, masq_rules
from flannel.vxlan import BackendDataError, peer_from_lease, vtep_mac
from flannel_fakes import peer_lease


def test_peer_from_a_flannel_lease():
    peer = peer_from_lease(peer_lease("node-b", 2, mac="0A:58:0A:F4:02:00"))
    assert peer.node == "node-b"
    assert peer.subnet == IPv4Network("10.244.2.0/24")
    assert peer.gateway == IPv4Address("10.244.2.0")
    assert peer.public_ip == IPv4Address("198.18.0.2")
    assert peer.vtep_mac == "0a:58:0a:f4:02:00"          # normalised for netlink compares


def test_hyphenated_mac_is_accepted_like_go_parsemac():
    assert peer_from_lease(peer_lease("b", 2, mac="02-00-00-00-00-02")).vtep_mac == "02:00:00:00:00:02"


@pytest.mark.parametrize("kw,why", [
    ({"backend_data": {"VNI": 1}}, "VtepMAC None"),
    ({"backend_data": {"VNI": 1, "VtepMAC": "not-a-mac"}}, "VtepMAC 'not-a-mac'"),
    ({"backend_data": {"VNI": 1, "VtepMAC": "02:00:00:00:00"}}, "is not a MAC"),
    ({"backend_data": {"VNI": 1, "VtepMAC": 42}}, "VtepMAC 42"),
    ({"backend_data": {"VNI": "1", "VtepMAC": "02:00:00:00:00:01"}}, "VNI '1'"),
    ({"backend_data": "garbage"}, "not an object"),
    ({"backend_type": "udp"}, "'udp' is not vxlan"),
    ({"ip": "not-an-ip"}, "public IP"),
])
def test_garbage_backend_data_is_refused(kw, why):
    with pytest.raises(BackendDataError, match=why):
        peer_from_lease(peer_lease("node-x", 9, **kw))


def test_lease_without_ipv4_subnet_is_refused():
    from dataclasses import replace
    with pytest.raises(BackendDataError, match="no IPv4 subnet"):
        peer_from_lease(replace(peer_lease("x", 3), subnet=None))


def test_vtep_mac_is_stable_unicast_and_locally_administered():
    mac = vtep_mac("node-a")
    assert mac == vtep_mac("node-a") != vtep_mac("node-b")
    first = int(mac.split(":")[0], 16)
    assert first & 0x01 == 0 and first & 0x02 == 2
    assert len(mac.split(":")) == 6


# -- masquerade (flannel pkg/trafficmngr/iptables masqRules) --------------------------

NET, SUB = IPv4Network("10.244.0.0/16"), IPv4Network("10.244.1.0/24")
FLANNEL_RULES = [
    '-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG',
    '-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment "flanneld masq" -j RETURN',
    '-A FLANNEL-POSTRTG -s 10.244.1.0/24 -d 10.244.0.0/16 -m comment --comment "flanneld masq" -j RETURN',
    '-A FLANNEL-POSTRTG -s 10.244.0.0/16 -d 10.244.1.0/24 -m comment --comment "flanneld masq" -j RETURN',
    '-A FLANNEL-POSTRTG ! -s 10.244.0.0/16 -d 10.244.1.0/24 -m comment --comment "flanneld masq" -j RETURN',
    '-A FLANNEL-POSTRTG -s 10.244.0.0/16 ! -d 224.0.0.0/4 -m comment --comment "flanneld masq" '
    '-j MASQUERADE --random-fully',
    '-A FLANNEL-POSTRTG ! -s 10.244.0.0/16 -d 10.244.0.0/16 -m comment --comment "flanneld masq" '
    '-j MASQUERADE --random-fully',
]


def _restore_text(rules) -> list[str]:
    return [r.restore_line() for r in rules]


def test_masq_rules_are_flannels_in_order():
    assert _restore_text(masq_rules(NET, SUB)) == FLANNEL_RULES


def test_without_random_fully():
    rules = _restore_text(masq_rules(NET, SUB, random_fully=False))
    assert rules[5].endswith("-j MASQUERADE") and rules[6].endswith("-j MASQUERADE")


class FakeIptables:
    """subprocess.run for iptables: knows a set of installed rules (as -C argv tails)."""

    def __init__(self, version: str = "iptables v1.8.9 (nf_tables)") -> None:
        self.version = version
        self.installed: set[tuple[str, ...]] = set()
        self.restores: list[str] = []

    def __call__(self, argv, input=None, capture_output=True, text=True):
        if argv[1:] == ["--version"]:
            return subprocess.CompletedProcess(argv, 0, self.version + "\n", "")
        if argv[0] == "iptables-restore":
            self.restores.append(input)
            return subprocess.CompletedProcess(argv, 0, "", "")
        assert argv[1:5] == ["-w", "-t", "nat", "-C"], argv
        return subprocess.CompletedProcess(argv, 0 if tuple(argv[5:]) in self.installed else 1, "", "")


def test_ensure_writes_one_transaction_that_flushes_the_chain():
    ipt = FakeIptables()
    masq = IPMasq(run=ipt)
    assert masq.ensure(NET, SUB) is True
    (payload,) = ipt.restores
    lines = payload.splitlines()
    assert lines[:2] == ["*nat", f":{CHAIN} - [0:0]"] and lines[-1] == "COMMIT"
    assert lines[2:-1] == FLANNEL_RULES


def test_ensure_is_a_no_op_when_every_rule_is_there():
    ipt = FakeIptables()
    ipt.installed = {(r.chain, *r.spec) for r in masq_rules(NET, SUB)}
    assert IPMasq(run=ipt).ensure(NET, SUB) is False
    assert ipt.restores == []


def test_ensure_moves_an_existing_postrouting_jump_instead_of_doubling_it():
    ipt = FakeIptables()
    jump = masq_rules(NET, SUB)[0]
    ipt.installed = {(jump.chain, *jump.spec)}
    IPMasq(run=ipt).ensure(NET, SUB)
    lines = ipt.restores[0].splitlines()
    assert lines[2] == jump.restore_line("-D") and lines[3] == jump.restore_line("-A")


def test_old_iptables_gets_no_random_fully():
    ipt = FakeIptables("iptables v1.6.1")
    IPMasq(run=ipt).ensure(NET, SUB)
    assert "--random-fully" not in ipt.restores[0]


def test_teardown_deletes_only_what_is_still_there():
    ipt = FakeIptables()
    masq = IPMasq(run=ipt)
    masq.ensure(NET, SUB)
    rules = masq_rules(NET, SUB)
    ipt.installed = {(r.chain, *r.spec) for r in rules[:3]}
    masq.teardown()
    assert ipt.restores[-1].splitlines() == ["*nat", *(r.restore_line("-D") for r in rules[:3]), "COMMIT"]
    ipt.installed = set()
    masq.teardown()
    assert len(ipt.restores) == 2                       # nothing left: nothing run
