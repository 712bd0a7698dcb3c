"""Knowing at once when a container's conmon exits (it writes the exit code, then
exits): one thread waiting on a pidfd per conmon.

conmon is not our child (it detaches), so it cannot be waited for; a pidfd
(``pidfd_open``, Linux 5.3) becomes readable when the process exits, whoever its
parent is. ``watch`` adds one; the callback runs on the monitor's thread and must not
block for long. A pid is checked against the start time recorded with it, so a pid
reused by another process after a restart is not mistaken for the conmon.
"""

from __future__ import annotations

import logging
import os
import select
import threading
from collections.abc import Callable

__all__ = ["ExitMonitor", "start_time"]

log = logging.getLogger(__name__)


def start_time(pid: int) -> int:
    """Field 22 of ``/proc/<pid>/stat`` (clock ticks after boot); 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return 0
    fields = text[text.rfind(")") + 2:].split()
    return int(fields[19]) if len(fields) > 19 else 0


class ExitMonitor:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._poll = select.poll()
        self._watched: dict[int, tuple[str, Callable[[str], None]]] = {}   # fd -> (key, cb)
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._poll.register(self._wake_r, select.POLLIN)
        self._thread = threading.Thread(target=self._run, name="exit-monitor", daemon=True)
        self._closed = False
        self._thread.start()

    def watch(self, key: str, pid: int, start: int, on_exit: Callable[[str], None]) -> bool:
        """Call ``on_exit(key)`` when process *pid* (started at *start*) exits; now,
        on this thread, if it is gone already. Returns whether it was running."""
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            on_exit(key)
            return False
        if start and start_time(pid) != start:
            os.close(fd)
            on_exit(key)
            return False
        with self._lock:
            self._watched[fd] = (key, on_exit)
            self._poll.register(fd, select.POLLIN)
        os.write(self._wake_w, b"x")
        return True

    def _run(self) -> None:
        while not self._closed:
            try:
                events = self._poll.poll()
            except InterruptedError:
                continue
            for fd, _ in events:
                if fd == self._wake_r:
                    try:
                        os.read(self._wake_r, 4096)
                    except BlockingIOError:
                        pass
                    continue
                with self._lock:
                    entry = self._watched.pop(fd, None)
                    try:
                        self._poll.unregister(fd)
                    except KeyError:
                        pass
                os.close(fd)
                if entry is not None:
                    try:
                        entry[1](entry[0])
                    except Exception:   # a callback's bug must not stop the monitor
                        log.exception("exit callback for %s failed", entry[0])

    def close(self) -> None:
        self._closed = True
        os.write(self._wake_w, b"x")
        self._thread.join(timeout=2)
