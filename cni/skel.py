"""A CNI plugin skeleton: libcni's ``pkg/skel`` for plugins written in Python.

``plugin_main`` does what ``skel.PluginMainFuncs`` does (containernetworking/cni
``pkg/skel/skel.go``, v1.3): it reads the ``CNI_*`` environment (required variables
per command exactly as skel checks them, code 4 ``required env variables [...]
missing``), validates the container id, interface name and network name as
``pkg/utils`` does, answers VERSION itself, checks the config's ``cniVersion``
against the plugin's supported versions (code 1 ``incompatible CNI versions``), the
CHECK/GC/STATUS version floors, and calls the command function with ``CmdArgs``.
A command function returns what to print (a ``Result`` in its own version, a mapping,
raw bytes, or None) or raises ``CNIError``; any other exception becomes code 999
(skel's ``ErrInternal``). Errors are printed as the spec's error object and the exit
code is 1.

Output is skel's byte for byte: VERSION prints ``{"cniVersion":<the library's
current version>,"supportedVersions":[...]}`` and a newline whatever stdin holds; an
error is ``types.Error`` pretty-printed (``code``, ``msg``, ``details`` if set, four
spaces, Go's escaping, no newline); a result is ``types.PrettyPrint`` of its Go type
(``Result.to_go``).

One deliberate difference from skel: the "CNI_NETNS is the plugin's own netns" check
(code 8) runs before ADD/DEL rather than after, so a misdirected ADD never touches this
namespace.

Standard library and ``cni`` only: plugins start once per pod operation.
"""

from __future__ import annotations

import io
import json
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence

from . import gojson
from .frozen import Frozen
from .errors import (ERR_DECODING_FAILURE, ERR_INCOMPATIBLE_VERSION, ERR_INTERNAL,
                     ERR_INVALID_ENV, ERR_INVALID_NETNS, ERR_INVALID_NETWORK_CONFIG,
                     ERR_IO_FAILURE, CNIError)
from .version import CURRENT_VERSION, version_ge

__all__ = ["CmdArgs", "CommandFunc", "plugin_main", "config_field", "go_json_type"]


class CmdArgs(Frozen):
    """A command's arguments: the ``CNI_*`` variables and the config from stdin."""

    _fields = ("container_id", "netns", "ifname", "args", "path", "stdin_data")
    container_id: str
    netns: str
    ifname: str
    args: str
    path: str
    stdin_data: bytes

    def __init__(self, container_id: str, netns: str, ifname: str, args: str, path: str,
                 stdin_data: bytes) -> None:
        self._set(container_id=container_id, netns=netns, ifname=ifname, args=args,
                  path=path, stdin_data=stdin_data)


# What a command returns: a ``cni.result.Result`` (anything with ``to_go``), a mapping,
# raw bytes or text to print, or None for no output.
CommandFunc = Callable[[CmdArgs], object]

_ATTACHMENT = frozenset({"ADD", "CHECK", "DEL"})
_ALL = _ATTACHMENT | {"GC", "STATUS"}
_VALID_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.\-]*")
# Go's unicode.IsSpace (Python's str.isspace also accepts \x1c-\x1f).
_GO_SPACE = frozenset("\t\n\v\f\r \x85\xa0\u1680\u2028\u2029\u202f\u205f\u3000"
                      + "".join(chr(c) for c in range(0x2000, 0x200B)))
# The floor each command has, and the message skel gives below it.
_FLOOR = {"CHECK": "0.4.0", "GC": "1.1.0", "STATUS": "1.1.0"}


def _validate_container_id(value: str) -> None:
    if not _VALID_NAME.fullmatch(value):
        raise CNIError(ERR_INVALID_ENV, "invalid characters in containerID", value)


def _validate_ifname(value: str) -> None:
    if len(value.encode("utf-8", "surrogateescape")) > 15:
        raise CNIError(ERR_INVALID_ENV, "interface name is too long",
                       "interface name should be less than 16 characters")
    if value in (".", ".."):
        raise CNIError(ERR_INVALID_ENV, "interface name is . or ..")
    if any(c in "/:" or c in _GO_SPACE for c in value):
        raise CNIError(ERR_INVALID_ENV, "interface name contains / or : or whitespace characters")


# (variable, commands that require it, validator run when it is required and set)
_ENV_VARS: tuple[tuple[str, frozenset[str], Callable[[str], None] | None], ...] = (
    ("CNI_COMMAND", _ALL, None),
    ("CNI_CONTAINERID", _ATTACHMENT, _validate_container_id),
    ("CNI_NETNS", frozenset({"ADD", "CHECK"}), None),
    ("CNI_IFNAME", _ATTACHMENT, _validate_ifname),
    ("CNI_ARGS", frozenset(), None),
    ("CNI_PATH", _ALL, None),
    ("CNI_NETNS_OVERRIDE", frozenset(), None),
)


def config_field(obj: Mapping[str, object], key: str) -> object:
    """``obj[key]`` the way Go's ``encoding/json`` fills a struct field: an exact key,
    else a case-insensitive one (the last such key wins); None when absent."""
    if key in obj:
        return obj[key]
    folded = key.casefold()
    found = None
    for name, value in obj.items():
        if name.casefold() == folded:
            found = value
    return found


def go_json_type(value: object) -> str:
    """The JSON type name Go's decoder puts in ``cannot unmarshal <type>`` messages."""
    return gojson.type_name(value)


def _decode_config(data: bytes) -> Mapping[str, object]:
    """skel's ``validateConfig``: JSON with a valid network name (codes 6 and 7)."""
    if not data.strip():
        raise CNIError(ERR_DECODING_FAILURE,
                       "error unmarshall network config: unexpected end of JSON input")
    try:
        obj = gojson.loads(data)
    except ValueError as exc:
        raise CNIError(ERR_DECODING_FAILURE, f"error unmarshall network config: {exc}") from None
    if obj is None:
        obj = {}  # Go: unmarshalling null into a struct is a no-op
    if not isinstance(obj, dict):
        raise CNIError(ERR_DECODING_FAILURE,
                       f"error unmarshall network config: json: cannot unmarshal "
                       f"{go_json_type(obj)} into Go value of type struct {{ Name string }}")
    name = config_field(obj, "name")
    if name is not None and not isinstance(name, str):
        raise CNIError(ERR_DECODING_FAILURE,
                       f"error unmarshall network config: json: cannot unmarshal "
                       f"{go_json_type(name)} into Go struct field .name of type string")
    if not name:
        raise CNIError(ERR_INVALID_NETWORK_CONFIG, "missing network name")
    if not _VALID_NAME.fullmatch(name):
        raise CNIError(ERR_INVALID_NETWORK_CONFIG, "invalid characters found in network name",
                       name)
    return obj


def _config_version(conf: Mapping[str, object]) -> str:
    """``version.ConfigDecoder``: the config's ``cniVersion``, ``""`` meaning 0.1.0."""
    version = config_field(conf, "cniVersion")
    if version is not None and not isinstance(version, str):
        raise CNIError(ERR_DECODING_FAILURE,
                       "decoding version from network config: json: cannot unmarshal "
                       f"{go_json_type(version)} into Go struct field .cniVersion of type string")
    return version or "0.1.0"


def _go_quote_list(items: Sequence[str]) -> str:
    return "[" + " ".join(json.dumps(v) for v in items) + "]"


def _ge(version: str, other: str) -> bool:
    try:
        return version_ge(version, other)
    except ValueError as exc:
        raise CNIError(ERR_DECODING_FAILURE, str(exc)) from None


def _check_version(version: str, supported: Sequence[str]) -> None:
    """``version.Reconciler.Check``: the exact string must be supported."""
    if version not in supported:
        raise CNIError(ERR_INCOMPATIBLE_VERSION, "incompatible CNI versions",
                       f"config is {json.dumps(version)}, plugin supports "
                       f"{_go_quote_list(supported)}")


def _check_floor(command: str, version: str, supported: Sequence[str]) -> None:
    if not _ge(version, _FLOOR[command]):
        raise CNIError(ERR_INCOMPATIBLE_VERSION, f"config version does not allow {command}")
    if not any(_ge(v, version) for v in supported):
        raise CNIError(ERR_INCOMPATIBLE_VERSION, f"plugin version does not allow {command}")


def _check_netns(netns: str, override: str) -> None:
    """skel's ``ns.CheckNetNS``: CNI_NETNS must not be the plugin's own namespace."""
    if override.upper() == "TRUE" or override == "1":
        return
    try:
        target = os.stat(netns)
    except OSError:
        return  # a gone or empty netns is the plugin's business (DEL must succeed)
    try:
        own = os.stat("/proc/self/ns/net")
    except OSError:
        raise CNIError(ERR_INVALID_NETNS, "get plugin's netns failed") from None
    if (target.st_dev, target.st_ino) == (own.st_dev, own.st_ino):
        raise CNIError(ERR_INVALID_NETNS,
                       "plugin's netns and netns from CNI_NETNS should not be the same")


def _read_env(environ: Mapping[str, str]) -> tuple[str, dict[str, str]]:
    values: dict[str, str] = {}
    command = environ.get("CNI_COMMAND", "")
    missing: list[str] = []
    for name, required_by, validate in _ENV_VARS:
        value = values[name] = environ.get(name, "")
        if not value:
            if command in required_by or name == "CNI_COMMAND":
                missing.append(name)
        elif command in required_by and validate is not None:
            validate(value)
    if missing:
        raise CNIError(ERR_INVALID_ENV, f"required env variables [{','.join(missing)}] missing")
    return command, values


def _read_stdin(stdin: io.BufferedIOBase | bytes | None) -> bytes:
    if isinstance(stdin, (bytes, bytearray)):
        return bytes(stdin)
    stream = stdin if stdin is not None else sys.stdin.buffer
    try:
        return stream.read()
    except OSError as exc:
        raise CNIError(ERR_IO_FAILURE, f"error reading from stdin: {exc}") from None


def _render(output: object) -> bytes:
    """What a command returned, as Go's ``types.PrettyPrint`` writes it."""
    to_go = getattr(output, "to_go", None)   # a Result: marshalled as its Go type
    if to_go is not None:
        output = to_go()
    if isinstance(output, (bytes, bytearray)):
        return bytes(output)
    if isinstance(output, str):
        return output.encode()
    return gojson.marshal_indent(output)


def _version_answer(supported: Sequence[str]) -> bytes:
    # version.PluginSupports: cniVersion is always the library's version.Current().
    return gojson.marshal_fields([("cniVersion", CURRENT_VERSION),
                                  ("supportedVersions", list(supported))]) + b"\n"


def plugin_main(add: CommandFunc, del_: CommandFunc, check: CommandFunc | None = None,
                status: CommandFunc | None = None, gc: CommandFunc | None = None, *,
                supported_versions: Sequence[str], about: str = "",
                argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None,
                stdin: io.BufferedIOBase | bytes | None = None,
                stdout: io.BufferedIOBase | None = None,
                stderr: io.TextIOBase | None = None) -> int:
    """Run one plugin invocation; returns the exit code (0, or 1 after printing the
    error object on *stdout*).

    *environ* (default ``os.environ``), *stdin* (bytes or a binary stream, default
    ``sys.stdin.buffer``), *stdout* (binary, default ``sys.stdout.buffer``) and
    *stderr* (text) are injectable so tests run plugins in-process. *argv* is accepted
    for symmetry with ``main(argv)`` entry points; plugins take no arguments (SPEC.md).
    A command given as None succeeds without output once the version checks pass
    (skel with a nil function).
    """
    del argv
    env = os.environ if environ is None else environ
    out = stdout if stdout is not None else sys.stdout.buffer
    err_out = stderr if stderr is not None else sys.stderr
    supported = list(supported_versions)
    if not supported:
        raise ValueError("a plugin must support at least one version")
    try:
        try:
            command, values = _read_env(env)
        except CNIError as exc:
            if exc.code == ERR_INVALID_ENV and not env.get("CNI_COMMAND") and about:
                print(about, file=err_out)
                print(f"CNI protocol versions supported: {', '.join(supported)}", file=err_out)
                return 0
            raise
        if command == "VERSION":
            out.write(_version_answer(supported))
            out.flush()
            return 0
        data = _read_stdin(stdin)
        conf = _decode_config(data)
        funcs = {"ADD": add, "DEL": del_, "CHECK": check, "GC": gc, "STATUS": status}
        if command not in funcs:
            raise CNIError(ERR_INVALID_ENV, f"unknown CNI_COMMAND: {command}")
        version = _config_version(conf)
        if command in _FLOOR:
            _check_floor(command, version, supported)
        _check_version(version, supported)
        if command in ("ADD", "DEL"):
            _check_netns(values["CNI_NETNS"], values["CNI_NETNS_OVERRIDE"])
        func = funcs[command]
        if func is None:
            return 0
        args = CmdArgs(container_id=values["CNI_CONTAINERID"], netns=values["CNI_NETNS"],
                       ifname=values["CNI_IFNAME"], args=values["CNI_ARGS"],
                       path=values["CNI_PATH"], stdin_data=data)
        output = func(args)
        if output is not None:
            out.write(_render(output))
            out.flush()
        return 0
    except CNIError as exc:
        error = exc
    except Exception as exc:  # noqa: BLE001 - a plugin must always answer in JSON
        import traceback
        traceback.print_exc(file=err_out)
        error = CNIError(ERR_INTERNAL, str(exc) or type(exc).__name__)
    # types.Error.Print: {code, msg, details (omitempty)} in struct order.
    out.write(gojson.marshal_indent(gojson.Struct(error.to_dict())))
    out.flush()
    return 1
