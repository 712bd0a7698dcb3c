"""JSON in the byte form Go's ``encoding/json`` produces, and decoding as strict as Go's.

Plugins must see on stdin what libcni would have sent them. libcni builds every plugin
config by unmarshalling into ``map[string]interface{}``, injecting keys and marshalling
again (``libcni/conf.go`` ``InjectConf``), so what a plugin receives is:

* compact (no spaces), object keys sorted byte-wise at every level (a Go map);
* every number a float64, printed the way Go prints one: ``1450`` not ``1450.0``,
  ``1e-7`` not ``1e-07``, ``1e+21`` from 1e21 up;
* strings with ``<``, ``>``, ``&``, U+2028 and U+2029 escaped as ``\\u003c`` etc., control
  characters as ``\\n``/``\\r``/``\\t`` or ``\\u00XX`` (never ``\\b``/``\\f``).

A value Go marshals from a *struct* rather than a map keeps its fields in declaration
order: wrap it in ``Struct`` (a dict whose insertion order is kept), as the 0.x result
types in a ``prevResult`` and flannel's delegate routes are.

Known gaps, all in inputs no real config has: integers beyond 2**53 are printed from
their float64 value as Go does, but a file whose integer was already rounded by another
Go program round-trips differently; invalid UTF-8 is replaced on decode, as Go does.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping

__all__ = ["Struct", "marshal", "marshal_indent", "marshal_fields", "loads", "type_name"]

_ESCAPES: dict[int, str] = {
    ord('"'): '\\"',
    ord("\\"): "\\\\",
    ord("\n"): "\\n",
    ord("\r"): "\\r",
    ord("\t"): "\\t",
    ord("<"): "\\u003c",
    ord(">"): "\\u003e",
    ord("&"): "\\u0026",
    0x2028: "\\u2028",
    0x2029: "\\u2029",
}
for _c in range(0x20):
    _ESCAPES.setdefault(_c, f"\\u{_c:04x}")


class Struct(dict):  # type: ignore[type-arg]
    """An object Go marshals from a struct: keys in insertion order, not sorted."""


def _string(s: str) -> str:
    return '"' + s.translate(_ESCAPES) + '"'


def _number(n: int | float) -> str:
    # Go decodes every JSON number in a map[string]interface{} into a float64.
    f = float(n)
    if not math.isfinite(f):
        raise ValueError(f"unsupported value: {n!r}")
    if f == 0:
        return "-0" if math.copysign(1.0, f) < 0 else "0"
    a = abs(f)
    if a < 1e-6 or a >= 1e21:
        # strconv 'e' format, shortest digits, then Go's json "e-09 -> e-9" clean-up.
        # Python's repr is in exponent form throughout this range.
        mant, _, exp = repr(f).partition("e")
        sign = "-" if exp.startswith("-") else "+"
        return f"{mant}e{sign}{int(exp.lstrip('+-'))}"
    if f.is_integer() and a < 2**53:
        return str(int(f))
    # Shortest round-trip digits, positional: strconv.FormatFloat(f, 'f', -1, 64).
    from decimal import Decimal  # only for fractions: plugins start without it
    return format(Decimal(repr(f)), "f")


def _encode(value: object, out: list[str]) -> None:
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, str):
        out.append(_string(value))
    elif isinstance(value, (int, float)):
        out.append(_number(value))
    elif isinstance(value, Mapping):
        out.append("{")
        first = True
        keys = value if isinstance(value, Struct) else sorted(
            value, key=lambda k: str(k).encode("utf-8", "surrogatepass"))
        for key in keys:
            if not first:
                out.append(",")
            first = False
            out.append(_string(str(key)))
            out.append(":")
            _encode(value[key], out)
        out.append("}")
    elif isinstance(value, (list, tuple)):
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _encode(item, out)
        out.append("]")
    else:
        raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def marshal(value: object) -> bytes:
    """Encode *value* like Go's ``json.Marshal`` of the equivalent ``interface{}`` tree."""
    out: list[str] = []
    _encode(value, out)
    return "".join(out).encode("utf-8", "surrogatepass")


def marshal_indent(value: object, indent: str = "    ") -> bytes:
    """``json.MarshalIndent(value, "", indent)``: ``marshal`` laid out as Go's
    ``json.Indent`` does (one element per line, ``": "`` after keys, empty objects
    and arrays kept as ``{}`` and ``[]``, no trailing newline)."""
    compact = marshal(value).decode("utf-8", "surrogatepass")
    out: list[str] = []
    depth = 0
    in_string = escaped = False
    n = len(compact)
    i = 0
    while i < n:
        c = compact[i]
        out.append(c)
        if in_string:
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == '"':
                in_string = False
        elif c == '"':
            in_string = True
        elif c in "{[":
            if i + 1 < n and compact[i + 1] in "}]":
                out.append(compact[i + 1])
                i += 1
            else:
                depth += 1
                out.append("\n" + indent * depth)
        elif c in "}]":
            out.pop()
            depth -= 1
            out.append("\n" + indent * depth + c)
        elif c == ",":
            out.append("\n" + indent * depth)
        elif c == ":":
            out.append(" ")
        i += 1
    return "".join(out).encode("utf-8", "surrogatepass")


def marshal_fields(fields: Iterable[tuple[str, object]]) -> bytes:
    """Encode an object whose top-level keys keep the given order (a Go struct),
    with every nested object sorted (Go maps)."""
    out: list[str] = ["{"]
    for i, (key, value) in enumerate(fields):
        if i:
            out.append(",")
        out.append(_string(key))
        out.append(":")
        _encode(value, out)
    out.append("}")
    return "".join(out).encode("utf-8", "surrogatepass")


def _reject_constant(name: str) -> object:
    raise ValueError(f"invalid JSON value {name}")


def loads(data: bytes | str) -> object:
    """Decode JSON as Go would accept it: UTF-8 only, no NaN/Infinity.

    Raises ``json.JSONDecodeError`` (with ``lineno``/``colno``) or ``ValueError``.
    """
    text = data.decode("utf-8", "replace") if isinstance(data, (bytes, bytearray)) else data
    return json.loads(text, parse_constant=_reject_constant)


def type_name(value: object) -> str:
    """The JSON type name Go's decoder puts in ``cannot unmarshal <type>`` messages."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"
