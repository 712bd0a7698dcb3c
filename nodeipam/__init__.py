"""Node podCIDR allocation: kube-controller-manager's range allocator and two lease
stores, one JSON file for the nodes of one machine and etcd in flannel's own layout.

::

    store = FileLeaseStore("/var/lib/cri-shim/leases.json")
    store.set_network_config(NetworkConfig(network=IPv4Network("10.244.0.0/16")))
    lease = store.acquire("node-a", public_ip="198.18.0.2",
                          backend_data={"VNI": 1, "VtepMAC": "aa:bb:cc:dd:ee:ff"})
    lease.subnet            # IPv4Network('10.244.0.0/24')

``EtcdLeaseStore`` needs the ``etcd3gw`` package and is imported from
``nodeipam.etcdstore`` only when used.
"""

from .allocator import CIDRSet, RangeAllocator, allocate_podcidrs
from .errors import (EXHAUSTED_MESSAGE, CIDRExhausted, InvalidCIDR, LeaseConflict,
                     NetworkConfigNotFound, NodeIPAMError, StoreCorrupt, StoreUnavailable)
from .filestore import FileLeaseStore
from .lease import Lease, LeaseEvent, LeaseStore, NetworkConfig

__all__ = [
    "CIDRSet",
    "RangeAllocator",
    "allocate_podcidrs",
    "EXHAUSTED_MESSAGE",
    "NodeIPAMError",
    "CIDRExhausted",
    "InvalidCIDR",
    "NetworkConfigNotFound",
    "StoreCorrupt",
    "StoreUnavailable",
    "LeaseConflict",
    "FileLeaseStore",
    "Lease",
    "LeaseEvent",
    "LeaseStore",
    "NetworkConfig",
]
