"""kube-controller-manager's node podCIDR range allocator, as pure logic.

``CIDRSet`` follows kubernetes pkg/controller/nodeipam/ipam/cidrset/cidr_set.go: the
cluster CIDR is cut into 2^(nodeMask - clusterMask) blocks tracked in a bitmap, and
``allocate_next`` is next-fit from the block after the last allocation, so on
10.244.0.0/16 the first node gets 10.244.0.0/24. ``occupy`` marks existing podCIDRs as
used on restart (a CIDR larger than a block marks every block it covers, a smaller one
the block holding it), ``release`` clears them.

``RangeAllocator`` holds one ``CIDRSet`` per family (at most one IPv4 and one IPv6
cluster CIDR, as ``--cluster-cidr`` allows) and applies the controller's mask checks
(pkg/controller/nodeipam/node_ipam_controller.go). No I/O here: the stores rebuild an
allocator from their leases under their own lock.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable, Mapping, Sequence

from .errors import CIDRExhausted, InvalidCIDR
from .lease import NetworkConfig

__all__ = [
    "Network",
    "CLUSTER_SUBNET_MAX_DIFF",
    "DEFAULT_NODE_MASK_SIZES",
    "CIDRSet",
    "RangeAllocator",
    "allocate_podcidrs",
]

log = logging.getLogger(__name__)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# cidr_set.go: the bitmap is uncompressed, so an IPv6 node mask may be at most 16 bits
# longer than the cluster mask (kubernetes/kubernetes#44918).
CLUSTER_SUBNET_MAX_DIFF = 16
# --node-cidr-mask-size-ipv4 / --node-cidr-mask-size-ipv6 defaults.
DEFAULT_NODE_MASK_SIZES: Mapping[int, int] = {4: 24, 6: 64}


class CIDRSet:
    """The blocks of one cluster CIDR and which of them are in use.

    Not thread-safe: the owner serializes calls (the stores hold their lock).
    """

    def __init__(self, cluster_cidr: Network, node_mask_size: int) -> None:
        bits = cluster_cidr.max_prefixlen
        if not 0 <= node_mask_size <= bits:
            raise InvalidCIDR(f"node CIDR mask size {node_mask_size} is not valid for "
                              f"IPv{cluster_cidr.version} (0..{bits})")
        if cluster_cidr.prefixlen > node_mask_size:
            # node_ipam_controller.go NewNodeIpamController
            raise InvalidCIDR(
                f"Invalid --cluster-cidr {cluster_cidr}, mask size of cluster CIDR must be "
                f"less than or equal to --node-cidr-mask-size ({node_mask_size}) "
                "configured for CIDR family")
        if cluster_cidr.version == 6 and \
                node_mask_size - cluster_cidr.prefixlen > CLUSTER_SUBNET_MAX_DIFF:
            # cidr_set.go ErrCIDRSetSubNetTooBig
            raise InvalidCIDR(f"New CIDR set failed; the node CIDR size is too big "
                              f"(/{node_mask_size} in {cluster_cidr}: at most "
                              f"{CLUSTER_SUBNET_MAX_DIFF} bits more than the cluster mask)")
        self.cluster_cidr = cluster_cidr
        self.node_mask_size = node_mask_size
        self.max_cidrs = 1 << (node_mask_size - cluster_cidr.prefixlen)
        self._shift = bits - node_mask_size
        self._base = int(cluster_cidr.network_address)
        self._allocated = 0
        self._next_candidate = 0
        # Grown on demand like Go's big.Int, so a sparse /8 of /32s stays small.
        self._used = bytearray()

    @property
    def allocated(self) -> int:
        """How many blocks are in use."""
        return self._allocated

    def block(self, index: int) -> Network:
        """The *index*-th block (cidr_set.go ``indexToCIDRBlock``)."""
        if not 0 <= index < self.max_cidrs:
            raise InvalidCIDR(f"block index {index} out of range 0..{self.max_cidrs - 1}")
        cls = type(self.cluster_cidr)
        return cls((self._base | (index << self._shift), self.node_mask_size))

    def index_of(self, cidr: Network) -> int:
        """The index of the block holding *cidr*'s first address (``getIndexForCIDR``)."""
        self._check_family(cidr)
        index = (self._base ^ int(cidr.network_address)) >> self._shift
        if index >= self.max_cidrs:
            raise InvalidCIDR(f"CIDR: {cidr.network_address}/{self.node_mask_size} is out of "
                              "the range of CIDR allocator")
        return index

    def is_used(self, cidr: Network) -> bool:
        """Whether every block *cidr* covers is in use."""
        begin, end = self._indices(cidr)
        return all(self._bit(i) for i in range(begin, end + 1))

    def allocate_next(self) -> Network:
        """Mark the next free block used and return it; ``CIDRExhausted`` if none is left."""
        if self._allocated == self.max_cidrs:
            raise CIDRExhausted()
        candidate = self._next_candidate
        while self._bit(candidate):
            if candidate % 8 == 0 and self._byte(candidate) == 0xFF:
                candidate = (candidate + 8) % self.max_cidrs   # skip a full byte at once
            else:
                candidate = (candidate + 1) % self.max_cidrs
        self._next_candidate = (candidate + 1) % self.max_cidrs
        self._allocated += self._mark(candidate, candidate, True)
        return self.block(candidate)

    def occupy(self, cidr: Network) -> None:
        """Mark every block *cidr* covers as used; occupying a used block is fine."""
        begin, end = self._indices(cidr)
        self._allocated += self._mark(begin, end, True)

    def release(self, cidr: Network) -> None:
        """Mark every block *cidr* covers as free; releasing a free block is fine."""
        begin, end = self._indices(cidr)
        self._allocated -= self._mark(begin, end, False)

    def resume_after(self, cidr: Network) -> None:
        """Continue next-fit after *cidr*, as if it had been the last allocation.

        The stores rebuild the set for every acquisition and call this with the subnet
        they allocated last, so next-fit survives the rebuild.
        """
        self._next_candidate = (self.index_of(cidr) + 1) % self.max_cidrs

    # -- private -----------------------------------------------------------------

    def _check_family(self, cidr: Network) -> None:
        if cidr.version != self.cluster_cidr.version:
            raise InvalidCIDR(f"cidr {cidr} is out the range of cluster cidr {self.cluster_cidr}")

    def _indices(self, cidr: Network) -> tuple[int, int]:
        """cidr_set.go ``getBeginningAndEndIndices``."""
        self._check_family(cidr)
        if not self.cluster_cidr.overlaps(cidr):
            raise InvalidCIDR(f"cidr {cidr} is out the range of cluster cidr {self.cluster_cidr}")
        if self.cluster_cidr.prefixlen >= cidr.prefixlen:
            return 0, self.max_cidrs - 1    # the whole cluster CIDR, or more
        first = int(cidr.network_address) >> self._shift
        last = int(cidr.broadcast_address) >> self._shift
        base = self._base >> self._shift
        return first ^ base, last ^ base

    def _byte(self, index: int) -> int:
        byte = index >> 3
        return self._used[byte] if byte < len(self._used) else 0

    def _bit(self, index: int) -> bool:
        return bool(self._byte(index) & (1 << (index & 7)))

    def _mark(self, begin: int, end: int, value: bool) -> int:
        """Set bits begin..end to *value*; return how many changed."""
        if value and len(self._used) <= end >> 3:
            self._used.extend(bytes((end >> 3) + 1 - len(self._used)))
        end = min(end, len(self._used) * 8 - 1)   # bits past the end are already 0
        changed = 0
        i = begin
        while i <= end:
            if i & 7 == 0 and i + 7 <= end:
                stop = (end + 1) >> 3                 # whole bytes i>>3 .. stop-1
                start = i >> 3
                ones = int.from_bytes(self._used[start:stop], "big").bit_count()
                width = stop - start
                changed += width * 8 - ones if value else ones
                self._used[start:stop] = (b"\xff" if value else b"\x00") * width
                i = stop << 3
                continue
            mask = 1 << (i & 7)
            if bool(self._used[i >> 3] & mask) != value:
                self._used[i >> 3] ^= mask
                changed += 1
            i += 1
        return changed


class RangeAllocator:
    """Node podCIDRs from up to one IPv4 and one IPv6 cluster CIDR (dual-stack).

    *node_mask_sizes* maps IP version to mask size, defaulting to 24 and 64.
    Not thread-safe, like ``CIDRSet``.
    """

    def __init__(self, cluster_cidrs: Sequence[Network],
                 node_mask_sizes: Mapping[int, int] | None = None) -> None:
        if not cluster_cidrs:
            raise InvalidCIDR("no cluster CIDR given")
        if len(cluster_cidrs) > 2:
            raise InvalidCIDR(f"{len(cluster_cidrs)} cluster CIDRs given; at most 2 are "
                              "allowed (one per IP family)")
        masks = {**DEFAULT_NODE_MASK_SIZES, **(node_mask_sizes or {})}
        self.sets: dict[int, CIDRSet] = {}
        for cidr in cluster_cidrs:
            if cidr.version in self.sets:
                raise InvalidCIDR(f"cluster CIDRs {', '.join(map(str, cluster_cidrs))} are "
                                  "not dual-stack: at most one per IP family")
            self.sets[cidr.version] = CIDRSet(cidr, masks[cidr.version])

    @classmethod
    def for_network(cls, config: NetworkConfig) -> RangeAllocator:
        """The allocator for a flannel network config (Network/SubnetLen, IPv6...)."""
        cidrs: list[Network] = []
        masks: dict[int, int] = {}
        if config.network is not None:
            cidrs.append(config.network)
            masks[4] = config.subnet_len
        if config.ipv6_network is not None:
            cidrs.append(config.ipv6_network)
            masks[6] = config.ipv6_subnet_len
        return cls(cidrs, masks)

    def allocate(self) -> tuple[Network, ...]:
        """One new podCIDR per family, in cluster CIDR order; all or nothing."""
        got: list[Network] = []
        try:
            for cidr_set in self.sets.values():
                got.append(cidr_set.allocate_next())
        except CIDRExhausted:
            for cidr in got:
                self.release(cidr)
            raise
        return tuple(got)

    def occupy(self, cidr: Network) -> None:
        """Mark *cidr* used in its family's set (``InvalidCIDR`` if outside it)."""
        self._set(cidr).occupy(cidr)

    def release(self, cidr: Network) -> None:
        """Free *cidr* in its family's set (``InvalidCIDR`` if outside it)."""
        self._set(cidr).release(cidr)

    def resume_after(self, cidr: Network) -> None:
        """Continue next-fit in *cidr*'s family after *cidr*."""
        self._set(cidr).resume_after(cidr)

    def fits(self, cidr: Network | None, version: int) -> bool:
        """Whether *cidr* is a block of this allocator's IPv*version* network
        (None fits where that family has no cluster CIDR). flannel's
        ``isSubnetConfigCompat``: leases that do not fit are given a new subnet."""
        cidr_set = self.sets.get(version)
        if cidr is None or cidr_set is None:
            return cidr is None and cidr_set is None
        return (cidr.version == version and cidr.prefixlen == cidr_set.node_mask_size
                and cidr.subnet_of(cidr_set.cluster_cidr))  # type: ignore[arg-type]

    def _set(self, cidr: Network) -> CIDRSet:
        cidr_set = self.sets.get(cidr.version)
        if cidr_set is None:
            raise InvalidCIDR(f"cidr {cidr}: no IPv{cidr.version} cluster CIDR")
        return cidr_set


def allocate_podcidrs(config: NetworkConfig, *, in_use: Iterable[Network],
                      last_allocated: Iterable[Network] = ()) -> tuple[Network, ...]:
    """New podCIDRs (one per family of *config*) avoiding *in_use*, next-fit after
    *last_allocated*. Subnets in use that lie outside the network (left from an older
    config) are skipped: they cannot collide with anything allocated here."""
    allocator = RangeAllocator.for_network(config)
    for cidr in last_allocated:
        try:
            allocator.resume_after(cidr)
        except InvalidCIDR:
            pass        # the network changed since: start from its beginning
    for cidr in in_use:
        try:
            allocator.occupy(cidr)
        except InvalidCIDR as exc:
            log.debug("ignoring podCIDR %s outside the network: %s", cidr, exc)
    return allocator.allocate()
