"""systemd's readiness protocol (``sd_notify(3)``), for ``Type=notify`` units: a
datagram such as ``READY=1`` to the unix socket named by ``$NOTIFY_SOCKET`` (``@``
first: the abstract namespace). Without ``$NOTIFY_SOCKET`` (not under systemd) it does
nothing. Ten lines of protocol, as containerd's (go-systemd's ``daemon.SdNotify``).

``claim`` takes the variable out of the environment at start: runc, given a
``NOTIFY_SOCKET``, would hand the socket on into containers (its sd-notify proxy)."""

from __future__ import annotations

import logging
import os
import socket

__all__ = ["claim", "notify"]

log = logging.getLogger(__name__)

_claimed: str | None = None


def claim() -> None:
    """Keep ``$NOTIFY_SOCKET`` for :func:`notify` and remove it from the environment
    the server's children get."""
    global _claimed
    _claimed = os.environ.pop("NOTIFY_SOCKET", _claimed or "")


def notify(state: str) -> bool:
    """Send *state* (``READY=1``, ``STOPPING=1``, ``STATUS=...``); whether it was sent."""
    path = _claimed if _claimed is not None else os.environ.get("NOTIFY_SOCKET", "")
    if not path:
        return False
    address = "\0" + path[1:] if path.startswith("@") else path
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(state.encode(), address)
    except OSError as exc:
        log.warning("cannot notify systemd at %s: %s", path, exc)
        return False
    return True
