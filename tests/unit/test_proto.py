"""The CRI proto and its generated stubs.

Two independent checks keep proto/cri_shim/api/api.proto honest:

* the committed stubs in cri_shim/api/ are what hack/gen-proto makes now;
* every name, number and type we declare matches the stubs that another
  project generated from upstream's api.proto (PyPI's
  container-runtime-interface-api), and no upstream field of a message we
  declare is missing. Those stubs register the same ``runtime.v1`` names as
  ours, so they live in their own venv and both sides are compared through
  tests/compat/dump_descriptors.py's JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
DUMP = REPO / "tests" / "compat" / "dump_descriptors.py"
COMPAT_PYTHON = Path(
    os.environ.get("CRI_SHIM_COMPAT_PYTHON", REPO / ".venv-compat" / "bin" / "python")
)

# Every CRI RPC is declared (the servicer answers the ones it does not implement yet
# with UNIMPLEMENTED naming them); the compat test checks this is upstream's set.
DECLARED_RPCS = {
    "runtime.v1.RuntimeService": {
        "Version", "RunPodSandbox", "StopPodSandbox", "RemovePodSandbox", "PodSandboxStatus",
        "ListPodSandbox", "CreateContainer", "StartContainer", "StopContainer",
        "RemoveContainer", "ListContainers", "ContainerStatus", "UpdateContainerResources",
        "ReopenContainerLog", "ExecSync", "Exec", "Attach", "PortForward", "ContainerStats",
        "ListContainerStats", "PodSandboxStats", "ListPodSandboxStats", "GetContainerEvents",
        "ListMetricDescriptors", "ListPodSandboxMetrics", "UpdateRuntimeConfig", "Status",
        "RuntimeConfig", "CheckpointContainer", "UpdatePodSandboxResources",
    },
    "runtime.v1.ImageService": {"ListImages", "ImageStatus", "PullImage", "RemoveImage",
                                "ImageFsInfo"},
}

# Fields that upstream kubernetes/cri-api added after the PyPI stubs were
# generated, so they cannot be checked against them; their numbers were read
# from upstream's api.proto. Each entry must really be missing from the PyPI
# stubs (checked below), so this list shrinks when the pin moves.
NEWER_THAN_COMPAT = {
    "runtime.v1.ImageSpec.image_ref",
    "runtime.v1.RuntimeFeatures.user_namespaces_host_network",
}


def _dump(python: Path | str, module: str) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [str(python), str(DUMP), "--module", module],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, f"{python} {DUMP.name} --module {module}:\n{proc.stderr}"
    return json.loads(proc.stdout)


def test_generated_stubs_are_current() -> None:
    proc = subprocess.run(
        [str(REPO / "hack" / "gen-proto"), "--check"],
        cwd=REPO,
        env=dict(os.environ, PYTHON=sys.executable),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_declares_exactly_the_served_rpcs() -> None:
    from cri_shim.api import api_pb2, api_pb2_grpc

    declared = {
        svc.full_name: {m.name for m in svc.methods}
        for svc in api_pb2.DESCRIPTOR.services_by_name.values()
    }
    assert declared == DECLARED_RPCS
    # The grpc module must find the messages through the package, not a
    # top-level "api_pb2" that happens to be on sys.path.
    assert api_pb2_grpc.cri__shim_dot_api_dot_api__pb2 is api_pb2


def compare(ours: dict[str, Any], theirs: dict[str, Any]) -> list[str]:
    """Return every way ``ours`` is not a faithful subset of ``theirs``."""
    problems: list[str] = []
    if ours["package"] != theirs["package"]:
        problems.append(f"package {ours['package']!r} != upstream {theirs['package']!r}")
    if ours["syntax"] != theirs["syntax"]:
        problems.append(f"syntax {ours['syntax']!r} != upstream {theirs['syntax']!r}")

    for svc, body in ours["services"].items():
        their_svc = theirs["services"].get(svc)
        if their_svc is None:
            problems.append(f"service {svc} is not upstream")
            continue
        for name, method in body["methods"].items():
            their_method = their_svc["methods"].get(name)
            if their_method is None:
                problems.append(f"rpc {svc}.{name} is not upstream")
            elif method != their_method:
                problems.append(f"rpc {svc}.{name}: ours {method} != upstream {their_method}")

    for enum, body in ours["enums"].items():
        their_enum = theirs["enums"].get(enum)
        if their_enum is None:
            problems.append(f"enum {enum} is not upstream")
        elif body != their_enum:
            problems.append(f"enum {enum}: ours {body['values']} != upstream {their_enum['values']}")

    for msg, body in ours["messages"].items():
        their_msg = theirs["messages"].get(msg)
        if their_msg is None:
            problems.append(f"message {msg} is not upstream")
            continue
        for key in ("reserved_ranges", "reserved_names"):
            if body[key] != their_msg[key]:
                problems.append(f"message {msg} {key}: ours {body[key]} != upstream {their_msg[key]}")
        for name, field in body["fields"].items():
            their_field = their_msg["fields"].get(name)
            if their_field is None:
                if f"{msg}.{name}" not in NEWER_THAN_COMPAT:
                    problems.append(f"field {msg}.{name} (= {field['number']}) is not upstream")
            elif field != their_field:
                diffs = ", ".join(
                    f"{key} {field[key]!r} != upstream {their_field[key]!r}"
                    for key in sorted(field)
                    if field[key] != their_field.get(key)
                )
                problems.append(f"field {msg}.{name}: {diffs}")
        for name, their_field in their_msg["fields"].items():
            if name not in body["fields"]:
                problems.append(f"field {msg}.{name} (= {their_field['number']}) is upstream but missing here")
    return problems


def _upstream_or_skip() -> dict[str, Any]:
    if not COMPAT_PYTHON.exists():
        reason = (
            f"{COMPAT_PYTHON} is missing: run `make compat-venv` "
            "(or set CRI_SHIM_COMPAT_PYTHON)"
        )
        if os.environ.get("CRI_SHIM_REQUIRE_ALL") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return _dump(COMPAT_PYTHON, "cri_api.v1.api_pb2")


@pytest.mark.compat
def test_wire_compatible_with_independent_stubs() -> None:
    upstream = _upstream_or_skip()
    ours = _dump(sys.executable, "cri_shim.api.api_pb2")
    # Guard against a vacuous pass (an empty dump compares clean).
    assert {s: set(b["methods"]) for s, b in ours["services"].items()} == DECLARED_RPCS
    assert {s: set(b["methods"]) for s, b in upstream["services"].items()} == DECLARED_RPCS
    assert len(upstream["messages"]) > 100

    problems = compare(ours, upstream)
    assert not problems, "\n".join(problems)

    for dotted in sorted(NEWER_THAN_COMPAT):
        msg, _, name = dotted.rpartition(".")
        assert name in ours["messages"][msg]["fields"], f"{dotted} is allowlisted but not declared"
        assert name not in upstream["messages"][msg]["fields"], (
            f"{dotted} is now in the PyPI stubs: drop it from NEWER_THAN_COMPAT"
        )
