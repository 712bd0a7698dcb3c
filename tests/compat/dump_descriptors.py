"""Print the wire-relevant shape of a generated protobuf module as JSON.

Run with any interpreter that can import the module, e.g.::

    python tests/compat/dump_descriptors.py --module cri_shim.api.api_pb2
    .venv-compat/bin/python tests/compat/dump_descriptors.py --module cri_api.v1.api_pb2

The output is read from the module's serialized FileDescriptorProto, so it is
the same whichever protobuf runtime (4.x to 7.x) generated or loads it.
Comments, options that do not change the wire (gogoproto, deprecated,
debug_redact, go_package) and declaration order are left out on purpose.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from typing import Any

from google.protobuf import descriptor_pb2

_F = descriptor_pb2.FieldDescriptorProto
_TYPE_NAMES = {v: k[len("TYPE_"):].lower() for k, v in _F.Type.items()}
_LABEL_NAMES = {v: k[len("LABEL_"):].lower() for k, v in _F.Label.items()}


def _walk_messages(
    prefix: str, messages: Any, out_msgs: dict[str, Any], out_enums: dict[str, Any]
) -> None:
    for msg in messages:
        full = f"{prefix}.{msg.name}"
        for enum in msg.enum_type:
            out_enums[f"{full}.{enum.name}"] = _enum(enum)
        # Map entries are synthesized by protoc; a map field is described on
        # the field itself (key and value types) rather than as a message.
        entries = {
            f".{full}.{nested.name}": nested
            for nested in msg.nested_type
            if nested.options.map_entry
        }
        fields = {}
        for field in msg.field:
            info: dict[str, Any] = {
                "number": field.number,
                "type": _TYPE_NAMES[field.type],
                "label": _LABEL_NAMES[field.label],
                "type_name": field.type_name,
                "proto3_optional": field.proto3_optional,
                "oneof": (
                    msg.oneof_decl[field.oneof_index].name
                    if field.HasField("oneof_index")
                    else ""
                ),
                "map": None,
            }
            entry = entries.get(field.type_name)
            if entry is not None:
                key, value = entry.field
                info["map"] = {
                    "key": _TYPE_NAMES[key.type],
                    "value": _TYPE_NAMES[value.type],
                    "value_type_name": value.type_name,
                }
            fields[field.name] = info
        out_msgs[full] = {
            "fields": fields,
            "reserved_ranges": [[r.start, r.end] for r in msg.reserved_range],
            "reserved_names": list(msg.reserved_name),
        }
        _walk_messages(
            full,
            [n for n in msg.nested_type if not n.options.map_entry],
            out_msgs,
            out_enums,
        )


def _enum(enum: Any) -> dict[str, Any]:
    return {"values": {v.name: v.number for v in enum.value}}


def describe(module_name: str) -> dict[str, Any]:
    """Return messages, enums and services of one generated ``*_pb2`` module."""
    module = importlib.import_module(module_name)
    fdp = descriptor_pb2.FileDescriptorProto.FromString(module.DESCRIPTOR.serialized_pb)
    package = fdp.package
    messages: dict[str, Any] = {}
    enums: dict[str, Any] = {}
    _walk_messages(package, fdp.message_type, messages, enums)
    for enum in fdp.enum_type:
        enums[f"{package}.{enum.name}"] = _enum(enum)
    services = {
        f"{package}.{svc.name}": {
            "methods": {
                m.name: {
                    "input": m.input_type,
                    "output": m.output_type,
                    "client_streaming": m.client_streaming,
                    "server_streaming": m.server_streaming,
                }
                for m in svc.method
            }
        }
        for svc in fdp.service
    }
    return {
        "file": fdp.name,
        "package": package,
        "syntax": fdp.syntax or "proto2",
        "messages": messages,
        "enums": enums,
        "services": services,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--module",
        required=True,
        help="generated module to describe, e.g. cri_api.v1.api_pb2 or cri_shim.api.api_pb2",
    )
    args = parser.parse_args(argv)
    json.dump(describe(args.module), sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
