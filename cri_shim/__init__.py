"""cri-shim: a CRI runtime service for the pod-networking path (sandboxes + CNI)."""

__version__ = "0.1.0"
