"""Exec, Attach and PortForward: the CRI calls that answer a streaming URL, and the
runtime the streaming server drives (``streaming.runtime.Runtime``) over the container
and sandbox managers.

Validation is kubelet's streaming server's (the same words); the URL is the streaming
server's, single use for a minute. What runs there:

- exec: the container's process spec with the command, through ``runtime.execstream``
  (``runc exec``); a non-zero exit is containerd's ``error executing command [ARGS],
  exit code N``;
- attach: conmon's attach socket (``runtime.attach``);
- port forward: a socket the netns pinner made in the pod's netns, connected to
  ``localhost:PORT`` (no process per connection).
"""

from __future__ import annotations

import logging
import socket
from typing import Any

from runtime.attach import attach
from runtime.execstream import exec_stream
from streaming.cache import CacheFull
from streaming.runtime import ExitError, StreamingError, StreamIO
from streaming.server import AttachRequest, ExecRequest, PortForwardRequest, StreamServer

from . import netns
from .containers import ContainerManager
from .errors import FailedPrecondition, InvalidArgument, ResourceExhausted
from .manager import SandboxManager
from .store import READY

__all__ = ["ShimStreamRuntime", "Streams"]

log = logging.getLogger(__name__)


class ShimStreamRuntime:
    """``streaming.runtime.Runtime`` over cri-shim's managers."""

    def __init__(self, containers: ContainerManager, sandboxes: SandboxManager) -> None:
        self.containers, self.sandboxes = containers, sandboxes

    def _running(self, container_id: str) -> Any:
        try:
            return self.containers.running(container_id)
        except Exception as exc:   # gone or stopped since the URL was handed out
            raise StreamingError(str(exc)) from exc

    def exec(self, container_id: str, cmd: list[str], io: StreamIO) -> None:
        rec = self._running(container_id)
        process = dict(self.containers.spec(rec).get("process") or {})
        process.update(args=list(cmd))
        process.pop("consoleSize", None)
        code = exec_stream(self.containers.runtime_of(rec), rec.id, process,
                           work_dir=rec.bundle, io=io)
        if code != 0:
            raise ExitError(f"error executing command [{' '.join(cmd)}], exit code {code}", code)

    def attach(self, container_id: str, io: StreamIO) -> None:
        rec = self._running(container_id)
        if io.tty and not rec.config.get("tty"):
            raise StreamingError(f"container {rec.id} has no tty: attach without one")
        attach(rec.bundle, io)

    def port_forward(self, sandbox_id: str, port: int) -> socket.socket:
        try:
            rec = self.sandboxes.get(sandbox_id)
        except Exception as exc:
            raise StreamingError(str(exc)) from exc
        if rec.state != READY:
            raise StreamingError(f'sandbox "{rec.id}" is not running')
        if not rec.netns_path:   # a host-network pod: the node's localhost
            try:
                conn = socket.create_connection(("127.0.0.1", port), timeout=10)
                conn.settimeout(None)
                return conn
            except OSError as exc:
                raise StreamingError(f"failed to connect to localhost:{port}: {exc.strerror}") from exc
        try:
            return netns.connect(rec.netns_path, port)
        except OSError as exc:
            raise StreamingError(f"failed to connect to localhost:{port} inside namespace "
                                 f'"{rec.id}": {exc.strerror or exc}') from exc


class Streams:
    """The three calls' logic, for the servicer."""

    def __init__(self, server: StreamServer, containers: ContainerManager,
                 sandboxes: SandboxManager) -> None:
        self.server, self.containers, self.sandboxes = server, containers, sandboxes

    def exec(self, container_id: str, cmd: list[str], stdin: bool, stdout: bool, stderr: bool,
             tty: bool) -> str:
        self._check_io(container_id, stdin, stdout, stderr, tty, "or")
        if not cmd:
            raise InvalidArgument("missing required cmd")
        rec = self.containers.running(container_id)
        return self._url(self.server.get_exec, ExecRequest(rec.id, tuple(cmd), stdin, stdout, stderr, tty))

    def attach(self, container_id: str, stdin: bool, stdout: bool, stderr: bool, tty: bool) -> str:
        self._check_io(container_id, stdin, stdout, stderr, tty, "and")
        rec = self.containers.running(container_id)
        return self._url(self.server.get_attach, AttachRequest(rec.id, stdin, stdout, stderr, tty))

    def port_forward(self, sandbox_id: str, ports: list[int]) -> str:
        if not sandbox_id:
            raise InvalidArgument("missing required pod_sandbox_id")
        for port in ports:
            if not 0 < port <= 65535:
                raise InvalidArgument(f"invalid port {port}")
        rec = self.sandboxes.get(sandbox_id)
        if rec.state != READY:
            raise FailedPrecondition(f'sandbox "{rec.id}" is not running')
        return self._url(self.server.get_port_forward, PortForwardRequest(rec.id, tuple(ports)))

    @staticmethod
    def _check_io(container_id: str, stdin: bool, stdout: bool, stderr: bool, tty: bool,
                  word: str) -> None:
        if not container_id:
            raise InvalidArgument("missing required container_id")
        if tty and stderr:
            raise InvalidArgument("tty and stderr cannot both be true")
        if not (stdin or stdout or stderr):
            raise InvalidArgument(f"one of stdin, stdout, {word} stderr must be set")


    @staticmethod
    def _url(get: Any, request: Any) -> str:
        try:
            return get(request)
        except CacheFull as exc:
            raise ResourceExhausted(str(exc)) from exc
