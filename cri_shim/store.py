"""The on-disk sandbox store: one JSON file per sandbox under ``<root>/sandboxes``.

Each record is written atomically (``cri_shim.records``: a new generation under a
fresh name, then the old one removed), mode 0600, with a schema version. The record of a new sandbox is written *before* its
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
from dataclasses import dataclass, field
from typing import Any, Iterator, Protocol

from .records import RecordFiles

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
    runtime_handler: str = ""            # RunPodSandboxRequest.runtime_handler
    pod_env: bool = False                # has a pod directory (IPC/UTS pins, files, shm)
    pid_init: dict[str, int] | None = None   # the PID namespace's init (PodEnvironment)
    trace: dict[str, Any] = field(default_factory=dict)   # "run", "stop": cri_shim.trace JSON
    teardown_started: bool = False       # a StopPodSandbox began its DELs (a retry repeats them)

    @property
    def labels(self) -> dict[str, str]:
        return dict(self.config.get("labels", {}))

    def replace(self, **changes: Any) -> "SandboxRecord":
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        # Field by field rather than dataclasses.asdict, which deep-copies the config
        # and results first (0.2 ms a record: three writes in every pod's life).
        d: dict[str, Any] = {"schema_version": SCHEMA_VERSION}
        for f in _RECORD_FIELDS:
            d[f] = getattr(self, f)
        d["networks"] = [n.to_json() for n in self.networks]
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "SandboxRecord":
        if d.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(f"unsupported schema_version {d.get('schema_version')!r}")
        # Keys this version does not know (a newer one's, say) are dropped, not fatal.
        d = {k: v for k, v in d.items() if k in _RECORD_FIELDS}
        d["networks"] = tuple(PlannedNetwork.from_json(n) for n in d.get("networks", ()))
        if d.get("state") not in STATES:
            raise ValueError(f"unknown state {d.get('state')!r}")
        return cls(**d)


_RECORD_FIELDS = tuple(f.name for f in dataclasses.fields(SandboxRecord))


class Store(Protocol):
    """What the sandbox manager needs from persistence (tests use an in-memory one).
    ``put`` and ``delete`` raise ``StoreError``."""

    def put(self, rec: SandboxRecord) -> None: ...
    def delete(self, sandbox_id: str) -> None: ...
    def load_all(self) -> Iterator[SandboxRecord]: ...


class FileStore:
    """Sandbox records as JSON files under *directory* (``cri_shim.records``)."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self._files = RecordFiles(directory, "sandbox record")

    def put(self, rec: SandboxRecord) -> None:
        """Write *rec* atomically. Raises ``StoreError`` (nothing half-written stays)."""
        self._files.put(rec.id, json.dumps(rec.to_json(), separators=(",", ":")).encode())

    def delete(self, sandbox_id: str) -> None:
        """Remove a record; a missing one is fine. Raises ``StoreError``."""
        self._files.delete(sandbox_id)

    def load_all(self) -> Iterator[SandboxRecord]:
        for key, path, data in self._files.load():
            try:
                rec = SandboxRecord.from_json(json.loads(data))
                if rec.id != key:
                    raise ValueError(f"holds sandbox {rec.id!r}")
            except (ValueError, TypeError, KeyError) as exc:
                # Keep it for a human to look at, out of the way of the next start.
                moved = self._files.set_aside(key, path)
                log.error("sandbox store: cannot read %s (%s); moved to %s", path, exc, moved)
                continue
            yield rec


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
