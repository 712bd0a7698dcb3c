"""Single flight: concurrent callers of one piece of work share one run of it.

Two pulls of one image (with the same credentials), or two pulls that need one blob or
one snapshot, do the work once; the others wait for its outcome. A caller that joined a
run which failed runs the work once itself before giving up: the run it joined may have
failed for a reason of its own (another caller's source, another caller's registry).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import TypeVar

from .errors import ImageError

__all__ = ["SingleFlight"]

T = TypeVar("T")


class SingleFlight:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._flights: dict[str, Future] = {}

    def do(self, key: str, fn: Callable[[], T], *, retry: bool = True) -> T:
        """Run *fn* unless a run under *key* is in flight: then wait for that run's
        outcome (and, when it failed with an ``ImageError``, run once more)."""
        with self._lock:
            flight = self._flights.get(key)
            owner = flight is None
            if flight is None:
                flight = self._flights[key] = Future()
        if not owner:
            try:
                return flight.result()
            except ImageError:
                if not retry:
                    raise
                return self.do(key, fn, retry=False)
        try:
            result = fn()
        except BaseException as exc:
            flight.set_exception(exc)
            raise
        else:
            flight.set_result(result)
            return result
        finally:
            with self._lock:
                self._flights.pop(key, None)

    def in_flight(self) -> int:
        with self._lock:
            return len(self._flights)
