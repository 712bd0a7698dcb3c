"""The container runtime driver's error tree.

::

    RuntimeDriverError            every error of this package
    ├── RuntimeFailed             the OCI runtime (runc, crun) or conmon failed; carries
    │                             its own message (what runc wrote) and the command
    ├── ContainerNotFound         the runtime has no such container
    ├── RootfsError               the container's overlay rootfs cannot be made or removed
    ├── AttachFailed              conmon's attach socket of the container cannot be reached
    └── RuntimeTimeout            the runtime did not answer in time

The CRI layer maps these to gRPC codes in ``cri_shim.errors``; nothing here knows gRPC.
"""

from __future__ import annotations

import os

__all__ = ["RuntimeDriverError", "RuntimeFailed", "ContainerNotFound", "RootfsError",
           "AttachFailed", "RuntimeTimeout"]


class RuntimeDriverError(Exception):
    """Base of every error of the runtime driver."""


class RuntimeFailed(RuntimeDriverError):
    """The OCI runtime or conmon failed. ``message`` is its own words."""

    def __init__(self, what: str, message: str, command: tuple[str, ...] = ()) -> None:
        super().__init__(f"{what}: {message}" if message else what)
        self.message = message
        self.command = command


class ContainerNotFound(RuntimeDriverError):
    """The OCI runtime has no container of that id."""


class RootfsError(RuntimeDriverError):
    """The overlay rootfs could not be mounted or unmounted; ``errno`` says why."""

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(f"{message}: {os.strerror(errno)}" if errno else message)
        self.errno = errno


class AttachFailed(RuntimeDriverError):
    """conmon's attach socket of the container cannot be reached (conmon is gone);
    ``errno`` says why."""

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(f"{message}: {os.strerror(errno)}" if errno else message)
        self.errno = errno


class RuntimeTimeout(RuntimeDriverError):
    """A runtime command did not finish in time (it was killed)."""
