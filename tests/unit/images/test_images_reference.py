"""Docker's reference grammar and normalisation (distribution/reference)."""

from __future__ import annotations

import pytest

from images.errors import InvalidReference
from images.reference import is_image_id, parse

D = "sha256:" + "a" * 64


@pytest.mark.parametrize("text,expected", [
    ("busybox", "docker.io/library/busybox:latest"),
    ("busybox:1.36", "docker.io/library/busybox:1.36"),
    ("library/busybox", "docker.io/library/busybox:latest"),
    ("docker.io/busybox", "docker.io/library/busybox:latest"),
    ("index.docker.io/library/busybox", "docker.io/library/busybox:latest"),
    ("user/app", "docker.io/user/app:latest"),
    ("registry.k8s.io/e2e-test-images/busybox:1.29-2", "registry.k8s.io/e2e-test-images/busybox:1.29-2"),
    ("localhost/app", "localhost/app:latest"),
    ("localhost:5000/a/b:v1", "localhost:5000/a/b:v1"),
    ("127.0.0.1:5000/app", "127.0.0.1:5000/app:latest"),
    ("[::1]:5000/app", "[::1]:5000/app:latest"),
    (f"busybox@{D}", f"docker.io/library/busybox@{D}"),
    (f"busybox:1.36@{D}", f"docker.io/library/busybox@{D}"),   # the tag is dropped
    ("busybox@sha512:" + "b" * 128, "docker.io/library/busybox@sha512:" + "b" * 128),
    ("a.b/c__d/e-f.g_h:T_1.x", "a.b/c__d/e-f.g_h:T_1.x"),
])
def test_normalised(text: str, expected: str) -> None:
    assert str(parse(text)) == expected


def test_parts() -> None:
    ref = parse(f"localhost:5000/team/app:v2@{D}")
    assert (ref.domain, ref.path, ref.tag, ref.digest) == ("localhost:5000", "team/app", "", D)
    assert ref.object == D and ref.with_tag() == ""
    assert parse("localhost:5000/team/app:v2").with_tag() == "localhost:5000/team/app:v2"
    assert parse("busybox").object == "latest"


@pytest.mark.parametrize("text,words", [
    ("", "empty"),
    ("Busybox", "must be lowercase"),
    ("busybox:", 'tag "" is invalid'),
    ("busybox:-x", 'tag "-x" is invalid'),
    ("busybox:" + "t" * 129, "is invalid"),
    ("busybox@sha256:abc", "not a digest"),
    ("busybox@sha256:" + "a" * 63 + "g", "not a digest"),
    ("busybox@sha256:" + "a" * 65, "must have 64 lowercase hex digits"),
    ("busybox@sha256:" + "A" * 64, "must have 64 lowercase hex digits"),
    ("busybox@md5:" + "a" * 32, 'algorithm "md5" is not supported'),
    ("busybox:t\u00e9st", 'tag "t\u00e9st" is invalid'),
    ("a//b", 'component "" is invalid'),
    ("a/b_/c", 'component "b_" is invalid'),
    ("-bad.host/x", 'registry host "-bad.host" is invalid'),
    ("bad host/x", "whitespace"),
    (":tag", "repository name is empty"),
    ("a/" + "b" * 260, "longer than 255"),
])
def test_bad_references_name_the_part(text: str, words: str) -> None:
    with pytest.raises(InvalidReference) as exc:
        parse(text)
    assert words in str(exc.value) and f'"{text}"' in str(exc.value)


def test_image_ids() -> None:
    assert is_image_id(D) and is_image_id("a" * 64)
    assert not is_image_id("busybox") and not is_image_id("a" * 63)
