"""What ``cri-shim ctl``'s commands share: the error they raise and crictl's JSON shapes."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from google.protobuf import json_format

__all__ = ["CtlError", "to_dict", "print_status"]


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
