"""What the streaming server asks of a container runtime (kubelet's streaming
``Runtime``: Exec, Attach, PortForward), and the stdio it hands over.

A runtime reads ``StreamIO.stdin`` to its end (b"": the client closed stdin), writes
``stdout`` and ``stderr``, applies ``resize`` events to the terminal, and stops what it
started when ``cancelled`` is set (the client went away). It never closes the streams:
the protocol does that, after the status.
"""

from __future__ import annotations

import queue
import socket
import threading
from dataclasses import dataclass, field
from typing import Protocol

__all__ = ["TerminalSize", "ResizeQueue", "Reader", "Writer", "StreamIO", "Runtime",
           "ExitError", "StreamingError"]


@dataclass(frozen=True)
class TerminalSize:
    width: int
    height: int


class ResizeQueue:
    """Terminal sizes in the order the client sent them; ``get`` returns None once
    the client is gone (or after *timeout*)."""

    def __init__(self) -> None:
        self._q: queue.Queue[TerminalSize | None] = queue.Queue()

    def put(self, size: TerminalSize | None) -> None:
        self._q.put(size)

    def get(self, timeout: float | None = None) -> TerminalSize | None:
        try:
            return self._q.get(timeout=timeout)
        except queue.Empty:
            return None

    def close(self) -> None:
        self._q.put(None)


class Reader(Protocol):
    def read(self, size: int = 65536) -> bytes: ...


class Writer(Protocol):
    def write(self, data: bytes) -> None: ...


@dataclass
class StreamIO:
    stdin: Reader | None = None
    stdout: Writer | None = None
    stderr: Writer | None = None
    tty: bool = False
    resize: ResizeQueue | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)


class StreamingError(Exception):
    """The runtime could not do what was asked (the message says what); the client
    gets it on the error stream."""


class ExitError(Exception):
    """The command ran and exited non-zero (kubelet's ``exec.CodeExitError``)."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class Runtime(Protocol):
    def exec(self, container_id: str, cmd: list[str], io: StreamIO) -> None:
        """Run *cmd* in the container with *io*; raise ExitError for a non-zero exit,
        StreamingError when it cannot run."""

    def attach(self, container_id: str, io: StreamIO) -> None:
        """Join the container's stdio until it exits or the client goes."""

    def port_forward(self, sandbox_id: str, port: int) -> socket.socket:
        """A TCP connection to ``localhost:port`` in the pod's network namespace.
        Raise StreamingError when there is none to be had."""
