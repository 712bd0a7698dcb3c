"""The one mapping from errors to gRPC codes."""

from __future__ import annotations

import grpc
import pytest

import libcni
from cri_shim.errors import (AlreadyExists, FailedPrecondition, InvalidArgument, NetworkError,
                             NetworkNotReady, NotFound, grpc_status)


@pytest.mark.parametrize("exc, code", [
    (InvalidArgument("x"), grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound("x"), grpc.StatusCode.NOT_FOUND),
    (AlreadyExists("x"), grpc.StatusCode.ALREADY_EXISTS),
    (FailedPrecondition("x"), grpc.StatusCode.FAILED_PRECONDITION),
    (NetworkNotReady(), grpc.StatusCode.FAILED_PRECONDITION),
    (NetworkError("setup", libcni.PluginNotFound("bridge", ["/opt/cni/bin"])), grpc.StatusCode.FAILED_PRECONDITION),
    (NetworkError("setup", libcni.ConfigError("bad", "/etc/cni/net.d/x.conf")), grpc.StatusCode.FAILED_PRECONDITION),
    (NetworkError("setup", libcni.PluginError(11, "later", "", plugin="bridge", command="ADD")), grpc.StatusCode.UNAVAILABLE),
    (NetworkError("setup", libcni.PluginError(7, "bad", "", plugin="bridge", command="ADD")), grpc.StatusCode.UNKNOWN),
    (libcni.PluginError(7, "bad", "", plugin="bridge", command="ADD"), grpc.StatusCode.UNKNOWN),
    (RuntimeError("boom"), grpc.StatusCode.INTERNAL),
])
def test_codes(exc: Exception, code: grpc.StatusCode) -> None:
    assert grpc_status(exc)[0] == code


def test_cni_error_text_survives_to_the_client() -> None:
    err = NetworkError('failed to set up network for sandbox "abc"',
                       libcni.PluginError(7, "invalid config", "no bridge name", plugin="bridge", command="ADD"))
    message = grpc_status(err)[1]
    for part in ('sandbox "abc"', "bridge", "ADD", "invalid config", "no bridge name"):
        assert part in message


def test_attach_failure_is_a_runtime_error_named_by_its_errno(tmp_path) -> None:
    """Attaching where conmon's socket is gone: the runtime tree's error (no
    traceback in the log), with the bundle and the reason, coded by its errno."""
    from runtime.attach import attach
    from runtime.errors import AttachFailed, RuntimeDriverError
    from streaming.runtime import StreamIO
    with pytest.raises(AttachFailed) as exc:
        attach(str(tmp_path), StreamIO())
    assert isinstance(exc.value, RuntimeDriverError)
    assert str(exc.value) == (f"cannot reach the container's attach socket in {tmp_path}: "
                              "No such file or directory")
    from cri_shim.errors import is_bug
    assert not is_bug(exc.value)
    assert grpc_status(exc.value) == (grpc.StatusCode.INTERNAL, str(exc.value))
