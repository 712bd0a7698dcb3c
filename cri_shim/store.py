"""The on-disk sandbox store: one JSON file per sandbox under ``<root>/sandboxes``.

Each record is written atomically (temp file in the same directory + ``os.replace``),
mode 0600, with a schema version. The record of a new sandbox is written *before* its
netns is pinned or any plugin runs (state ``creating``, with the netns path and the
networks it is about to attach), so a crash at any point leaves enough on disk for the
next start to finish the teardown: no pinned netns, no reserved IP is forgotten.

Writes are not fsync'ed: the store has to survive a crash of the process, not of the
machine (after a reboot every netns is gone anyway).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Iterator, Protocol

from cni._atomic import write_atomic

from .errors import StoreError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1

# Sandbox states as stored; the servicer maps them to CRI's PodSandboxState.
CREATING = "creating"   # intent recorded, network set-up may be half done
READY = "ready"
NOTREADY = "notready"   # stopped: network torn down, netns unpinned
STATES = (CREATING, READY, NOTREADY)


@dataclass(frozen=True, kw_only=True)
class PlannedNetwork:
    """One network a sandbox is (about to be) attached to, with the config to undo it."""

    name: str
    ifname: str
    conflist: bytes  # the conflist's raw bytes, as the plugins were (or will be) given them

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "ifname": self.ifname,
                "conflist": base64.b64encode(self.conflist).decode()}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "PlannedNetwork":
        return cls(name=d["name"], ifname=d["ifname"], conflist=base64.b64decode(d["conflist"]))


@dataclass(frozen=True, kw_only=True)
class SandboxRecord:
    id: str
    name: str
    namespace: str
    uid: str
    attempt: int
    state: str
    created_at: int                      # nanoseconds since the epoch
    host_network: bool = False
    netns_path: str = ""                 # empty for host-network sandboxes
    config: dict[str, Any] = field(default_factory=dict)   # PodSandboxConfig, proto JSON names
    networks: tuple[PlannedNetwork, ...] = ()
    results: dict[str, dict[str, Any]] = field(default_factory=dict)  # ifname -> CNI result

    @property
    def labels(self) -> dict[str, str]:
        return dict(self.config.get("labels", {}))

    def replace(self, **changes: Any) -> "SandboxRecord":
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["networks"] = [n.to_json() for n in self.networks]
        return {"schema_version": SCHEMA_VERSION, **d}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "SandboxRecord":
        if d.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(f"unsupported schema_version {d.get('schema_version')!r}")
        d = {k: v for k, v in d.items() if k != "schema_version"}
        d["networks"] = tuple(PlannedNetwork.from_json(n) for n in d.get("networks", ()))
        if d.get("state") not in STATES:
            raise ValueError(f"unknown state {d.get('state')!r}")
        return cls(**d)


class Store(Protocol):
    """What the sandbox manager needs from persistence (tests use an in-memory one).
    ``put`` and ``delete`` raise ``StoreError``."""

    def put(self, rec: SandboxRecord) -> None: ...
    def delete(self, sandbox_id: str) -> None: ...
    def load_all(self) -> Iterator[SandboxRecord]: ...


class FileStore:
    """Records as ``<directory>/<id>.json``."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        os.makedirs(directory, mode=0o700, exist_ok=True)

    def _path(self, sandbox_id: str) -> str:
        return os.path.join(self.directory, f"{sandbox_id}.json")

    def put(self, rec: SandboxRecord) -> None:
        """Write *rec* atomically. Raises ``StoreError`` (nothing half-written stays)."""
        data = json.dumps(rec.to_json(), separators=(",", ":")).encode()
        path = self._path(rec.id)
        try:
            write_atomic(path, data, mode=0o600)
        except OSError as exc:
            raise StoreError(f"cannot write sandbox record {path}", path, exc.errno,
                             detail=exc.strerror or str(exc)) from exc

    def delete(self, sandbox_id: str) -> None:
        """Remove a record; a missing one is fine. Raises ``StoreError``."""
        path = self._path(sandbox_id)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise StoreError(f"cannot remove sandbox record {path}", path, exc.errno) from exc

    def load_all(self) -> Iterator[SandboxRecord]:
        for entry in sorted(os.listdir(self.directory)):
            path = os.path.join(self.directory, entry)
            if entry.endswith(".tmp"):
                os.unlink(path)  # a write interrupted by a crash
                continue
            if not entry.endswith(".json"):
                continue
            try:
                with open(path, "rb") as f:
                    yield SandboxRecord.from_json(json.load(f))
            except (OSError, ValueError, TypeError, KeyError) as exc:
                # Keep it for a human to look at, out of the way of the next start.
                log.error("sandbox store: cannot read %s (%s); moved to %s.corrupt", path, exc, path)
                os.replace(path, path + ".corrupt")


class MemoryStore:
    """An in-memory Store for tests."""

    def __init__(self) -> None:
        self.records: dict[str, SandboxRecord] = {}

    def put(self, rec: SandboxRecord) -> None:
        # Round-trip through JSON so tests catch anything that would not persist.
        self.records[rec.id] = SandboxRecord.from_json(json.loads(json.dumps(rec.to_json())))

    def delete(self, sandbox_id: str) -> None:
        self.records.pop(sandbox_id, None)

    def load_all(self) -> Iterator[SandboxRecord]:
        yield from list(self.records.values())
