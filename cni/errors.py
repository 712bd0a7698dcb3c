"""The CNI error tree.

::

    CNIError                     code, msg, details (+ plugin, command when known)
    ├── PluginError              the plugin ran and reported failure: an error object on
    │   │                        stdout, or a non-zero exit
    │   └── InvalidPluginOutput  ...or its stdout was no usable result / error object
    │                            (garbage, empty, unknown result version)
    ├── ExecTimeout              the plugin ran past the timeout and was killed
    │   └── DeadlineExceeded     ...the caller's deadline, not the per-exec timeout
    │                            (or it passed before the plugin could start)
    ├── PluginNotFound           no executable for the plugin type in any bin dir
    ├── ConfigError              a network configuration is malformed or invalid
    │                            (carries the file path)
    └── CommandNotSupported      the command does not exist at the list's cniVersion
                                 (CHECK before 0.4.0)

Every error keeps the spec's numeric ``code`` (SPEC.md "Error codes"), ``msg`` and
``details`` so they can travel unchanged to the CRI client; ``to_json()`` gives the
spec's error object.
"""

from __future__ import annotations

import json

__all__ = [
    "ERR_UNKNOWN",
    "ERR_INCOMPATIBLE_VERSION",
    "ERR_UNSUPPORTED_FIELD",
    "ERR_UNKNOWN_CONTAINER",
    "ERR_INVALID_ENV",
    "ERR_IO_FAILURE",
    "ERR_DECODING_FAILURE",
    "ERR_INVALID_NETWORK_CONFIG",
    "ERR_INVALID_NETNS",
    "ERR_TRY_AGAIN_LATER",
    "ERR_PLUGIN_NOT_AVAILABLE",
    "ERR_PLUGIN_NOT_AVAILABLE_LIMITED",
    "ERR_INTERNAL",
    "CNIError",
    "PluginError",
    "InvalidPluginOutput",
    "ExecTimeout",
    "DeadlineExceeded",
    "PluginNotFound",
    "ConfigError",
    "CommandNotSupported",
]

# Well-known error codes (SPEC.md "Error codes"; libcni pkg/types/types.go).
ERR_UNKNOWN = 0
ERR_INCOMPATIBLE_VERSION = 1
ERR_UNSUPPORTED_FIELD = 2
ERR_UNKNOWN_CONTAINER = 3
ERR_INVALID_ENV = 4
ERR_IO_FAILURE = 5
ERR_DECODING_FAILURE = 6
ERR_INVALID_NETWORK_CONFIG = 7
ERR_INVALID_NETNS = 8
ERR_TRY_AGAIN_LATER = 11
# STATUS (spec 1.1.0): the plugin cannot take ADDs; 51 = and existing pods may be hurt.
ERR_PLUGIN_NOT_AVAILABLE = 50
ERR_PLUGIN_NOT_AVAILABLE_LIMITED = 51
ERR_INTERNAL = 999


class CNIError(Exception):
    """A CNI failure with the spec's code, message and details.

    ``plugin`` (the plugin type) and ``command`` (ADD, DEL, ...) say where it happened
    when known; ``str()`` reads ``plugin "bridge" failed on ADD: <msg>: <details>``.
    """

    def __init__(self, code: int, msg: str, details: str = "", *,
                 plugin: str | None = None, command: str | None = None) -> None:
        super().__init__(code, msg, details)
        self.code = code
        self.msg = msg
        self.details = details
        self.plugin = plugin
        self.command = command

    def with_context(self, *, plugin: str | None = None,
                     command: str | None = None) -> CNIError:
        """Fill in ``plugin``/``command`` where not already set; returns self."""
        if self.plugin is None:
            self.plugin = plugin
        if self.command is None:
            self.command = command
        return self

    def _where(self) -> str:
        if self.plugin and self.command:
            return f'plugin "{self.plugin}" failed on {self.command}: '
        if self.plugin:
            return f'plugin "{self.plugin}" failed: '
        if self.command:
            return f"{self.command} failed: "
        return ""

    def __str__(self) -> str:
        text = self._where() + self.msg
        if self.details:
            text += f": {self.details}"
        return text

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(code={self.code!r}, msg={self.msg!r}, "
                f"details={self.details!r}, plugin={self.plugin!r}, command={self.command!r})")

    def to_dict(self, cni_version: str | None = None) -> dict[str, object]:
        """The spec's error object: ``{"cniVersion", "code", "msg", "details"}``."""
        obj: dict[str, object] = {}
        if cni_version is not None:
            obj["cniVersion"] = cni_version
        obj["code"] = self.code
        obj["msg"] = self.msg
        if self.details:
            obj["details"] = self.details
        return obj

    def to_json(self, cni_version: str | None = None) -> str:
        """The spec's error object as a JSON string."""
        return json.dumps(self.to_dict(cni_version))


class PluginError(CNIError):
    """The plugin ran and failed; ``code``/``msg``/``details`` are what it reported.

    ``str()`` carries the code too, so it reaches CRI clients that only see text:
    ``plugin "bridge" failed on ADD (CNI error code 7): <msg>: <details>``.
    """

    def _where(self) -> str:
        where = super()._where()
        if where.endswith(": "):
            return f"{where[:-2]} (CNI error code {self.code}): "
        return f"CNI error code {self.code}: "


class InvalidPluginOutput(PluginError):
    """The plugin's stdout was not a usable result or error object."""


class ExecTimeout(CNIError):
    """The plugin did not finish within the timeout and was killed."""

    def __init__(self, plugin: str, command: str | None, timeout: float) -> None:
        super().__init__(ERR_TRY_AGAIN_LATER, f"timed out after {timeout:g}s and was killed",
                         plugin=plugin, command=command)
        self.timeout = timeout


class DeadlineExceeded(ExecTimeout):
    """The caller's deadline (libcni: the request's context) ran out: the plugin was
    killed at it, or was not started because it had already passed."""

    def __init__(self, plugin: str, command: str | None, elapsed: float | None) -> None:
        super().__init__(plugin, command, elapsed or 0.0)
        self.msg = ("not run: the caller's deadline had passed" if elapsed is None else
                    f"killed after {elapsed:g}s: the caller's deadline passed")


class PluginNotFound(CNIError):
    """No executable named after the plugin type in any of the bin dirs."""

    def __init__(self, name: str, bin_dirs: list[str] | tuple[str, ...]) -> None:
        # Same wording as libcni's invoke.FindInPath.
        super().__init__(ERR_INVALID_NETWORK_CONFIG,
                         f'failed to find plugin "{name}" in path [{" ".join(bin_dirs)}]')
        self.name = name
        self.bin_dirs = tuple(bin_dirs)

    def __str__(self) -> str:
        return self.msg  # already names the plugin


class ConfigError(CNIError):
    """A network configuration (file or bytes) is malformed or invalid."""

    def __init__(self, msg: str, path: str | None = None, details: str = "") -> None:
        super().__init__(ERR_INVALID_NETWORK_CONFIG, msg, details)
        self.path = path

    def __str__(self) -> str:
        text = super().__str__()
        return f"{self.path}: {text}" if self.path else text


class CommandNotSupported(CNIError):
    """The command does not exist at the network's cniVersion."""

    def __init__(self, command: str, cni_version: str) -> None:
        # libcni: `configuration version "0.3.1" does not support the CHECK command`.
        super().__init__(ERR_INCOMPATIBLE_VERSION,
                         f'configuration version "{cni_version}" does not support '
                         f"the {command} command", command=command)
        self.cni_version = cni_version

    def __str__(self) -> str:
        return self.msg
