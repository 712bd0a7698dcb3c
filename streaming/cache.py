"""Pending streaming requests by token, as kubelet's ``requestCache``: a token is 6
random bytes in URL-safe base64 without padding (8 characters), good for one use
within ``TTL`` (one minute); at most ``MAX_IN_FLIGHT`` wait at once."""

from __future__ import annotations

import base64
import secrets
import threading
import time
from collections import OrderedDict
from typing import Any

__all__ = ["RequestCache", "CacheFull", "TTL", "MAX_IN_FLIGHT"]

TTL = 60.0
MAX_IN_FLIGHT = 1000


class CacheFull(Exception):
    """More than ``MAX_IN_FLIGHT`` requests wait for their client."""


class RequestCache:
    """Thread-safe; expired entries go on every insert and consume."""

    def __init__(self, ttl: float = TTL, max_in_flight: int = MAX_IN_FLIGHT) -> None:
        self.ttl = ttl
        self.max_in_flight = max_in_flight
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, tuple[float, Any]] = OrderedDict()

    def insert(self, request: Any) -> str:
        """Keep *request*; returns its token. Raises CacheFull."""
        with self._lock:
            self._expire()
            if len(self._entries) >= self.max_in_flight:
                raise CacheFull("maximum number of in-flight requests exceeded")
            token = _token()
            while token in self._entries:   # 48 random bits: hardly ever
                token = _token()
            self._entries[token] = (time.monotonic() + self.ttl, request)
            return token

    def consume(self, token: str) -> Any | None:
        """The request of *token*, once; None for an unknown, used or expired token."""
        with self._lock:
            self._expire()
            entry = self._entries.pop(token, None)
            return None if entry is None else entry[1]

    def _expire(self) -> None:
        now = time.monotonic()
        while self._entries:
            token, (deadline, _) = next(iter(self._entries.items()))
            if deadline > now:
                break
            del self._entries[token]

    def __len__(self) -> int:
        with self._lock:
            self._expire()
            return len(self._entries)


def _token() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(6)).rstrip(b"=").decode()
