"""Results: every version's wire form, libcni's conversions, helpers."""

from __future__ import annotations

from ipaddress import ip_address, ip_interface, ip_network

import pytest
from cni_fakes import ALL_VERSIONS

import libcni

V1 = {
    "cniVersion": "1.1.0",
    "interfaces": [
        {"name": "cni0", "mac": "aa:bb:cc:00:00:01"},
        {"name": "veth1", "mac": "aa:bb:cc:00:00:02"},
        {"name": "eth0", "mac": "0a:58:0a:00:00:02", "mtu": 1450,
         "sandbox": "/var/run/netns/x", "socketPath": "/s", "pciID": "0000:00:01.0"},
    ],
    "ips": [
        {"interface": 2, "address": "fd00::2/64", "gateway": "fd00::1"},
        {"interface": 2, "address": "10.0.0.2/24", "gateway": "10.0.0.1"},
        {"interface": 2, "address": "10.0.0.3/24"},
        {"interface": 0, "address": "10.0.0.1/24"},
    ],
    "routes": [
        {"dst": "0.0.0.0/0", "gw": "10.0.0.1", "mtu": 1400, "advmss": 1360, "priority": 5,
         "table": 0, "scope": 253},
        {"dst": "::/0"},
    ],
    "dns": {"nameservers": ["10.0.0.10"], "domain": "cluster.local", "search": ["a", "b"],
            "options": ["ndots:5"]},
}


def test_parse_1x():
    r = libcni.parse_result(V1)
    assert r.cni_version == "1.1.0"
    assert r.interfaces[2] == libcni.Interface("eth0", "0a:58:0a:00:00:02", "/var/run/netns/x",
                                            mtu=1450, socket_path="/s", pci_id="0000:00:01.0")
    assert r.ips[1] == libcni.IPConfig(ip_interface("10.0.0.2/24"), ip_address("10.0.0.1"), 2)
    assert r.routes[0] == libcni.Route(ip_network("0.0.0.0/0"), ip_address("10.0.0.1"),
                                    mtu=1400, advmss=1360, priority=5, table=0, scope=253)
    assert r.dns == libcni.DNS(("10.0.0.10",), "cluster.local", ("a", "b"), ("ndots:5",))
    assert r.raw == V1
    assert r.to_dict() == V1  # a 1.1.0 result round-trips exactly


def test_parse_040_ignores_1x_only_fields_and_version():
    data = {"cniVersion": "0.4.0",
            "interfaces": [{"name": "eth0", "sandbox": "/ns", "mtu": 9000}],
            "ips": [{"version": "4", "interface": 0, "address": "10.0.0.2/24"}],
            "dns": {}}
    r = libcni.parse_result(data)
    assert r.interfaces == (libcni.Interface("eth0", "", "/ns"),)
    assert r.to_dict() == {"cniVersion": "0.4.0", "interfaces": [{"name": "eth0", "sandbox": "/ns"}],
                           "ips": [{"version": "4", "interface": 0, "address": "10.0.0.2/24"}],
                           "dns": {}}


@pytest.mark.parametrize("version", ["0.1.0", "0.2.0", ""])
def test_parse_020(version):
    data = {"cniVersion": version,
            "ip4": {"ip": "10.0.0.2/24", "gateway": "10.0.0.1",
                    "routes": [{"dst": "0.0.0.0/0"}, {"dst": "10.1.0.0/16", "gw": "10.0.0.254"}]},
            "ip6": {"ip": "fd00::2/64", "routes": [{"dst": "::/0", "gw": "fd00::1"}]},
            "dns": {"nameservers": ["1.1.1.1"]}}
    r = libcni.parse_result(data)
    assert r.cni_version == (version or "0.1.0")
    assert [str(ip.address) for ip in r.ips] == ["10.0.0.2/24", "fd00::2/64"]
    assert all(ip.interface is None for ip in r.ips)
    assert [str(rt.dst) for rt in r.routes] == ["0.0.0.0/0", "10.1.0.0/16", "::/0"]
    # Back to 0.2.0: routes return to the family they belong to.
    back = r.to_dict("0.2.0")
    assert back["ip4"]["routes"] == data["ip4"]["routes"]
    assert back["ip6"] == data["ip6"]
    assert back["dns"] == {"nameservers": ["1.1.1.1"]}


def test_down_conversion_to_020_keeps_first_ip_of_each_family():
    r = libcni.parse_result(V1)
    assert r.to_dict("0.2.0") == {
        "cniVersion": "0.2.0",
        "ip4": {"ip": "10.0.0.2/24", "gateway": "10.0.0.1",
                "routes": [{"dst": "0.0.0.0/0", "gw": "10.0.0.1"}]},  # 1.x route fields dropped
        "ip6": {"ip": "fd00::2/64", "gateway": "fd00::1", "routes": [{"dst": "::/0"}]},
        "dns": V1["dns"],
    }


def test_down_conversion_to_020_drops_routes_of_a_missing_family():
    r = libcni.parse_result({"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.2/24"}],
                          "routes": [{"dst": "::/0"}, {"dst": "0.0.0.0/0"}]})
    assert r.to_dict("0.1.0") == {"cniVersion": "0.1.0", "dns": {},
                                  "ip4": {"ip": "10.0.0.2/24", "routes": [{"dst": "0.0.0.0/0"}]}}


def test_down_conversion_to_020_without_ips_fails():
    with pytest.raises(ValueError, match="no valid IP addresses"):
        libcni.parse_result({"cniVersion": "1.0.0"}).to_dict("0.2.0")


def test_conversion_to_040_adds_ip_version_and_drops_interface_extras():
    d = libcni.parse_result(V1).to_dict("0.3.1")
    assert d["cniVersion"] == "0.3.1"
    assert d["interfaces"][2] == {"name": "eth0", "mac": "0a:58:0a:00:00:02",
                                  "sandbox": "/var/run/netns/x"}
    assert [ip["version"] for ip in d["ips"]] == ["6", "4", "4", "4"]
    assert d["routes"] == V1["routes"]  # types.Route is shared by 0.3+


def test_1x_omits_empty_dns_and_0x_always_has_it():
    r = libcni.parse_result({"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.2/24"}]})
    assert "dns" not in r.to_dict("1.0.0")
    assert r.to_dict("0.4.0")["dns"] == {}
    assert r.to_dict("0.2.0")["dns"] == {}


@pytest.mark.parametrize("source", ALL_VERSIONS)
@pytest.mark.parametrize("target", ALL_VERSIONS)
def test_round_trips_across_versions(source, target):
    original = libcni.parse_result(V1).convert(source)
    there = original.convert(target)
    back = there.convert(source)
    assert there.cni_version == target
    # What survives is what the narrowest of the two versions can carry.
    narrow = original.convert(min(source, target, key=libcni.parse_version))
    assert back.convert(narrow.cni_version) == narrow
    assert {str(ip.address) for ip in back.ips} >= {str(ip.address) for ip in narrow.ips}


def test_sandbox_ips():
    r = libcni.parse_result(V1)
    assert [str(ip.address) for ip in r.sandbox_ips("eth0")] == [
        "10.0.0.2/24", "10.0.0.3/24", "fd00::2/64"]  # IPv4 first, then result order
    assert r.sandbox_ips("cni0") == ()  # a host-side interface is not in the sandbox
    assert len(r.sandbox_ips()) == 3
    legacy = libcni.parse_result({"cniVersion": "0.2.0", "ip6": {"ip": "fd00::2/64"},
                               "ip4": {"ip": "10.0.0.2/24"}})
    assert [str(ip.address) for ip in legacy.sandbox_ips("eth0")] == ["10.0.0.2/24", "fd00::2/64"]
    bad_index = libcni.parse_result({"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "sandbox": "/n"}],
                                  "ips": [{"interface": 3, "address": "10.0.0.2/24"}]})
    assert bad_index.sandbox_ips("eth0") == ()


def test_missing_cni_version_takes_the_expected_one():
    data = b'{"ips": [{"address": "10.0.0.2/24"}]}'
    assert libcni.parse_result(data, expected_version="1.0.0").cni_version == "1.0.0"
    assert libcni.parse_result(data).cni_version == "0.1.0"
    assert libcni.parse_result(b"null", expected_version="1.0.0").ips == ()


@pytest.mark.parametrize("data,message", [
    (b"not json", "Expecting value"),
    (b"[]", "not an object"),
    (b'{"cniVersion": "0.5.0"}', 'unsupported CNI result version "0.5.0"'),
    (b'{"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.2"}]}', "not an address in CIDR"),
    (b'{"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.300/24"}]}', "ips[0].address"),
    (b'{"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.2/24", "interface": "0"}]}',
     "ips[0].interface: expected an integer"),
    (b'{"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "mtu": 1500.5}]}',
     "interfaces[0].mtu: expected an integer"),
    (b'{"cniVersion": "1.0.0", "routes": [{"dst": "x"}]}', "routes[0].dst"),
    (b'{"cniVersion": "1.0.0", "dns": {"nameservers": "1.1.1.1"}}', "dns.nameservers: expected a list"),
    (b'{"cniVersion": "0.2.0", "ip4": {"ip": "bogus"}}', "ip4.ip"),
])
def test_invalid_results(data, message):
    with pytest.raises(ValueError) as info:
        libcni.parse_result(data)
    assert message in str(info.value)


def test_result_is_hashable_and_raw_not_compared():
    a = libcni.parse_result(V1)
    b = libcni.parse_result({**V1, "extra": 1})
    assert a == b and hash(a) == hash(b)
    assert b.raw["extra"] == 1
    assert libcni.parse_result(V1).to_json("1.0.0").startswith(b'{"cniVersion":"1.0.0","dns":{')


def test_raw_gets_the_assumed_version_so_it_reparses_the_same():
    r = libcni.parse_result(b'{"ips": [{"address": "10.0.0.2/24"}]}', expected_version="1.0.0")
    assert r.raw == {"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.2/24"}]}
    assert libcni.parse_result(r.raw) == r
