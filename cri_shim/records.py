"""A directory of records: one small file per key, updated by appending.

A record for key K lives in ``<directory>/K.json``, one JSON document per line; the
last complete line (ending in a newline) is the record. The first ``put`` of a key
writes the file atomically (temp file and rename), later ones append a line, and
after ``MAX_LINES`` lines the file is rewritten with the last one only. A crash
cannot tear a record: a half-written line has no newline yet and is ignored, and
``load`` cuts such a tail off before anything appends after it. The files are not
fsync'ed: the records have to survive the process, not the machine.

Why appending: on this project's ext4 machines, creating a file costs 0.6-0.9 ms of
a cold kernel path (and a rename that replaces a file starts write-back of it), an
append to a file that exists 0.06 ms; every pod's life writes its record three times,
two of them on the paths kubelet waits for (RunPodSandbox, StopPodSandbox).

Keys come from the caller's own ids (64 hex characters), never from a client's names.
Thread safety: calls for different keys may run concurrently; calls for one key must be
serialized by the caller (the sandbox manager holds the sandbox's lock).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator

from atomicfile import write_atomic

from .errors import StoreError

log = logging.getLogger(__name__)

MAX_LINES = 8
_NAME = re.compile(r"(?P<key>[0-9A-Za-z_-]+)\.json\Z")


class RecordFiles:
    """``put``/``delete``/``load`` of byte records under *directory* (made 0700).
    *kind* names the records in errors (``sandbox record``). A record's bytes must
    not contain a newline (compact JSON has none)."""

    def __init__(self, directory: str, kind: str = "record") -> None:
        self.directory = directory
        self.kind = kind
        self._lines: dict[str, int] = {}   # key -> complete lines in its file
        os.makedirs(directory, mode=0o700, exist_ok=True)

    def path(self, key: str) -> str:
        return os.path.join(self.directory, f"{key}.json")

    def put(self, key: str, data: bytes) -> None:
        """Make *data* the record of *key*. Raises ``StoreError``; the previous
        record is still the record then."""
        if b"\n" in data:
            raise ValueError("a record must be one line")
        path = self.path(key)
        lines = self._lines.get(key, 0)
        try:
            if 0 < lines < MAX_LINES:
                fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
                try:
                    _write_all(fd, data + b"\n")
                finally:
                    os.close(fd)
                self._lines[key] = lines + 1
                return
            write_atomic(path, data + b"\n", mode=0o600)
        except OSError as exc:
            raise StoreError(f"cannot write {self.kind} {path}", path, exc.errno,
                             detail=exc.strerror or str(exc)) from exc
        self._lines[key] = 1

    def delete(self, key: str) -> None:
        """Remove the record of *key*; a missing one is fine. Raises ``StoreError``."""
        self._lines.pop(key, None)
        path = self.path(key)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise StoreError(f"cannot remove {self.kind} {path}", path, exc.errno) from exc

    def load(self) -> Iterator[tuple[str, str, bytes]]:
        """(key, path, bytes) of every record. Temp files a crash left are removed, a
        torn last line is cut off; an unreadable file is logged and skipped."""
        for entry in sorted(os.listdir(self.directory)):
            path = os.path.join(self.directory, entry)
            if entry.endswith(".tmp"):
                _unlink_quietly(path)   # a first write cut short
                continue
            m = _NAME.match(entry)
            if m is None:
                continue
            try:
                with open(path, "rb") as f:
                    data = f.read()
            except OSError as exc:
                log.error("%s %s: cannot read (%s)", self.kind, path, exc)
                continue
            lines = data.split(b"\n")
            if len(lines) == 1:        # no newline at all: written whole by an older
                record, complete = lines[0], 0   # cri-shim; the next put rewrites it
            else:
                complete = len(lines) - 1
                record = lines[-2]
                if lines[-1]:          # a torn append: rewrite before anything follows it
                    log.warning("%s %s: dropping a half-written last line", self.kind, path)
                    complete = 0
            self._lines[m["key"]] = complete
            yield m["key"], path, record

    def set_aside(self, key: str, path: str) -> str:
        """Move an unusable record out of the way (``<path>.corrupt``) for a human
        to look at; the key is free again. Returns the new path."""
        self._lines.pop(key, None)
        os.replace(path, path + ".corrupt")
        return path + ".corrupt"


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError as exc:
        log.warning("cannot remove %s: %s", path, exc)
