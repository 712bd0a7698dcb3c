"""remotecommand, the server side (kubelet's ``cri/streaming/remotecommand``): exec and
attach sessions over SPDY streams or WebSocket channels.

Over SPDY the client opens one stream per part, named by its ``streamType`` header
(``error``, ``stdin``, ``stdout``, ``stderr``, ``resize``); the server waits for as
many as the request asked for (the error stream always, resize with a tty from v3 on)
within the stream creation timeout. Protocols, newest first:

- ``v4.channel.k8s.io``: the error stream ends with a ``metav1.Status`` (JSON) carrying
  the exit code; resize stream.
- ``v3.channel.k8s.io``: resize stream; the error stream has the failure message.
- ``v2.channel.k8s.io``: no resize.
- ``channel.k8s.io`` (v1, or no negotiation at all): as kubelet 1.0 did, the error
  stream is reset at once and the server's half of stdin closed.

The end, as kubelet has it: the output streams are closed once the command's output is
all sent, the status goes on the error stream, and the connection is closed.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from . import status as st
from .runtime import ExitError, ResizeQueue, StreamIO, TerminalSize

__all__ = ["Options", "Channels", "PROTOCOLS", "V4", "V3", "V2", "V1", "wait_for_streams",
           "run_session", "decode_resizes"]

log = logging.getLogger(__name__)

V4, V3, V2, V1 = "v4.channel.k8s.io", "v3.channel.k8s.io", "v2.channel.k8s.io", "channel.k8s.io"
PROTOCOLS = (V4, V3, V2, V1)   # kubelet's SupportedStreamingProtocols, in its order
STREAM_TYPES = ("error", "stdin", "stdout", "stderr", "resize")


@dataclass(frozen=True)
class Options:
    """What the cached CRI request asked for (kubelet takes these from the request,
    not from the URL's query)."""
    stdin: bool = False
    stdout: bool = False
    stderr: bool = False
    tty: bool = False


@dataclass
class Channels:
    """The parts of one session, whatever carries them. Writers have ``write`` and
    ``close``; ``status`` encodes the final status for the error channel."""
    error: Any
    stdin: Any = None
    stdout: Any = None
    stderr: Any = None
    resize: Any = None
    status: Callable[[dict[str, Any]], bytes] = st.encode_v4


def wait_for_streams(incoming: "queue.Queue[Any]", protocol: str, opts: Options,
                     timeout: float) -> Channels:
    """Gather the SPDY streams of one session from *incoming* (as the connection
    accepted them). Raises TimeoutError("timed out waiting for client to create
    streams") when they do not all come within *timeout* seconds."""
    expected = 1 + opts.stdin + opts.stdout + opts.stderr + (opts.tty and protocol in (V4, V3))
    got: dict[str, Any] = {}
    deadline = time.monotonic() + timeout
    while len(got) < expected:
        try:
            stream = incoming.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise TimeoutError("timed out waiting for client to create streams") from None
        kind = stream.header("streamtype")
        if kind not in STREAM_TYPES or (kind == "resize" and protocol not in (V4, V3)):
            log.info("remotecommand: unexpected stream type %r", kind)
            stream.stop_reading()   # taken and answered, as kubelet does; never read
            continue
        if kind in got:
            log.info("remotecommand: a second %s stream", kind)
            stream.stop_reading()
            continue
        if kind in ("error", "stdout", "stderr"):
            stream.stop_reading()   # the server writes these; what the client sends is dropped
        got[kind] = stream
    ch = Channels(error=got["error"], stdin=got.get("stdin"), stdout=got.get("stdout"),
                  stderr=got.get("stderr"), resize=got.get("resize"),
                  status=st.encode_v4 if protocol == V4 else st.encode_v1)
    if protocol == V1:
        ch.error.reset()            # kubelet 1.0's deferred Reset, kept by kubelet since
        if ch.stdin is not None:
            ch.stdin.close()        # our half only: the client's stdin still comes in
    return ch


def decode_resizes(reader: Any, sizes: ResizeQueue) -> None:
    """Read JSON ``{"Width": W, "Height": H}`` objects (Go's decoder: keys in any
    case, objects back to back) from *reader* into *sizes* until it ends or sends
    something else; then close *sizes*."""
    decoder = json.JSONDecoder()
    buf = ""
    try:
        while True:
            chunk = reader.read(4096)
            if not chunk:
                return
            buf += chunk.decode("utf-8", "replace")
            while True:
                buf = buf.lstrip()
                if not buf:
                    break
                try:
                    obj, end = decoder.raw_decode(buf)
                except ValueError:
                    if len(buf) > 4096:
                        return    # not a size, and never will be
                    break
                buf = buf[end:]
                if not isinstance(obj, dict):
                    return
                keys = {str(k).lower(): v for k, v in obj.items()}
                try:
                    sizes.put(TerminalSize(int(keys.get("width", 0)), int(keys.get("height", 0))))
                except (TypeError, ValueError):
                    return
    except OSError:
        return
    finally:
        sizes.close()


def run_session(ch: Channels, tty: bool, call: Callable[[StreamIO], None], what: str,
                cancelled: threading.Event) -> dict[str, Any]:
    """Run *call* (the runtime's exec or attach) with the session's stdio, then close
    the output channels and send the status; returns the status. *what* is kubelet's
    wording for a failure ("executing command in container", "attaching to
    container")."""
    sizes = ResizeQueue()
    if ch.resize is not None:
        threading.Thread(target=decode_resizes, args=(ch.resize, sizes), daemon=True,
                         name="resize").start()
    io = StreamIO(stdin=ch.stdin, stdout=ch.stdout, stderr=ch.stderr, tty=tty,
                  resize=sizes if ch.resize is not None else None, cancelled=cancelled)
    try:
        call(io)
        result = st.success()
    except ExitError as exc:
        result = st.exit_code(str(exc), exc.code)
    except Exception as exc:   # the runtime's failure goes to the client, as kubelet's
        log.info("remotecommand: error %s: %s", what, exc)
        result = st.internal_error(f"error {what}: {exc}")
    for out in (ch.stdout, ch.stderr):
        if out is not None:
            _quietly(out.close)
    for unread in (ch.stdin, ch.resize):   # the command is done with them
        if unread is not None:
            unread.stop_reading()
    log.debug("remotecommand: %s ended: %s", what, result)
    payload = ch.status(result)
    if payload:
        _quietly(ch.error.write, payload)
    _quietly(ch.error.close)
    return result


def _quietly(fn: Callable[..., Any], *args: Any) -> None:
    try:
        fn(*args)
    except OSError:
        pass   # the client is gone: nothing to tell it
