"""flannel's own network config (``loadFlannelNetConf``) and what every command shares.

Plugin side: the standard library, ``cni.gojson``, ``cni.frozen`` and ``cni.skel``.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Mapping

from cni import gojson
from cni.errors import ERR_INTERNAL, CNIError
from cni.frozen import Frozen
from cni.skel import config_field, go_json_type

__all__ = ["DEFAULT_SUBNET_FILE", "DEFAULT_DATA_DIR", "NetConf", "load_netconf", "internal",
           "go_oserror"]

DEFAULT_SUBNET_FILE = "/run/flannel/subnet.env"
DEFAULT_DATA_DIR = "/var/lib/cni/flannel"

# flannel's NetConf, with the Go type named in json's "cannot unmarshal" message.
_FIELDS: dict[str, tuple[type, str]] = {
    "cniVersion": (str, "string"), "name": (str, "string"), "type": (str, "string"),
    "capabilities": (dict, "map[string]bool"), "ipam": (dict, "map[string]interface {}"),
    "dns": (dict, "types.DNS"), "prevResult": (dict, "map[string]interface {}"),
    "subnetFile": (str, "string"), "dataDir": (str, "string"),
    "delegate": (dict, "map[string]interface {}"),
    "runtimeConfig": (dict, "map[string]interface {}"),
}


class NetConf(Frozen):
    """flannel's own network config (the conflist entry with ``name``/``cniVersion``)."""

    _fields = ("name", "cni_version", "subnet_file", "data_dir", "delegate", "ipam",
               "runtime_config")
    name: str
    cni_version: str
    subnet_file: str
    data_dir: str
    delegate: Mapping[str, object] | None
    ipam: Mapping[str, object] | None
    runtime_config: Mapping[str, object] | None

    def __init__(self, name: str = "", cni_version: str = "",
                 subnet_file: str = DEFAULT_SUBNET_FILE, data_dir: str = DEFAULT_DATA_DIR,
                 delegate: Mapping[str, object] | None = None,
                 ipam: Mapping[str, object] | None = None,
                 runtime_config: Mapping[str, object] | None = None) -> None:
        self._set(name=name, cni_version=cni_version, subnet_file=subnet_file,
                  data_dir=data_dir, delegate=delegate, ipam=ipam,
                  runtime_config=runtime_config)


def internal(msg: str) -> CNIError:
    """An error flannel builds with ``fmt.Errorf``: skel prints it as code 999."""
    return CNIError(ERR_INTERNAL, msg)


def go_oserror(op: str, path: str, exc: OSError) -> str:
    """Go's ``*PathError`` text for *exc*."""
    # Go's *PathError: "open <path>: <strerror>", the C text lower-cased at the start.
    # Go opens a directory fine and fails reading it; Python fails at open.
    if exc.errno == errno.EISDIR and op == "open":
        op = "read"
    text = os.strerror(exc.errno) if exc.errno in errno.errorcode else str(exc)
    return f"{op} {path}: {text[:1].lower() + text[1:]}"


def load_netconf(data: bytes) -> NetConf:
    """Parse flannel's config (``loadFlannelNetConf``); absent or null keys keep the
    defaults. Raises ``ValueError("failed to load netconf: ...")``."""
    try:
        obj = gojson.loads(data)
    except ValueError as exc:
        raise ValueError(f"failed to load netconf: {exc}") from None
    if not isinstance(obj, dict):
        raise ValueError(f"failed to load netconf: json: cannot unmarshal {go_json_type(obj)} "
                         "into Go value of type main.NetConf")
    values: dict[str, object] = {}
    for key, (kind, go_type) in _FIELDS.items():
        value = config_field(obj, key)
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
            raise ValueError(f"failed to load netconf: json: cannot unmarshal "
                             f"{go_json_type(value)} into Go struct field NetConf.{key} "
                             f"of type {go_type}")
        values[key] = value
    _check_nested(values["capabilities"], values["dns"])
    return NetConf(name=values["name"] or "", cni_version=values["cniVersion"] or "",
                   subnet_file=_default(values["subnetFile"], DEFAULT_SUBNET_FILE),
                   data_dir=_default(values["dataDir"], DEFAULT_DATA_DIR),
                   delegate=values["delegate"], ipam=values["ipam"],
                   runtime_config=values["runtimeConfig"])


def _check_nested(capabilities: Mapping[str, object] | None, dns: Mapping[str, object] | None) -> None:
    """The element types Go's decoder checks inside ``capabilities`` (map[string]bool)
    and ``dns`` (types.DNS); its message names the innermost struct and the path."""
    def fail(value: object, struct: str, field: str, go_type: str) -> ValueError:
        return ValueError(f"failed to load netconf: json: cannot unmarshal {go_json_type(value)} "
                          f"into Go struct field {struct}.{field} of type {go_type}")

    for value in (capabilities or {}).values():
        if not isinstance(value, bool) and value is not None:
            raise fail(value, "NetConf", "capabilities", "bool")
    for key in ("nameservers", "domain", "search", "options"):
        value = config_field(dns or {}, key)
        if key == "domain":
            if value is not None and not isinstance(value, str):
                raise fail(value, "DNS", f"dns.{key}", "string")
            continue
        if value is not None and not isinstance(value, list):
            raise fail(value, "DNS", f"dns.{key}", "[]string")
        for item in value or ():
            if item is not None and not isinstance(item, str):
                raise fail(item, "DNS", f"dns.{key}", "string")


def _default(value: str | None, default: str) -> str:
    return default if value is None else value  # "" is kept, as Go's Unmarshal does


