"""What the error stream carries at the end of an exec or attach.

v4 (``v4.channel.k8s.io``, and v5 over WebSocket): a ``metav1.Status`` as JSON, the
way kubelet's ``v4WriteStatusFunc`` marshals it (Go field order, empty fields left
out, ``metadata`` always there). Older protocols: the status message as text, only on
failure (``v1WriteStatusFunc``).
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["success", "exit_code", "internal_error", "encode_v4", "encode_v1"]

Status = dict[str, Any]


def success() -> Status:
    return {"metadata": {}, "status": "Success"}


def exit_code(message: str, code: int) -> Status:
    """A command that ran and exited non-zero (reason NonZeroExitCode, the code as the
    ExitCode cause: what client-go turns back into an exit code)."""
    return {"metadata": {}, "status": "Failure",
            "message": f"command terminated with non-zero exit code: {message}",
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]}}


def internal_error(message: str) -> Status:
    """``apierrors.NewInternalError``: anything else that went wrong."""
    return {"metadata": {}, "status": "Failure",
            "message": f"Internal error occurred: {message}", "reason": "InternalError",
            "details": {"causes": [{"message": message}]}, "code": 500}


def encode_v4(status: Status) -> bytes:
    return json.dumps(status, separators=(",", ":")).encode()


def encode_v1(status: Status) -> bytes:
    return b"" if status.get("status") == "Success" else str(status.get("message", "")).encode()
