"""What ``cri-shim ctl``'s commands share: the error they raise and crictl's JSON shapes."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import yaml
from google.protobuf import json_format
from google.protobuf.message import Message

__all__ = ["CtlError", "to_dict", "print_status", "load_config", "ago", "table", "human_size",
           "add_labels"]

M = TypeVar("M", bound=Message)


class CtlError(Exception):
    pass


def to_dict(msg: Any) -> dict[str, Any]:
    # crictl prints every field, zero values included ("state": "SANDBOX_READY").
    return json_format.MessageToDict(msg, always_print_fields_with_no_presence=True)


def print_status(status: Any, info: Mapping[str, str]) -> None:
    """crictl's ``inspect*``/``info`` output: ``{"status": ..., <info key>: <JSON>}``."""
    out: dict[str, Any] = {"status": to_dict(status)}
    out.update({k: _maybe_json(v) for k, v in info.items()})
    print(json.dumps(out, indent=2))


def _maybe_json(value: str) -> Any:
    if value.startswith("{") or value.startswith("["):
        return json.loads(value)
    return value


def load_config(path: str, message: M, what: str) -> M:
    """A config file as crictl reads it: JSON or YAML, snake_case keys, enums as
    numbers or names, into *message*."""
    try:
        with open(path, encoding="utf-8") as f:
            doc = yaml.safe_load(f)
    except OSError as exc:
        raise CtlError(f"cannot read {what} {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise CtlError(f"{what} {path} is neither JSON nor YAML: {exc}") from exc
    if not isinstance(doc, dict):
        raise CtlError(f"{what} {path}: want an object with metadata, ..., not {type(doc).__name__}")
    try:
        return json_format.ParseDict(doc, message)
    except json_format.ParseError as exc:
        raise CtlError(f"{what} {path}: {exc}") from exc


def ago(ns: int) -> str:
    """crictl's "CREATED" column."""
    secs = max(0, int(time.time() - ns / 1e9))
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if secs >= size:
            n = secs // size
            return f"{n} {unit}{'s' if n > 1 else ''} ago"
    return "Less than a second ago" if secs < 1 else f"{secs} seconds ago"


def table(rows: Sequence[Sequence[str]]) -> None:
    """crictl's tables: columns padded to the widest cell plus three spaces."""
    widths = [max(len(r[col]) for r in rows) + 3 for col in range(len(rows[0]) - 1)]
    for r in rows:
        print("".join(cell.ljust(w) for cell, w in zip(r, widths)) + r[-1])


def human_size(n: float, precision: int = 4) -> str:
    """go-units' ``HumanSizeWithPrecision``: decimal units (crictl images uses 3
    significant digits, crictl stats 4)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.{precision}g}{unit}"
        n /= 1000
    return str(n)


def add_labels(selector: Any, pairs: Sequence[str]) -> None:
    """``--label K=V`` flags into a filter's ``label_selector``."""
    for kv in pairs:
        k, sep, v = kv.partition("=")
        if not sep:
            raise CtlError(f"--label {kv!r}: want KEY=VALUE")
        selector[k] = v
