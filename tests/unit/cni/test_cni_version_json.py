"""Spec versions, and the Go-compatible JSON encoding."""

from __future__ import annotations

import pytest
from cni_fakes import ALL_VERSIONS

import libcni
from cni import gojson


@pytest.mark.parametrize("text,parsed", [("", (0, 1, 0)), ("0.3.1", (0, 3, 1)), ("1", (1, 0, 0)),
                                         ("1.1", (1, 1, 0)), ("10.0.2", (10, 0, 2))])
def test_parse_version(text, parsed):
    assert libcni.parse_version(text) == parsed


@pytest.mark.parametrize("text", ["1.0.0.0", "a.b.c", "1.-1.0", "1..0", " 1.0.0"])
def test_parse_version_rejects(text):
    with pytest.raises(ValueError):
        libcni.parse_version(text)


def test_version_ge_is_numeric():
    assert libcni.version_ge("0.10.0", "0.4.0")
    assert libcni.version_ge("1.0.0", "0.4.0") and not libcni.version_ge("0.3.1", "0.4.0")
    assert libcni.version_ge("", "0.1.0") and not libcni.version_ge("", "0.2.0")


@pytest.mark.parametrize("version", ALL_VERSIONS + [""])
def test_commands_and_prev_result_per_version(version):
    v = libcni.parse_version(version)
    assert libcni.command_supported("ADD", version) and libcni.command_supported("DEL", version)
    assert libcni.command_supported("CHECK", version) == (v >= (0, 4, 0))
    assert libcni.command_supported("STATUS", version) == (v >= (1, 1, 0))
    assert libcni.command_supported("GC", version) == (v >= (1, 1, 0))
    assert libcni.prev_result_on_del(version) == (v >= (0, 4, 0))
    assert not libcni.command_supported("FROB", version)


def test_is_supported_is_exact():
    assert all(libcni.is_supported(v) for v in ALL_VERSIONS)
    assert libcni.is_supported("")
    assert not libcni.is_supported("1.0") and not libcni.is_supported("0.5.0")


def test_negotiate_version():
    assert libcni.negotiate_version("1.0.0", ["1.1.0", "0.4.0"]) == "1.1.0"
    assert libcni.negotiate_version("0.4.0", []) == "0.4.0"
    with pytest.raises(ValueError):
        libcni.negotiate_version("", ["bogus"])
    with pytest.raises(ValueError, match="none of"):
        libcni.negotiate_version("", ["9.0.0"])


@pytest.mark.parametrize("value,encoded", [
    ({"b": 1, "a": {"d": [1, 2], "c": None}}, b'{"a":{"c":null,"d":[1,2]},"b":1}'),
    (1450.0, b"1450"),
    (0.5, b"0.5"),
    (1e-7, b"1e-7"),
    (1.5e21, b"1.5e+21"),
    (1e20, b"100000000000000000000"),
    (0.000001, b"0.000001"),
    (2**60, b"1152921504606847000"),  # float64, as Go's map[string]interface{} holds it
    (-0.0, b"-0"),
    ("<a href='x'>&", b'"\\u003ca href=\'x\'\\u003e\\u0026"'),
    ("tab\there\nnl\x01\x08\x0c\"\\", b'"tab\\there\\nnl\\u0001\\u0008\\u000c\\"\\\\"'),
    ("caf\u00e9 \u2028", '"caf\u00e9 \\u2028"'.encode()),
    ((True, False), b"[true,false]"),
])
def test_marshal_like_go(value, encoded):
    assert gojson.marshal(value) == encoded


def test_marshal_fields_keeps_top_level_order():
    assert gojson.marshal_fields([("z", 1), ("a", {"y": 1, "b": 2})]) == b'{"z":1,"a":{"b":2,"y":1}}'


def test_loads_rejects_what_go_rejects():
    with pytest.raises(ValueError):
        gojson.loads(b'{"a": NaN}')
    with pytest.raises(ValueError):
        gojson.loads(b'{"a": Infinity}')
    assert gojson.loads(b'{"a": "\xff"}') == {"a": "\ufffd"}  # invalid UTF-8 replaced
