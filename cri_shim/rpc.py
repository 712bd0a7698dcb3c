"""What every CRI method shares: the call's log line, the one error mapping, the
client's deadline, and UNIMPLEMENTED for the methods a servicer does not have."""

from __future__ import annotations

import functools
import logging
import time
from typing import Any, Callable

import grpc

from .api import api_pb2 as pb
from .errors import grpc_status, is_bug

__all__ = ["RUNTIME_NAME", "rpc", "deadline", "answer_unimplemented", "observers", "start_observers"]

log = logging.getLogger("cri_shim.server")

RUNTIME_NAME = "cri-shim"

# Called after every call as fn(method, code, seconds), from the call's thread: the
# metrics hang here; nothing in this module knows them.
observers: list[Callable[[str, grpc.StatusCode, float], None]] = []
start_observers: list[Callable[[str], None]] = []   # fn(method), as a call begins


def _observe(method: str, code: grpc.StatusCode, seconds: float) -> None:
    for fn in observers:
        try:
            fn(method, code, seconds)
        except Exception:
            log.exception("rpc observer %r", fn)


def rpc(method: Callable[..., Any]) -> Callable[..., Any]:
    """Log the call and map any exception to its gRPC status, in one place."""
    name = method.__name__

    @functools.wraps(method)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        start = time.perf_counter()
        for fn in start_observers:
            try:
                fn(name)
            except Exception:
                log.exception("rpc start observer %r", fn)
        sandbox = getattr(request, "pod_sandbox_id", "")
        try:
            reply = method(self, request, context)
        except Exception as exc:
            code, message = grpc_status(exc)
            bug = is_bug(exc)   # only a bug earns a traceback
            level = logging.ERROR if bug or code == grpc.StatusCode.INTERNAL else logging.INFO
            seconds = time.perf_counter() - start
            log.log(level, "cri %s sandbox=%s code=%s duration_ms=%.1f error=%s", name,
                    sandbox[:12] or "-", code.name, seconds * 1e3, message, exc_info=bug)
            _observe(name, code, seconds)
            context.abort(code, _fit_trailer(message))
        seconds = time.perf_counter() - start
        log.info("cri %s sandbox=%s code=OK duration_ms=%.1f", name,
                 (sandbox or getattr(reply, "pod_sandbox_id", ""))[:12] or "-", seconds * 1e3)
        _observe(name, grpc.StatusCode.OK, seconds)
        return reply

    return wrapper


_MAX_MESSAGE = 4096   # bytes: grpc-message travels in a trailer (8 KiB of metadata)


def _fit_trailer(message: str) -> str:
    """*message*, cut in the middle if it would not fit a status trailer (a plugin's
    whole stderr can be in it, as libcni puts it there); the log keeps all of it."""
    data = message.encode()
    if len(data) <= _MAX_MESSAGE:
        return message
    keep = (_MAX_MESSAGE - 64) // 2   # the note below is shorter than 64 bytes
    note = f" ... [{len(data) - 2 * keep} bytes cut] ... "
    return (data[:keep].decode("utf-8", "ignore") + note
            + data[-keep:].decode("utf-8", "ignore"))


def deadline(context: Any) -> float | None:
    """The client's deadline as a ``time.monotonic()`` value (None: it set none)."""
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


def answer_unimplemented(servicer: type, service: str) -> None:
    """Give *servicer* a method answering UNIMPLEMENTED, naming itself, for every method
    of ``runtime.v1.<service>`` it does not define (the generated base classes would
    say "Method not implemented!")."""
    full = f"runtime.v1.{service}"
    ours = [k for k in servicer.__mro__ if k is not object and not k.__module__.endswith("_pb2_grpc")]
    for method in pb.DESCRIPTOR.services_by_name[service].methods_by_name:
        if not any(method in k.__dict__ for k in ours):
            setattr(servicer, method, _not_implemented(full, method))


def _not_implemented(service: str, method: str) -> Callable[..., Any]:
    def handler(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        log.info("cri %s code=UNIMPLEMENTED", method)
        for fn in start_observers:
            fn(method)
        _observe(method, grpc.StatusCode.UNIMPLEMENTED, 0.0)
        context.abort(grpc.StatusCode.UNIMPLEMENTED,
                      f"/{service}/{method} is not implemented by {RUNTIME_NAME}")
    handler.__name__ = method
    return handler
