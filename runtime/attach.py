"""Attach to a container's stdio through conmon's attach socket, as CRI-O does.

conmon (with ``--full-attach``) listens on ``<bundle>/attach``, a SOCK_SEQPACKET unix
socket: each packet it sends is one byte naming the stream (2 stdout, 3 stderr) and
the bytes; what is written to it goes to the container's stdin, and shutting down our
writing side closes the container's stdin when it was created with ``stdin_once``.
Resizes are ``1 HEIGHT WIDTH`` lines on the ``ctl`` FIFO. The socket is reached
through ``/proc/self/fd/N/attach`` of the opened bundle, so a long bundle path does
not run into the 108 bytes of a unix socket address.
"""

from __future__ import annotations

import os
import socket
import threading
from typing import Any

from .conmon import Conmon
from .errors import AttachFailed

__all__ = ["attach", "PIPE_STDOUT", "PIPE_STDERR", "AttachFailed"]

PIPE_STDOUT, PIPE_STDERR = 2, 3
PACKET = 8192 + 1


def attach(bundle: str, io: Any) -> None:
    """Join *io* (a ``streaming.runtime.StreamIO``) to the container's stdio until
    the container's output ends (it exited) or the client goes."""
    dir_fd = os.open(bundle, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        try:
            sock.connect(f"/proc/self/fd/{dir_fd}/attach")
        except OSError as exc:
            raise AttachFailed(f"cannot reach the container's attach socket in {bundle}",
                               exc.errno) from exc
        finally:
            os.close(dir_fd)
        if io.stdin is not None:
            threading.Thread(target=_stdin, args=(io.stdin, sock), daemon=True,
                             name="attach-stdin").start()
        if io.resize is not None:
            threading.Thread(target=_resizes, args=(io.resize, bundle), daemon=True,
                             name="attach-resize").start()
        threading.Thread(target=_cancel, args=(io, sock), daemon=True, name="attach-cancel").start()
        _output(sock, io)
    finally:
        sock.close()


def _output(sock: socket.socket, io: Any) -> None:
    while True:
        try:
            packet = sock.recv(PACKET)
        except OSError:
            return
        if not packet:
            return
        writer = io.stdout if packet[0] == PIPE_STDOUT else io.stderr if packet[0] == PIPE_STDERR else None
        if writer is not None and len(packet) > 1:
            try:
                writer.write(packet[1:])
            except OSError:
                return   # the client is gone; the container is left as it is


def _stdin(reader: Any, sock: socket.socket) -> None:
    try:
        while True:
            chunk = reader.read(PACKET - 1)
            if not chunk:
                break
            sock.sendall(chunk)
        sock.shutdown(socket.SHUT_WR)   # conmon closes the container's stdin (stdin_once)
    except OSError:
        pass


def _resizes(sizes: Any, bundle: str) -> None:
    while True:
        size = sizes.get()
        if size is None:
            return
        try:
            Conmon.control(bundle, f"1 {size.height} {size.width}\n")
        except OSError:
            return


def _cancel(io: Any, sock: socket.socket) -> None:
    io.cancelled.wait()
    try:
        sock.shutdown(socket.SHUT_RDWR)   # the client went: stop reading for it
    except OSError:
        pass
