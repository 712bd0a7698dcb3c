"""flannel's documents: config, subnet keys and lease values, byte for byte."""

from __future__ import annotations

from ipaddress import IPv4Network, IPv6Network

import pytest

from nodeipam import InvalidCIDR, Lease, NetworkConfig, StoreCorrupt
from nodeipam import flanneljson as fj

# What flannel's etcd registry stores (json.Marshal(LeaseAttrs) with vxlanLeaseAttrs).
FLANNEL_VALUE = (b'{"PublicIP":"198.18.0.2","PublicIPv6":null,"BackendType":"vxlan",'
                 b'"BackendData":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:01"}}')
FLANNEL_V6_VALUE = (b'{"PublicIP":"198.18.0.2","PublicIPv6":"fd00::2","BackendType":"vxlan",'
                    b'"BackendData":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:01"},'
                    b'"BackendV6Data":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:02"}}')


def lease_from(value: bytes, **kw) -> Lease:
    return Lease(node="n", subnet=IPv4Network("10.244.1.0/24"), **kw,
                 **fj.parse_attrs(value, "/k"))


@pytest.mark.parametrize("value", [FLANNEL_VALUE, FLANNEL_V6_VALUE])
def test_lease_value_round_trips_byte_for_byte(value: bytes) -> None:
    assert fj.format_attrs(lease_from(value)) == value


def test_lease_value_from_lease() -> None:
    lease = Lease(node="node-a", subnet=IPv4Network("10.244.1.0/24"), public_ip="198.18.0.2",
                  backend_data={"VNI": 1, "VtepMAC": "aa:bb:cc:dd:ee:01"})
    assert fj.format_attrs(lease) == FLANNEL_VALUE


def test_lease_value_omitempty_and_go_escapes() -> None:
    lease = Lease(node="n", subnet=None, public_ip="10.0.0.1", backend_type="",
                  backend_data={})
    assert fj.format_attrs(lease) == b'{"PublicIP":"10.0.0.1","PublicIPv6":null}'
    odd = Lease(node="n", subnet=None, public_ip="10.0.0.1",
                backend_data={"x": "<a&b>\u2028\x01\n\"\\é", "n": 1.0, "l": [True, None]})
    assert fj.format_attrs(odd) == (
        b'{"PublicIP":"10.0.0.1","PublicIPv6":null,"BackendType":"vxlan","BackendData":'
        b'{"x":"\\u003ca\\u0026b\\u003e\\u2028\\u0001\\n\\"\\\\\xc3\xa9","n":1,'
        b'"l":[true,null]}}')


@pytest.mark.parametrize("value", [b"{", b"[]", b'{"PublicIP":1}',
                                   b'{"PublicIP":"1.2.3.4","BackendData":[1]}'])
def test_bad_lease_value(value: bytes) -> None:
    with pytest.raises(StoreCorrupt, match="^/coreos.com/network/subnets/x: "):
        fj.parse_attrs(value, "/coreos.com/network/subnets/x")


@pytest.mark.parametrize("subnet,ipv6,key", [
    ("10.244.1.0/24", None, "10.244.1.0-24"),
    ("10.244.1.0/24", "fc00:0:0:1::/64", "10.244.1.0-24&fc00:0:0:1::-64"),
    ("10.244.0.0/24", "fc00::/64", "10.244.0.0-24&fc00::-64"),
])
def test_subnet_key(subnet: str, ipv6: str | None, key: str) -> None:
    sn, sn6 = IPv4Network(subnet), ipv6 and IPv6Network(ipv6) or None
    assert fj.subnet_key(sn, sn6) == key
    assert fj.parse_subnet_key("/coreos.com/network/subnets/" + key) == (sn, sn6)


@pytest.mark.parametrize("key", ["/coreos.com/network/config", "/x/10.244.1.0-99",
                                 "/x/10.244.1.0-24/extra", "/x/300.1.1.1-24"])
def test_not_a_subnet_key(key: str) -> None:
    assert fj.parse_subnet_key(key) is None


def test_config_document() -> None:
    config = NetworkConfig(network=IPv4Network("10.244.0.0/16"))
    assert fj.format_config(config) == (b'{"Network": "10.244.0.0/16", "SubnetLen": 24, '
                                        b'"Backend": {"Type": "vxlan"}}')
    assert fj.parse_config(fj.format_config(config), "/k") == config


def test_config_dual_stack_and_v6_only() -> None:
    dual = NetworkConfig(network=IPv4Network("10.244.0.0/16"),
                         ipv6_network=IPv6Network("fd00:10:244::/56"), ipv6_subnet_len=64)
    assert fj.config_from_dict(fj.config_to_dict(dual)) == dual
    v6 = NetworkConfig(network=None, ipv6_network=IPv6Network("fd00::/48"))
    assert fj.config_to_dict(v6)["EnableIPv4"] is False
    assert fj.config_from_dict(fj.config_to_dict(v6)) == v6


@pytest.mark.parametrize("doc,subnet_len,ipv6_len", [
    ({"Network": "10.244.0.0/16"}, 24, 64),
    ({"Network": "10.244.0.0/22"}, 24, 64),
    ({"Network": "10.244.0.0/24"}, 26, 64),
    ({"Network": "10.244.0.0/16", "SubnetLen": 20}, 20, 64),
    ({"Network": "10.0.0.0/8", "EnableIPv6": True, "IPv6Network": "fd00::/100"}, 24, 102),
])
def test_config_defaults_like_flannel(doc: dict, subnet_len: int, ipv6_len: int) -> None:
    config = fj.config_from_dict(doc)
    assert (config.subnet_len, config.ipv6_subnet_len) == (subnet_len, ipv6_len)
    assert config.backend == {"Type": "udp"}        # flannel's default backend


@pytest.mark.parametrize("doc,match", [
    ({}, "no Network"),
    ({"Network": "10.244.0.0/33"}, "network config"),
    ({"Network": "nonsense"}, "network config"),
    ({"EnableIPv4": False}, "neither IPv4 nor IPv6"),
    ({"Network": "10.0.0.0/8", "Backend": "vxlan"}, "Backend must be an object"),
])
def test_bad_config(doc: dict, match: str) -> None:
    with pytest.raises(InvalidCIDR, match=match):
        fj.config_from_dict(doc)


def test_config_not_json_names_where() -> None:
    with pytest.raises(StoreCorrupt, match="^/coreos.com/network/config: network config is "
                                           "not JSON"):
        fj.parse_config(b"{Network", "/coreos.com/network/config")


def test_public_ip_check() -> None:
    assert fj.check_public_ip("198.18.0.2", 4) == "198.18.0.2"
    assert fj.check_public_ip("FD00:0::2", 6) == "fd00::2"
    for bad, version in [("", 4), ("fd00::2", 4), ("1.2.3", 4), ("1.2.3.4", 6)]:
        with pytest.raises(InvalidCIDR, match="public IP"):
            fj.check_public_ip(bad, version)
