"""The on-disk container store: one record per container under ``<root>/containers``.

As for sandboxes (``cri_shim.store``): each record is written atomically through
``cri_shim.records``, mode 0600, with a schema version. A container's record is
written *before* anything of it is made (state ``creating``, with the paths it is about
to use), so a crash at any point leaves enough for the next start to remove what was
made: the runc state, the conmon process, the rootfs mount, the directories.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from typing import Any, Iterator, Protocol

from .records import RecordFiles

__all__ = ["ContainerRecord", "ContainerStore", "FileContainerStore", "MemoryContainerStore",
           "CREATING", "CREATED", "RUNNING", "EXITED", "STATES"]

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1

CREATING = "creating"   # intent recorded; rootfs, spec or runc state may be half made
CREATED = "created"     # runc created it (conmon holds it), not started
RUNNING = "running"
EXITED = "exited"
STATES = (CREATING, CREATED, RUNNING, EXITED)


@dataclass(frozen=True, kw_only=True)
class ContainerRecord:
    id: str
    sandbox_id: str
    name: str                            # metadata.name
    attempt: int
    state: str
    created_at: int                      # nanoseconds since the epoch
    started_at: int = 0
    finished_at: int = 0
    exit_code: int = 0
    reason: str = ""                     # Completed, Error, OOMKilled, ...
    message: str = ""
    pid: int = 0                         # the container's init, on the host
    conmon_pid: int = 0                  # its conmon, and conmon's start time (a pid
    conmon_start: int = 0                # reused after a restart is not it)
    image: str = ""                      # the image as the client named it
    image_id: str = ""                   # the image's id (config digest)
    image_ref: str = ""                  # what ContainerStatus.image_ref shows
    runtime: str = ""                    # the runtime handler (runc, crun)
    bundle: str = ""                     # the OCI bundle dir (config.json, rootfs)
    log_path: str = ""                   # the CRI log file, absolute ("" for none)
    cgroups_path: str = ""               # the spec's linux.cgroupsPath
    chain_id: str = ""                   # the image's top chain id (kept from GC)
    config: dict[str, Any] = field(default_factory=dict)   # ContainerConfig, proto JSON names
    resources: dict[str, Any] = field(default_factory=dict)   # OCI linux.resources now

    @property
    def labels(self) -> dict[str, str]:
        return dict(self.config.get("labels", {}))

    @property
    def annotations(self) -> dict[str, str]:
        return dict(self.config.get("annotations", {}))

    def replace(self, **changes: Any) -> "ContainerRecord":
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"schema_version": SCHEMA_VERSION}
        for f in _FIELDS:
            d[f] = getattr(self, f)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "ContainerRecord":
        if d.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(f"unsupported schema_version {d.get('schema_version')!r}")
        d = {k: v for k, v in d.items() if k != "schema_version"}
        if d.get("state") not in STATES:
            raise ValueError(f"unknown state {d.get('state')!r}")
        return cls(**d)


_FIELDS = tuple(f.name for f in dataclasses.fields(ContainerRecord))


class ContainerStore(Protocol):
    def put(self, rec: ContainerRecord) -> None: ...
    def delete(self, container_id: str) -> None: ...
    def load_all(self) -> Iterator[ContainerRecord]: ...


class FileContainerStore:
    """Container records as files under *directory* (``cri_shim.records``)."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self._files = RecordFiles(directory, "container record")

    def put(self, rec: ContainerRecord) -> None:
        self._files.put(rec.id, json.dumps(rec.to_json(), separators=(",", ":")).encode())

    def delete(self, container_id: str) -> None:
        self._files.delete(container_id)

    def load_all(self) -> Iterator[ContainerRecord]:
        for key, path, data in self._files.load():
            try:
                rec = ContainerRecord.from_json(json.loads(data))
                if rec.id != key:
                    raise ValueError(f"holds container {rec.id!r}")
            except (ValueError, TypeError, KeyError) as exc:
                moved = self._files.set_aside(key, path)
                log.error("container store: cannot read %s (%s); moved to %s", path, exc, moved)
                continue
            yield rec


class MemoryContainerStore:
    """An in-memory store for tests (records round-trip through JSON)."""

    def __init__(self) -> None:
        self.records: dict[str, ContainerRecord] = {}

    def put(self, rec: ContainerRecord) -> None:
        self.records[rec.id] = ContainerRecord.from_json(json.loads(json.dumps(rec.to_json())))

    def delete(self, container_id: str) -> None:
        self.records.pop(container_id, None)

    def load_all(self) -> Iterator[ContainerRecord]:
        yield from list(self.records.values())
