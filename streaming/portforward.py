"""portforward, the server side (kubelet's ``cri/streaming/portforward``).

SPDY (``portforward.k8s.io``): per forwarded connection the client opens a data and an
error stream with the same ``requestID`` and a ``port`` header; once both are there
the data stream is joined to ``localhost:PORT`` in the pod, and a failure is written
on the error stream as kubelet words it. The session lasts until the client closes it.

WebSocket (``v4.channel.k8s.io``, ``v4.base64.channel.k8s.io`` or none): the ports are
the ``port`` query parameters, two channels each (data, error), and the server first
writes the port, 2 bytes little-endian, on both.

The end of a forwarded connection: when the client finishes sending, the pod gets the
half-close and ``HALF_CLOSE_GRACE`` seconds to finish its answer, then both sides are
closed, as containerd does (a pod that never closes cannot hold the connection
forever); when the pod closes, the client's stream ends at once (containerd waits up
to the same second for the client's side first).
"""

from __future__ import annotations

import logging
import select
import socket
import threading
import time
from typing import Any, Callable

from .runtime import Runtime

__all__ = ["PROTOCOL", "SpdyPortForward", "parse_ports", "forward", "PortError"]

log = logging.getLogger(__name__)

PROTOCOL = "portforward.k8s.io"
HALF_CLOSE_GRACE = 1.0   # seconds, containerd's (after socat's default)


class PortError(ValueError):
    pass


def parse_ports(values: list[str]) -> list[int]:
    """The ``port`` query parameters (each may hold several, comma separated), with
    kubelet's errors."""
    if not values:
        raise PortError('query parameter "port" is required')
    ports = []
    for value in values:
        if not value:
            raise PortError('query parameter "port" cannot be empty')
        for part in value.split(","):
            ports.append(_port(value, part))
    return ports


def _port(whole: str, part: str) -> int:
    if not part.isdigit() or not part.isascii():
        raise PortError(f'unable to parse "{whole}" as a port: strconv.ParseUint: parsing '
                        f'"{part}": invalid syntax')
    if int(part) > 65535:
        raise PortError(f'unable to parse "{whole}" as a port: strconv.ParseUint: parsing '
                        f'"{part}": value out of range')
    if int(part) < 1:
        raise PortError(f'port "{whole}" must be > 0')
    return int(part)


def forward(runtime: Runtime, sandbox_id: str, port: int, data: Any, error: Any) -> bool:
    """Join *data* (a stream or channel) to ``localhost:port`` in the pod until either
    side ends; a failure goes on *error* (and False is returned)."""
    try:
        conn = runtime.port_forward(sandbox_id, port)
    except Exception as exc:
        message = f"error forwarding port {port} to pod {sandbox_id}, uid : {exc}"
        log.info("portforward: %s", message)
        try:
            error.write(message.encode())
        except OSError:
            pass
        return False
    with conn:
        client_done = threading.Event()
        up = threading.Thread(target=_client_to_pod, args=(data, conn, client_done), daemon=True,
                              name=f"portforward-{port}")
        up.start()
        try:
            _pod_to_client(conn, data, client_done)
        except OSError:
            pass
        # The pod's side is done (or its grace is over): the client gets the end of
        # data (and error) from the caller; what it still sends is dropped.
        try:
            conn.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
    return True


def _pod_to_client(conn: socket.socket, data: Any, client_done: threading.Event) -> None:
    poller = select.poll()
    poller.register(conn.fileno(), select.POLLIN)
    deadline = None
    while True:
        if deadline is None and client_done.is_set():
            deadline = client_done.at + HALF_CLOSE_GRACE   # type: ignore[attr-defined]
        wait = 0.1 if deadline is None else max(0.0, deadline - time.monotonic())
        if not poller.poll(wait * 1000):
            if deadline is not None and time.monotonic() >= deadline:
                log.debug("portforward: the pod did not close %.0f s after the client", HALF_CLOSE_GRACE)
                return
            continue
        chunk = conn.recv(128 << 10)
        if not chunk:
            return
        data.write(chunk)


def _client_to_pod(data: Any, conn: socket.socket, done: threading.Event) -> None:
    try:
        while True:
            chunk = data.read(1 << 20)
            if not chunk:
                # The client is done sending: say so; if it is gone altogether (a
                # reset, the connection's end), end the pod's side too.
                conn.shutdown(socket.SHUT_RDWR if _gone(data) else socket.SHUT_WR)
                done.at = time.monotonic()   # type: ignore[attr-defined]
                done.set()
                return
            conn.sendall(chunk)
    except OSError:
        pass
    # The pod's side is gone: what the client still sends is dropped, not left to
    # fill the stream (which would stall the whole connection).
    data.stop_reading()


def _gone(stream: Any) -> bool:
    conn = getattr(stream, "conn", None)
    if getattr(stream, "reset_by_peer", False) or getattr(conn, "closed", False):
        return True
    done = getattr(conn, "done", None)
    return bool(done is not None and done.is_set())


class SpdyPortForward:
    """The streams of one SPDY port-forward session: :meth:`accept` is the
    connection's stream callback (it runs on the connection's reader). A pair whose
    second stream does not come within *creation_timeout* is ended by one expiry
    thread per session (running only while pairs wait), not a thread per pair."""

    def __init__(self, runtime: Runtime, sandbox_id: str, creation_timeout: float,
                 spawn: Callable[..., Any] | None = None) -> None:
        self.runtime, self.sandbox_id = runtime, sandbox_id
        self.creation_timeout = creation_timeout
        self._pairs: dict[str, dict[str, Any]] = {}   # in creation order: oldest first
        self._lock = threading.Condition()
        self._expiring = False
        self._spawn = spawn or (lambda fn, *a: threading.Thread(target=fn, args=a, daemon=True).start())

    def accept(self, stream: Any) -> bool:
        port, kind = stream.header("port"), stream.header("streamtype")
        # httpStreamReceived's checks: refused streams are reset
        if not port:
            log.info('portforward: "port" header is required')
            return False
        try:
            _port(port, port)
        except PortError as exc:
            log.info("portforward: %s", exc)
            return False
        if kind not in ("data", "error"):
            log.info("portforward: invalid stream type %r", kind)
            return False
        request = stream.header("requestid")
        if not request:   # clients before requestID: the data stream follows its error stream
            request = str(stream.id - 2) if kind == "data" else str(stream.id)
        start_expiry = False
        with self._lock:
            pair = self._pairs.get(request)
            if pair is None:
                pair = self._pairs[request] = {"started": time.monotonic()}
                start_expiry, self._expiring = not self._expiring, True
            if kind in pair:
                stream.stop_reading()
                message = (f"error processing stream for request {request}: "
                           f"{kind} stream already assigned")
                target = pair.get("error") if kind == "data" else stream
                self._spawn(_write_quietly, target, message)
                return True
            pair[kind] = stream
            if kind == "error":
                stream.stop_reading()   # the client only reads it
            complete = "data" in pair and "error" in pair
            if complete:
                del self._pairs[request]
        if start_expiry:
            self._spawn(self._expire)
        if complete:
            self._spawn(self._run, pair)
        return True

    def _expire(self) -> None:
        """End the pairs that waited too long, oldest first, until none waits."""
        while True:
            with self._lock:
                if not self._pairs:
                    self._expiring = False
                    return
                request, pair = next(iter(self._pairs.items()))
                wait = pair["started"] + self.creation_timeout - time.monotonic()
                if wait > 0:
                    self._lock.wait(wait)
                    continue
                del self._pairs[request]
            message = f"(conn={id(self):#x}, request={request}) timed out waiting for streams"
            log.info("portforward: %s", message)
            for kind in ("error", "data"):
                if kind in pair:
                    if kind == "error":
                        _write_quietly(pair[kind], message)
                    pair[kind].reset()

    def _run(self, pair: dict[str, Any]) -> None:
        data, error = pair["data"], pair["error"]
        port = int(data.header("port"))
        ok = False
        try:
            ok = forward(self.runtime, self.sandbox_id, port, data, error)
        finally:
            data.stop_reading()
            error.stop_reading()
            for stream in (data, error):   # kubelet: closed after a success, reset after a failure
                stream.close() if ok else stream.reset()


def _write_quietly(stream: Any, message: str) -> None:
    if stream is None:
        return
    try:
        stream.write(message.encode())
    except OSError:
        pass
