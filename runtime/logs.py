"""The CRI container log format (what conmon writes, kubelet and ``crictl logs`` read).

One line per chunk: ``<RFC 3339 timestamp> <stdout|stderr> <F|P> <content>``. ``F``
ends a line (the content had its newline), ``P`` is part of one (the newline after it
is the format's, not the content's).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

__all__ = ["LogEntry", "parse_cri_log"]


@dataclass(frozen=True)
class LogEntry:
    timestamp: str
    stream: str
    partial: bool
    content: bytes      # with its newline when the line is full


def parse_cri_log(data: bytes) -> Iterator[LogEntry]:
    """Every well-formed line of *data*; a torn last line is skipped."""
    for line in data.split(b"\n")[:-1]:   # the last piece is "" or a torn line
        parts = line.split(b" ", 3)
        if len(parts) < 3 or parts[1] not in (b"stdout", b"stderr") or parts[2] not in (b"F", b"P"):
            continue
        content = parts[3] if len(parts) == 4 else b""
        partial = parts[2] == b"P"
        yield LogEntry(parts[0].decode(), parts[1].decode(), partial,
                       content if partial else content + b"\n")
