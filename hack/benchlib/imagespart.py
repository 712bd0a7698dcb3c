"""Image pulls (issue 10): cri-shim's PullImage against skopeo + umoci, interleaved.

A registry (Debian's docker-registry) runs in the node netns on 127.0.0.1 with one
image of ``layers`` layers of ``layer_mib`` MiB of incompressible data (the rig's
``big_image``). A is cri-shim pulling and unpacking it (PullImage, after a RemoveImage
so every round starts from nothing); B is the floor a user could get from tools made
for this: ``skopeo copy docker://... oci:DIR`` then ``umoci unpack`` of it into a fresh
bundle. Then PullImage of the image already present, which only resolves the tag.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from cri_shim.api import api_pb2 as pb
from testbed import imagebuild
from testbed.process import sh
from testbed.registry import Registry

from .context import Context
from .stats import ratio, summary

PORT = 5050


def run(ctx: Context) -> dict[str, Any]:
    sizes = ctx.sizes
    work = Path(tempfile.mkdtemp(prefix="images-", dir=ctx.work.root))
    node = ctx.shim.node
    reg = Registry(node, work, port=PORT).start()
    try:
        ctx.progress(f"images: building and pushing a {sizes.image_layers} x "
                     f"{sizes.image_layer_mib} MiB image")
        image = imagebuild.big_image(work / "layout", layers=sizes.image_layers,
                                     layer_mib=sizes.image_layer_mib)
        imagebuild.push(image, reg, "bench/big", "1")
        ref = f"{reg.host}/bench/big:1"
        shim_s: list[float] = []
        floor_s: list[float] = []
        for i in range(sizes.image_rounds + 1):
            a = _shim_pull(ctx, ref, fresh=True)
            b = _floor(reg, ref, work / f"floor-{i}", node)
            if i:                                  # the first round warms the page cache
                shim_s.append(a)
                floor_s.append(b)
        again = [_shim_pull(ctx, ref, fresh=False) for _ in range(sizes.image_repulls)]
        out: dict[str, Any] = {"pull": summary(shim_s), "skopeo_umoci": summary(floor_s),
                               "repull": summary(again),
                               "image_mib": sizes.image_layers * sizes.image_layer_mib,
                               "layers": sizes.image_layers}
        out["ratio"] = ratio(out["pull"]["median_ms"], out["skopeo_umoci"]["median_ms"])
        return out
    finally:
        _shim_remove(ctx, ref)
        reg.stop()
        shutil.rmtree(work, ignore_errors=True)


def _shim_remove(ctx: Context, ref: str) -> None:
    ctx.shim.image.RemoveImage(pb.RemoveImageRequest(image=pb.ImageSpec(image=ref)), timeout=120)


def _shim_pull(ctx: Context, ref: str, *, fresh: bool) -> float:
    if fresh:
        _shim_remove(ctx, ref)
    start = time.perf_counter()
    ctx.shim.image.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=ref)), timeout=600)
    return time.perf_counter() - start


def _floor(reg: Registry, ref: str, work: Path, node: Any) -> float:
    work.mkdir()
    start = time.perf_counter()
    imagebuild.skopeo("copy", "--quiet", "--src-tls-verify=false", f"docker://{ref}",
                      f"oci:{work / 'oci'}:1", ns=node, scratch=work)
    sh("umoci", "unpack", "--image", f"{work / 'oci'}:1", str(work / "bundle"))
    elapsed = time.perf_counter() - start
    shutil.rmtree(work, ignore_errors=True)
    return elapsed
