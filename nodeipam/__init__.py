"""Node podCIDR allocation: kube-controller-manager's range allocator, and the lease
policy (``LeaseManager``, flannel's ``LocalManager``) written once over a small
``Registry``: in memory, one JSON file for the nodes of one machine, or etcd in
flannel's own layout.

::

    store = FileLeaseStore("/var/lib/cri-shim/leases.json")   # LeaseManager(FileRegistry)
    store.set_network_config(NetworkConfig(network=IPv4Network("10.244.0.0/16")))
    lease = store.acquire("198.18.0.2", node="node-a",
                          backend_data={"VNI": 1, "VtepMAC": "aa:bb:cc:dd:ee:ff"})
    lease.subnet            # IPv4Network('10.244.0.0/24')
    store.release("198.18.0.2")     # a lease is identified by its PublicIP

``EtcdLeaseStore``/``EtcdRegistry`` need the ``etcd3gw`` package and are imported from
``nodeipam.etcdstore`` only when used.
"""

from .allocator import CIDRSet, RangeAllocator, allocate_podcidrs
from .errors import (EXHAUSTED_MESSAGE, CIDRExhausted, InvalidCIDR, LeaseConflict,
                     NetworkConfigNotFound, NodeIPAMError, StoreCorrupt, StoreUnavailable)
from .filestore import FileLeaseStore, FileRegistry
from .lease import Lease, LeaseEvent, LeaseStore, NetworkConfig
from .manager import LeaseManager
from .registry import MemoryRegistry, Record, Registry

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
    "FileRegistry",
    "Lease",
    "LeaseEvent",
    "LeaseManager",
    "LeaseStore",
    "MemoryRegistry",
    "NetworkConfig",
    "Record",
    "Registry",
]
