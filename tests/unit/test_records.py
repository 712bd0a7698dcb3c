"""The record directory: appended lines, compaction, crash leftovers, bad files."""

from __future__ import annotations

import json
import os

import pytest

from cri_shim import records
from cri_shim.errors import StoreError
from cri_shim.records import RecordFiles
from cri_shim.store import CREATING, READY, FileStore, SandboxRecord


def names(d) -> list[str]:
    return sorted(os.listdir(d))


def loaded(d) -> list[tuple[str, bytes]]:
    return [(k, data) for k, _, data in RecordFiles(str(d)).load()]


def test_puts_append_and_the_last_line_is_the_record(tmp_path) -> None:
    files = RecordFiles(str(tmp_path))
    files.put("k", b'"one"')
    files.put("k", b'"two"')
    assert (tmp_path / "k.json").read_bytes() == b'"one"\n"two"\n'
    assert loaded(tmp_path) == [("k", b'"two"')]


def test_long_files_are_rewritten_with_the_last_record(tmp_path) -> None:
    files = RecordFiles(str(tmp_path))
    for i in range(records.MAX_LINES + 1):
        files.put("k", str(i).encode())
    assert (tmp_path / "k.json").read_bytes() == str(records.MAX_LINES).encode() + b"\n"
    assert names(tmp_path) == ["k.json"]


def test_crash_leftovers(tmp_path) -> None:
    (tmp_path / "legacy.json").write_bytes(b'{"old":1}')             # no newline: an older cri-shim
    (tmp_path / "torn.json").write_bytes(b'"intent"\n"rea')          # killed mid-append
    (tmp_path / ".torn.json.0a1b.tmp").write_bytes(b"half")          # killed mid-first-write
    files = RecordFiles(str(tmp_path))
    assert [(k, d) for k, _, d in files.load()] == [("legacy", b'{"old":1}'), ("torn", b'"intent"')]
    assert names(tmp_path) == ["legacy.json", "torn.json"]
    files.put("torn", b'"next"')        # rewritten whole, not appended to the torn tail
    files.put("legacy", b'"moved on"')
    assert (tmp_path / "torn.json").read_bytes() == b'"next"\n'
    assert (tmp_path / "legacy.json").read_bytes() == b'"moved on"\n'
    assert loaded(tmp_path) == [("legacy", b'"moved on"'), ("torn", b'"next"')]
    files.delete("torn")
    files.delete("legacy")
    files.delete("never-there")
    assert names(tmp_path) == []


def test_failed_first_put_leaves_nothing(tmp_path) -> None:
    files = RecordFiles(str(tmp_path), "sandbox record")
    (tmp_path / "k.json").mkdir()   # the name is taken: the write fails
    with pytest.raises(StoreError) as exc:
        files.put("k", b"bad")
    assert f"cannot write sandbox record {tmp_path}/k.json" in str(exc.value)
    (tmp_path / "k.json").rmdir()
    assert names(tmp_path) == []   # no temp file left


def test_filestore_sets_aside_a_record_it_cannot_read(tmp_path) -> None:
    store = FileStore(str(tmp_path))
    rec = SandboxRecord(id="a" * 64, name="p", namespace="n", uid="u", attempt=0,
                        state=CREATING, created_at=1)
    store.put(rec)
    store.put(rec.replace(state=READY))
    (tmp_path / f"{'b' * 64}.json").write_text("{not json\n")
    (tmp_path / f"{'c' * 64}.json").write_text(json.dumps({**rec.to_json(), "id": "d" * 64}) + "\n")
    loaded_ = list(FileStore(str(tmp_path)).load_all())
    assert [(r.id, r.state) for r in loaded_] == [("a" * 64, READY)]
    assert names(tmp_path) == sorted([f"{'a' * 64}.json", f"{'b' * 64}.json.corrupt",
                                      f"{'c' * 64}.json.corrupt"])
