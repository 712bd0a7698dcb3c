"""Container events for ``GetContainerEvents`` (kubelet's evented PLEG): created,
started, stopped, deleted, each with the container's and its pod's status then.

Every subscriber gets its own bounded queue; one that does not keep up loses its
oldest events (kubelet relists when it falls behind) rather than holding up the
containers that publish them.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Any

__all__ = ["ContainerEvent", "EventBroker", "CREATED", "STARTED", "STOPPED", "DELETED"]

CREATED, STARTED, STOPPED, DELETED = "created", "started", "stopped", "deleted"
QUEUE_SIZE = 1024


@dataclass(frozen=True)
class ContainerEvent:
    kind: str
    container_id: str
    sandbox_id: str
    at: int                 # nanoseconds since the epoch
    record: Any = None      # the container's record after the change


class EventBroker:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscribers: list[queue.Queue[ContainerEvent | None]] = []

    def subscribe(self) -> "queue.Queue[ContainerEvent | None]":
        q: queue.Queue[ContainerEvent | None] = queue.Queue(QUEUE_SIZE)
        with self._lock:
            self._subscribers.append(q)
        return q

    def unsubscribe(self, q: "queue.Queue[ContainerEvent | None]") -> None:
        with self._lock:
            if q in self._subscribers:
                self._subscribers.remove(q)

    def publish(self, event: ContainerEvent) -> None:
        with self._lock:
            subscribers = list(self._subscribers)
        for q in subscribers:
            while True:
                try:
                    q.put_nowait(event)
                    break
                except queue.Full:
                    try:
                        q.get_nowait()
                    except queue.Empty:
                        pass

    def close(self) -> None:
        """Wake every subscriber with None (the server is stopping)."""
        with self._lock:
            subscribers, self._subscribers = self._subscribers, []
        for q in subscribers:
            try:
                q.put_nowait(None)
            except queue.Full:
                pass
