"""The range allocator, case for case like kubernetes' cidrset/cidr_set_test.go."""

from __future__ import annotations

from ipaddress import ip_network

import pytest

from nodeipam import EXHAUSTED_MESSAGE, CIDRExhausted, CIDRSet, InvalidCIDR, NetworkConfig, \
    RangeAllocator, allocate_podcidrs


def net(cidr: str):
    """Go's ParseCIDRSloppy: host bits are dropped."""
    return ip_network(cidr, strict=False)


def cidr_set(cluster: str, mask: int) -> CIDRSet:
    return CIDRSet(net(cluster), mask)


def used_blocks(s: CIDRSet) -> list[int]:
    return [i for i in range(s.max_cidrs) if s.is_used(s.block(i))]


# -- cidr_set_test.go ----------------------------------------------------------------

@pytest.mark.parametrize("cluster,mask,expected", [
    ("127.123.234.0/30", 30, "127.123.234.0/30"),
    ("beef:1234::/30", 30, "beef:1234::/30"),
])
def test_fully_allocated(cluster: str, mask: int, expected: str) -> None:
    s = cidr_set(cluster, mask)
    p = s.allocate_next()
    assert str(p) == expected
    with pytest.raises(CIDRExhausted):
        s.allocate_next()
    s.release(p)
    assert str(s.allocate_next()) == expected
    with pytest.raises(CIDRExhausted):
        s.allocate_next()


@pytest.mark.parametrize("cluster,mask,index,block", [
    ("127.123.3.0/16", 24, 0, "127.123.0.0/24"),
    ("127.123.0.0/16", 24, 15, "127.123.15.0/24"),
    ("192.168.5.219/28", 32, 5, "192.168.5.213/32"),
    ("2001:0db8:1234:3::/48", 64, 0, "2001:db8:1234::/64"),
    ("2001:0db8:1234::/48", 64, 15, "2001:db8:1234:f::/64"),
    ("2001:0db8:85a3::8a2e:0370:7334/50", 63, 6425, "2001:db8:85a3:3232::/63"),
    ("2001:0db8::/32", 48, 0, "2001:db8::/48"),
    ("2001:0db8::/32", 48, 15, "2001:db8:f::/48"),
    ("2001:0db8:85a3::8a2e:0370:7334/32", 48, 6425, "2001:db8:1919::/48"),
    ("2001:0db8:1234:ff00::/56", 72, 0, "2001:db8:1234:ff00::/72"),
    ("2001:0db8:1234:ff00::/56", 72, 15, "2001:db8:1234:ff00:f00::/72"),
    ("2001:0db8:1234:ff00::0370:7334/56", 72, 6425, "2001:db8:1234:ff19:1900::/72"),
    ("2001:0db8:1234:0:1234::/80", 96, 0, "2001:db8:1234:0:1234::/96"),
    ("2001:0db8:1234:0:1234::/80", 96, 15, "2001:db8:1234:0:1234:f::/96"),
    ("2001:0db8:1234:ff00::0370:7334/80", 96, 6425, "2001:db8:1234:ff00:0:1919::/96"),
])
def test_index_to_cidr_block(cluster: str, mask: int, index: int, block: str) -> None:
    assert str(cidr_set(cluster, mask).block(index)) == block


@pytest.mark.parametrize("cluster", ["127.123.234.0/16", "beef:1234::/16"])
def test_randomish_allocation(cluster: str) -> None:
    s = cidr_set(cluster, 24)
    cidrs = [s.allocate_next() for _ in range(256)]
    with pytest.raises(CIDRExhausted):
        s.allocate_next()
    for c in cidrs:
        s.release(c)
    again = [s.allocate_next() for _ in range(256)]
    with pytest.raises(CIDRExhausted):
        s.allocate_next()
    assert again == cidrs


@pytest.mark.parametrize("cluster", ["127.123.234.0/16", "beef:1234::/16"])
def test_allocation_occupied(cluster: str) -> None:
    s = cidr_set(cluster, 24)
    cidrs = [s.allocate_next() for _ in range(256)]
    for c in cidrs:
        s.release(c)
    for c in cidrs[128:]:
        s.occupy(c)
    s.occupy(cidrs[128])
    again = [s.allocate_next() for _ in range(128)]
    with pytest.raises(CIDRExhausted):
        s.allocate_next()
    assert again + cidrs[128:] == cidrs


def test_double_occupy_release() -> None:
    s = cidr_set("10.42.0.0/16", 24)
    for cidr, op, occupied in [
        ("10.42.5.0/24", "occupy", 1),
        ("10.42.9.0/24", "occupy", 2),
        ("10.42.8.0/22", "occupy", 5),      # four blocks, one already used: +3
        ("10.42.9.0/24", "occupy", 5),
        ("10.42.9.0/24", "release", 4),
        ("10.42.9.0/24", "release", 4),
        ("10.42.4.0/22", "release", 3),     # four blocks, one of them used: -1
    ]:
        getattr(s, op)(net(cidr))
        assert s.allocated == occupied, (cidr, op)
    for _ in range(256 - 3):
        s.allocate_next()
    with pytest.raises(CIDRExhausted):
        s.allocate_next()


@pytest.mark.parametrize("cluster,mask,subnet,bit", [
    ("127.0.0.0/8", 16, "127.0.0.0/16", 0),
    ("be00::/8", 16, "be00::/16", 0),
    ("127.0.0.0/8", 16, "127.123.0.0/16", 123),
    ("be00::/8", 16, "beef::/16", 0xEF),
    ("127.0.0.0/8", 16, "127.168.0.0/16", 168),
    ("be00::/8", 16, "be68::/16", 0x68),
    ("127.0.0.0/8", 16, "127.224.0.0/16", 224),
    ("be00::/8", 16, "be24::/16", 0x24),
    ("192.168.0.0/16", 24, "192.168.12.0/24", 12),
    ("beef::/16", 24, "beef:1200::/24", 0x12),
    ("192.168.0.0/16", 24, "192.168.151.0/24", 151),
    ("beef::/16", 24, "beef:9700::/24", 0x97),
])
def test_index_of(cluster: str, mask: int, subnet: str, bit: int) -> None:
    assert cidr_set(cluster, mask).index_of(net(subnet)) == bit


@pytest.mark.parametrize("cluster,subnet", [
    ("192.168.0.0/16", "127.168.224.0/24"),
    ("beef::/16", "2001:db00::/24"),
])
def test_index_of_outside(cluster: str, subnet: str) -> None:
    with pytest.raises(InvalidCIDR, match="out of the range of CIDR allocator"):
        cidr_set(cluster, 24).index_of(net(subnet))


@pytest.mark.parametrize("cluster,mask,subnet,begin,end", [
    ("127.0.0.0/8", 16, "127.0.0.0/8", 0, 255),
    ("2001:beef:1200::/40", 48, "2001:beef:1200::/40", 0, 255),
    ("127.0.0.0/8", 16, "127.0.0.0/2", 0, 255),
    ("2001:beef:1200::/40", 48, "2001:beef:1234::/34", 0, 255),
    ("127.0.0.0/8", 16, "127.0.0.0/16", 0, 0),
    ("2001:beef:1200::/40", 48, "2001:beef:1200::/48", 0, 0),
    ("127.0.0.0/8", 32, "127.0.0.0/16", 0, 65535),
    ("2001:beef:1200::/48", 64, "2001:beef:1200::/48", 0, 65535),
    ("127.0.0.0/7", 16, "127.0.0.0/15", 256, 257),
    ("2001:beef:7f00::/39", 48, "2001:beef:7f00::/47", 256, 257),
    ("127.0.0.0/7", 15, "127.0.0.0/15", 128, 128),
    ("2001:beef:7f00::/39", 47, "2001:beef:7f00::/47", 128, 128),
    ("127.0.0.0/7", 18, "127.0.0.0/15", 1024, 1031),
    ("2001:beef:7f00::/39", 50, "2001:beef:7f00::/47", 1024, 1031),
])
def test_occupy(cluster: str, mask: int, subnet: str, begin: int, end: int) -> None:
    s = cidr_set(cluster, mask)
    s.occupy(net(subnet))
    assert s.allocated == end - begin + 1
    if s.max_cidrs <= 1 << 12:
        assert used_blocks(s) == list(range(begin, end + 1))
    else:
        assert s.is_used(s.block(begin)) and s.is_used(s.block(end))
        assert end + 1 == s.max_cidrs or not s.is_used(s.block(end + 1))


def test_occupy_smaller_than_a_block_marks_its_block() -> None:
    s = cidr_set("10.244.0.0/16", 24)
    s.occupy(net("10.244.7.128/25"))
    assert used_blocks(s) == [7]


@pytest.mark.parametrize("cluster,mask,first,second", [
    ("127.0.0.0/8", 32, "127.0.0.0/32", "127.0.0.1/32"),
    ("2001:beef:1234:369b::/60", 64, "2001:beef:1234:3690::/64", "2001:beef:1234:3691::/64"),
])
def test_cidr_set_v6(cluster: str, mask: int, first: str, second: str) -> None:
    s = cidr_set(cluster, mask)
    assert [str(s.allocate_next()), str(s.allocate_next())] == [first, second]


def test_ipv6_mask_at_most_16_bits_longer() -> None:
    with pytest.raises(InvalidCIDR, match="New CIDR set failed; the node CIDR size is too big"):
        cidr_set("beef:1234::/32", 49)


def test_occupy_does_not_move_next_candidate() -> None:
    s = cidr_set("10.0.0.0/16", 24)
    s.occupy(net("10.0.0.0/17"))
    assert str(s.allocate_next()) == "10.0.128.0/24"


def test_occupy_and_release_whole_cluster() -> None:
    s = cidr_set("2001:db8::/48", 64)
    s.occupy(net("2001:db8::/48"))
    assert s.allocated == 65536
    with pytest.raises(CIDRExhausted):
        s.allocate_next()
    s.release(net("2001:db8::/48"))
    assert s.allocated == 0


# -- next-fit, exhaustion, validation -------------------------------------------------

def test_next_fit_from_the_last_allocation() -> None:
    s = cidr_set("10.244.0.0/16", 24)
    first, second = s.allocate_next(), s.allocate_next()
    assert (str(first), str(second)) == ("10.244.0.0/24", "10.244.1.0/24")
    s.release(first)
    assert str(s.allocate_next()) == "10.244.2.0/24"     # not the freed .0


def test_next_fit_wraps_around() -> None:
    s = cidr_set("10.0.0.0/30", 32)
    got = [str(s.allocate_next()) for _ in range(3)]
    assert got == ["10.0.0.0/32", "10.0.0.1/32", "10.0.0.2/32"]
    s.release(net("10.0.0.0/32"))
    assert str(s.allocate_next()) == "10.0.0.3/32"
    assert str(s.allocate_next()) == "10.0.0.0/32"       # wrapped
    with pytest.raises(CIDRExhausted):
        s.allocate_next()


def test_resume_after() -> None:
    s = cidr_set("10.244.0.0/16", 24)
    s.resume_after(net("10.244.254.0/24"))
    assert [str(s.allocate_next()) for _ in range(2)] == ["10.244.255.0/24", "10.244.0.0/24"]


def test_exhaustion_text_and_reason() -> None:
    s = cidr_set("10.244.0.0/23", 24)
    s.allocate_next(), s.allocate_next()
    with pytest.raises(CIDRExhausted) as exc:
        s.allocate_next()
    assert str(exc.value) == ("CIDR allocation failed; there are no remaining CIDRs left to "
                              "allocate in the accepted range") == EXHAUSTED_MESSAGE
    assert exc.value.reason == "CIDRNotAvailable"


def test_ipv6_64_from_48() -> None:
    s = cidr_set("2001:db8:42::/48", 64)
    assert s.max_cidrs == 65536
    assert [str(s.allocate_next()) for _ in range(2)] == ["2001:db8:42::/64", "2001:db8:42:1::/64"]


@pytest.mark.parametrize("cluster,mask,match", [
    ("10.0.0.0/25", 24, "mask size of cluster CIDR must be less than or equal to"),
    ("2000::/64", 48, "mask size of cluster CIDR must be less than or equal to"),
    ("10.0.0.0/8", 33, "not valid for IPv4"),
    ("2001:db8::/48", 129, "not valid for IPv6"),
    ("2001:db8::/32", 64, "the node CIDR size is too big"),
])
def test_invalid_masks(cluster: str, mask: int, match: str) -> None:
    with pytest.raises(InvalidCIDR, match=match):
        cidr_set(cluster, mask)


@pytest.mark.parametrize("subnet", ["10.245.0.0/24", "10.0.0.0/16", "2001:db8::/64"])
def test_podcidr_outside_the_network(subnet: str) -> None:
    s = cidr_set("10.244.0.0/16", 24)
    for op in (s.occupy, s.release):
        with pytest.raises(InvalidCIDR, match="out the range of cluster cidr 10.244.0.0/16"):
            op(net(subnet))
    assert s.allocated == 0


# -- RangeAllocator (dual-stack) --------------------------------------------------------

def test_dual_stack_defaults_24_and_64() -> None:
    a = RangeAllocator([net("10.244.0.0/16"), net("2001:db8::/48")])
    assert [str(c) for c in a.allocate()] == ["10.244.0.0/24", "2001:db8::/64"]
    assert [str(c) for c in a.allocate()] == ["10.244.1.0/24", "2001:db8:0:1::/64"]


def test_dual_stack_is_all_or_nothing() -> None:
    a = RangeAllocator([net("10.244.0.0/16"), net("2001:db8::/64")], {6: 65})
    a.allocate(), a.allocate()
    with pytest.raises(CIDRExhausted):
        a.allocate()
    assert a.sets[4].allocated == 2


@pytest.mark.parametrize("cidrs,match", [
    ([], "no cluster CIDR"),
    (["10.0.0.0/16", "10.1.0.0/16"], "at most one per IP family"),
    (["10.0.0.0/16", "2001:db8::/48", "10.1.0.0/16"], "at most 2"),
])
def test_cluster_cidr_validation(cidrs: list[str], match: str) -> None:
    with pytest.raises(InvalidCIDR, match=match):
        RangeAllocator([net(c) for c in cidrs])


def test_range_allocator_rejects_missing_family() -> None:
    a = RangeAllocator([net("10.244.0.0/16")])
    with pytest.raises(InvalidCIDR, match="no IPv6 cluster CIDR"):
        a.occupy(net("2001:db8::/64"))


def test_fits() -> None:
    a = RangeAllocator.for_network(NetworkConfig(network=net("10.244.0.0/16"), subnet_len=24))
    assert a.fits(net("10.244.3.0/24"), 4)
    assert not a.fits(net("10.244.3.0/25"), 4)
    assert not a.fits(net("10.245.3.0/24"), 4)
    assert a.fits(None, 6) and not a.fits(None, 4)


def test_allocate_podcidrs_skips_foreign_and_resumes() -> None:
    config = NetworkConfig(network=net("10.244.0.0/16"))
    got = allocate_podcidrs(config, in_use=[net("10.1.0.0/24"), net("10.244.0.0/24")],
                            last_allocated=[net("10.99.0.0/24")])
    assert [str(c) for c in got] == ["10.244.1.0/24"]
    got = allocate_podcidrs(config, in_use=[], last_allocated=[net("10.244.4.0/24")])
    assert [str(c) for c in got] == ["10.244.5.0/24"]
