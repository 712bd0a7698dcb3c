"""The node IPAM error tree.

::

    NodeIPAMError                 every error of this package (``reason``: a short
    │                             CamelCase word for events and logs)
    ├── CIDRExhausted             no podCIDR left in the cluster CIDR; the message is
    │                             kube-controller-manager's, reason ``CIDRNotAvailable``
    ├── InvalidCIDR               a CIDR or mask size the allocator cannot take: a podCIDR
    │                             outside the network, a node mask shorter than the
    │                             cluster's, two cluster CIDRs of one family, ...
    ├── NetworkConfigNotFound     the store holds no network config yet
    ├── StoreCorrupt              the store holds something unreadable (carries the
    │                             file path or etcd key)
    ├── StoreUnavailable          the store cannot be reached (etcd down): retry later
    └── LeaseConflict             someone else holds the subnet, or a race was lost
                                  too many times

Lower-layer errors (``OSError``, etcd3gw's and requests' exceptions) are mapped to this
tree in one place per backend (``FileRegistry._read``/``_locked``, ``EtcdRegistry._etcd``),
always with ``raise ... from exc``.
"""

from __future__ import annotations

__all__ = [
    "EXHAUSTED_MESSAGE",
    "NodeIPAMError",
    "CIDRExhausted",
    "InvalidCIDR",
    "NetworkConfigNotFound",
    "StoreCorrupt",
    "StoreUnavailable",
    "LeaseConflict",
]

# kubernetes pkg/controller/nodeipam/ipam/cidrset/cidr_set.go ErrCIDRRangeNoCIDRsRemaining
EXHAUSTED_MESSAGE = (
    "CIDR allocation failed; there are no remaining CIDRs left to allocate in the accepted range"
)


class NodeIPAMError(Exception):
    """Base of every node IPAM error."""

    reason = "NodeIPAMError"


class CIDRExhausted(NodeIPAMError):
    """Every block of the cluster CIDR is in use.

    ``reason`` is the event reason kube-controller-manager records on the node
    (``CIDRNotAvailable``, pkg/controller/nodeipam/ipam/range_allocator.go).
    """

    reason = "CIDRNotAvailable"

    def __init__(self, message: str = EXHAUSTED_MESSAGE) -> None:
        super().__init__(message)


class InvalidCIDR(NodeIPAMError, ValueError):
    """A CIDR or a mask size that does not fit the cluster network."""

    reason = "InvalidCIDR"


class NetworkConfigNotFound(NodeIPAMError):
    """No network config has been stored yet (flannel: ``errConfigNotFound``)."""

    reason = "NetworkConfigNotFound"


class StoreCorrupt(NodeIPAMError):
    """The store holds data that cannot be decoded; ``where`` names the file or key."""

    reason = "StoreCorrupt"

    def __init__(self, where: str, detail: str) -> None:
        super().__init__(f"{where}: {detail}")
        self.where = where


class StoreUnavailable(NodeIPAMError):
    """The store cannot be reached right now; callers retry with backoff."""

    reason = "StoreUnavailable"


class LeaseConflict(NodeIPAMError):
    """The subnet belongs to someone else, or the race for a subnet was lost too often."""

    reason = "LeaseConflict"
