"""The one error tree of cri-shim, and the one place that maps it to gRPC codes.

::

    ShimError                         (any failure cri-shim reports)
    ├── InvalidArgument               INVALID_ARGUMENT  bad pod config, bad sandbox id
    ├── NotFound                      NOT_FOUND         unknown sandbox / container
    ├── AlreadyExists                 ALREADY_EXISTS    sandbox name reserved by another
    ├── FailedPrecondition            FAILED_PRECONDITION
    │   └── NetworkNotReady                             no CNI config loaded
    ├── DeadlineExceeded              DEADLINE_EXCEEDED  an exec timed out, a kill did not kill
    ├── ResourceExhausted             RESOURCE_EXHAUSTED 1,000 streaming URLs wait for clients
    ├── NetworkError                  (code from the CNI error it wraps, see below)
    ├── HostError                     (code from the errno, see below) the node failed us
    │   ├── NetnsError                pinning or unpinning a netns, naming its path
    │   └── StoreError                writing or removing a record, naming its file
    └── ConfigFileError               not a gRPC error: the CLI exits 2 with it

The runtime driver's errors (``runtime.errors``: runc's or conmon's own failure, a
container the runtime does not have, a rootfs mount) and the image package's
(``images.errors``) are mapped here too, each by its own table below.

CNI errors (``libcni.CNIError`` and its subclasses) raised below the sandbox manager are
wrapped in ``NetworkError`` with ``raise ... from``; the plugin's own code, message and
details stay in the text the client sees, e.g.
``failed to set up network for sandbox "ab12..": plugin "bridge" failed on ADD (CNI error code 7): ...``.

A ``HostError`` carries the errno of the system call that failed: a full disk or too
many open files is RESOURCE_EXHAUSTED, a busy mount UNAVAILABLE, a permission the
server lacks FAILED_PRECONDITION, anything else INTERNAL. Only exceptions outside this
tree (bugs) are logged with a traceback.
"""

from __future__ import annotations

import errno as errno_mod
import os

import grpc

import libcni
from images import errors as image_errors
from runtime import errors as runtime_errors

__all__ = [
    "ShimError",
    "InvalidArgument",
    "NotFound",
    "AlreadyExists",
    "FailedPrecondition",
    "DeadlineExceeded",
    "ResourceExhausted",
    "NetworkNotReady",
    "NetworkError",
    "HostError",
    "NetnsError",
    "StoreError",
    "ConfigFileError",
    "grpc_status",
    "is_bug",
]

# What Status reports and RunPodSandbox answers while no CNI config is loaded: the exact
# words containerd uses, which kubelet surfaces in the node's NetworkReady condition.
NETWORK_NOT_READY_REASON = "NetworkPluginNotReady"
NETWORK_NOT_READY_MESSAGE = "Network plugin returns error: cni plugin not initialized"


class ShimError(Exception):
    """Base of every error cri-shim reports to a client."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN


class InvalidArgument(ShimError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(ShimError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(ShimError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(ShimError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class DeadlineExceeded(ShimError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class ResourceExhausted(ShimError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class NetworkNotReady(FailedPrecondition):
    def __init__(self, detail: str = "") -> None:
        msg = NETWORK_NOT_READY_MESSAGE
        super().__init__(f"{msg}: {detail}" if detail else msg)


class NetworkError(ShimError):
    """A CNI operation failed; ``__cause__`` is the ``libcni.CNIError``."""

    def __init__(self, message: str, cause: libcni.CNIError) -> None:
        super().__init__(f"{message}: {cause}")
        self.cause = cause
        self.code = _cni_code(cause)


class HostError(ShimError):
    """A system call on the node failed; ``errno`` picks the gRPC code."""

    def __init__(self, message: str, errno: int | None = None, *, detail: str = "") -> None:
        detail = detail or (os.strerror(errno) if errno else "")
        super().__init__(f"{message}: {detail}" if detail else message)
        self.errno = errno
        self.code = _errno_code(errno)


class NetnsError(HostError):
    """Pinning or unpinning a pod network namespace failed; ``path`` is the netns."""

    def __init__(self, message: str, path: str, errno: int | None = None, *,
                 detail: str = "") -> None:
        super().__init__(message, errno, detail=detail)
        self.path = path


class StoreError(HostError):
    """Persisting a record failed; ``path`` is its file."""

    def __init__(self, message: str, path: str, errno: int | None = None, *,
                 detail: str = "") -> None:
        super().__init__(message, errno, detail=detail)
        self.path = path


_EXHAUSTED = {errno_mod.ENOSPC, errno_mod.EDQUOT, errno_mod.ENOMEM, errno_mod.EMFILE,
              errno_mod.ENFILE, errno_mod.EAGAIN}
_NOT_ALLOWED = {errno_mod.EPERM, errno_mod.EACCES, errno_mod.EROFS}


def _errno_code(err: int | None) -> grpc.StatusCode:
    if err in _EXHAUSTED:
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    if err == errno_mod.EBUSY:
        return grpc.StatusCode.UNAVAILABLE
    if err in _NOT_ALLOWED:
        return grpc.StatusCode.FAILED_PRECONDITION
    return grpc.StatusCode.INTERNAL


class ConfigFileError(ShimError):
    """The TOML configuration is unreadable or wrong; raised before serving."""

    code = grpc.StatusCode.INVALID_ARGUMENT


def _cni_code(err: libcni.CNIError) -> grpc.StatusCode:
    # A plugin or config nobody can run is the node's state, not the request's fault.
    if isinstance(err, (libcni.PluginNotFound, libcni.ConfigError)):
        return grpc.StatusCode.FAILED_PRECONDITION
    if isinstance(err, libcni.ExecTimeout):
        return grpc.StatusCode.DEADLINE_EXCEEDED
    if err.code == libcni.ERR_TRY_AGAIN_LATER:
        return grpc.StatusCode.UNAVAILABLE
    # containerd returns a plain (UNKNOWN) error for a failed plugin; so do we.
    return grpc.StatusCode.UNKNOWN


# The image package's tree (images/errors.py), most specific first.
_IMAGE_CODES: tuple[tuple[type, grpc.StatusCode], ...] = (
    (image_errors.InvalidReference, grpc.StatusCode.INVALID_ARGUMENT),
    (image_errors.ImageNotFound, grpc.StatusCode.NOT_FOUND),
    (image_errors.NoMatchingPlatform, grpc.StatusCode.NOT_FOUND),   # containerd: not found
    (image_errors.RegistryUnavailable, grpc.StatusCode.UNAVAILABLE),
    (image_errors.AuthFailed, grpc.StatusCode.PERMISSION_DENIED),
    (image_errors.DigestMismatch, grpc.StatusCode.DATA_LOSS),
    (image_errors.InvalidContent, grpc.StatusCode.FAILED_PRECONDITION),
    (image_errors.InvalidArchive, grpc.StatusCode.INVALID_ARGUMENT),
    (image_errors.HostsConfigError, grpc.StatusCode.FAILED_PRECONDITION),   # the node's files
)


def _image_code(err: image_errors.ImageError) -> grpc.StatusCode:
    if isinstance(err, image_errors.StorageError):
        return _errno_code(err.errno)
    for kind, code in _IMAGE_CODES:
        if isinstance(err, kind):
            return code
    return grpc.StatusCode.UNKNOWN


def _runtime_code(err: runtime_errors.RuntimeDriverError) -> grpc.StatusCode:
    if isinstance(err, runtime_errors.ContainerNotFound):
        return grpc.StatusCode.NOT_FOUND
    if isinstance(err, runtime_errors.RuntimeTimeout):
        return grpc.StatusCode.DEADLINE_EXCEEDED
    if isinstance(err, (runtime_errors.RootfsError, runtime_errors.AttachFailed)):
        return _errno_code(err.errno)
    # runc's own failure (a missing binary in the image, a bad mount): containerd
    # passes it on as a plain error.
    return grpc.StatusCode.UNKNOWN


def is_bug(exc: BaseException) -> bool:
    """Whether *exc* is outside every error tree (worth a traceback in the log)."""
    return not isinstance(exc, (ShimError, image_errors.ImageError, libcni.CNIError,
                                runtime_errors.RuntimeDriverError))


def grpc_status(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """Map any exception to the (code, message) a gRPC client gets."""
    if isinstance(exc, ShimError):
        return exc.code, str(exc)
    if isinstance(exc, image_errors.ImageError):
        return _image_code(exc), str(exc)
    if isinstance(exc, libcni.CNIError):
        return _cni_code(exc), str(exc)
    if isinstance(exc, runtime_errors.RuntimeDriverError):
        return _runtime_code(exc), str(exc)
    return grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}"
