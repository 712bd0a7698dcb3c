"""Leases: what a pull is working with, kept from garbage collection until it is done.

A pull leases the digests and chain ids it fetches or unpacks before it touches them,
and garbage collection (run under ``lock``) keeps whatever is leased. containerd has
the same idea (its leases keep content a client is writing alive).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable

__all__ = ["Leases"]


class Leases:
    def __init__(self) -> None:
        self.lock = threading.Lock()   # garbage collection holds it while it decides
        self._counts: Counter[str] = Counter()

    def hold(self, held: list[str], names: Iterable[str]) -> None:
        """Lease *names*, recording them in *held* for ``release``."""
        with self.lock:
            for name in names:
                self._counts[name] += 1
                held.append(name)

    def release(self, held: list[str]) -> None:
        with self.lock:
            for name in held:
                self._counts[name] -= 1
                if self._counts[name] <= 0:
                    del self._counts[name]
            held.clear()

    def names(self) -> set[str]:
        """What is leased now (call with ``lock`` held for a consistent answer)."""
        return set(self._counts)
