"""Manifests, indexes, configs and platform selection."""

from __future__ import annotations

import json

import pytest

from images.errors import InvalidContent, NoMatchingPlatform
from images.manifest import (DOCKER_MANIFEST, OCI_MANIFEST, Descriptor, Platform,
                             parse_config, parse_index, parse_manifest, select_platform)

D = "sha256:" + "1" * 64


def manifest(**extra) -> bytes:
    doc = {"schemaVersion": 2,
           "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": D, "size": 10},
           "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": D,
                       "size": 5}]}
    doc.update(extra)
    return json.dumps(doc).encode()


def test_oci_manifest_without_media_type_field() -> None:
    m = parse_manifest(manifest(), OCI_MANIFEST, "m")
    assert m.media_type == OCI_MANIFEST and m.layers[0].size == 5


@pytest.mark.parametrize("doc,words", [
    (manifest(schemaVersion=1), "schema 1 manifests are not supported"),
    (manifest(layers=[{"mediaType": "application/x-foo", "digest": D, "size": 1}]), "cannot be unpacked"),
    (manifest(layers=[{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": "sha256:x",
                       "size": 1}]), "not a sha256 or sha512 digest"),
    (manifest(config={"mediaType": "application/vnd.cncf.helm.config.v1+json", "digest": D,
                      "size": 1}), "not an image config"),
    (b"[1]", "not a JSON object"),
    (b"{", "not JSON"),
])
def test_bad_manifests(doc: bytes, words: str) -> None:
    with pytest.raises(InvalidContent, match="m") as exc:
        parse_manifest(doc, DOCKER_MANIFEST, "m")
    assert words in str(exc.value)


def index(*platforms: tuple[str, str, str]) -> list[Descriptor]:
    return parse_index(json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": "sha256:" + f"{i}" * 64, "size": 1,
         "platform": {"os": o, "architecture": a, **({"variant": v} if v else {})}}
        for i, (o, a, v) in enumerate(platforms)]}).encode(), "idx")


def test_platform_selection() -> None:
    amd64 = Platform("linux", "amd64")
    idx = index(("linux", "arm64", "v8"), ("linux", "amd64", ""), ("windows", "amd64", ""))
    assert select_platform(idx, "x", amd64).digest == "sha256:" + "1" * 64
    assert select_platform(index(("linux", "x86_64", "")), "x", amd64).platform.architecture == "x86_64"
    assert select_platform(index(("linux", "386", ""), ("linux", "amd64", "v1")), "x", amd64) \
        .digest == "sha256:" + "1" * 64   # amd64/v1 is amd64, better than 386
    arm64 = Platform("linux", "aarch64")
    assert select_platform(idx, "x", arm64).digest == "sha256:" + "0" * 64
    armv7 = Platform("linux", "arm", "v7")
    assert select_platform(index(("linux", "arm", "v6"), ("linux", "arm", "v7")), "x", armv7) \
        .digest == "sha256:" + "1" * 64
    with pytest.raises(NoMatchingPlatform, match=r"no manifest for platform linux/amd64 \(the index "
                                                 r"has: linux/arm64/v8, windows/amd64\)"):
        select_platform(index(("linux", "arm64", "v8"), ("windows", "amd64", "")), "x", amd64)


def test_config() -> None:
    cfg = parse_config(json.dumps({"os": "linux", "architecture": "amd64",
                                   "config": {"User": "1000:50", "Env": ["A=1"], "Cmd": ["sh"],
                                              "Labels": {"a": "b"}, "StopSignal": "SIGQUIT"},
                                   "rootfs": {"type": "layers", "diff_ids": [D]}}).encode(), "c")
    assert (cfg.user, cfg.env, cfg.cmd, cfg.stop_signal, cfg.diff_ids) == ("1000:50", ("A=1",),
                                                                            ("sh",), "SIGQUIT", (D,))
    with pytest.raises(InvalidContent, match="config.Cmd is not a list of strings"):
        parse_config(json.dumps({"config": {"Cmd": "sh"}, "rootfs": {"diff_ids": []}}).encode(), "c")
    with pytest.raises(InvalidContent, match="rootfs.diff_ids missing"):
        parse_config(b"{}", "c")
