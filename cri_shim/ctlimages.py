"""``cri-shim ctl``'s image commands, printing what crictl prints.

    pull [--creds USER:PASS | --auth BASE64] IMAGE     (a progress bar on a terminal)
    images [-q] [IMAGE]   inspecti IMAGE...   rmi IMAGE...   imagefsinfo   import FILE
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
from typing import Any

import grpc

from .api import admin_pb2 as admin
from .api import api_pb2 as pb
from .ctlprint import CtlError, human_size, print_status, table, to_dict

__all__ = ["add_parsers", "COMMANDS"]


def add_parsers(sub: Any) -> None:
    pull = sub.add_parser("pull", help="pull an image")
    pull.add_argument("image")
    pull.add_argument("--creds", default="", metavar="USER:PASS")
    pull.add_argument("--auth", default="", metavar="BASE64")
    images = sub.add_parser("images", help="list images")
    images.add_argument("image", nargs="?", default="")
    images.add_argument("-q", "--quiet", action="store_true", help="ids only")
    images.add_argument("--digests", action="store_true", help="show digests")
    inspecti = sub.add_parser("inspecti", help="an image's status, as JSON")
    inspecti.add_argument("images", nargs="+")
    rmi = sub.add_parser("rmi", help="remove images")
    rmi.add_argument("images", nargs="+")
    sub.add_parser("imagefsinfo", help="the image filesystem's usage, as JSON")
    imp = sub.add_parser("import", help="load the images of an archive (OCI or docker save)")
    imp.add_argument("file")


def _pull(c: Any, args: argparse.Namespace) -> int:
    auth = pb.AuthConfig()
    if args.creds:
        user, _, password = args.creds.partition(":")
        auth.username, auth.password = user, password
    elif args.auth:
        auth.auth = args.auth
    request = pb.PullImageRequest(image=pb.ImageSpec(image=args.image), auth=auth)
    if not sys.stderr.isatty():
        reply = c.image.PullImage(request, timeout=c.timeout)
    else:
        reply = _with_progress(c, request)
    print(f"Image is up to date for {reply.image_ref}")
    return 0


def _with_progress(c: Any, request: pb.PullImageRequest) -> pb.PullImageResponse:
    call = c.image.PullImage.future(request, timeout=c.timeout)
    done = threading.Event()
    call.add_done_callback(lambda _: done.set())
    while not done.wait(0.2):
        try:
            pulls = c.admin.PullProgress(admin.PullProgressRequest(), timeout=5).pulls
        except grpc.RpcError:
            continue
        for p in pulls:
            frac = p.done_bytes / p.total_bytes if p.total_bytes else 0.0
            bar = "#" * int(frac * 30)
            sys.stderr.write(f"\r{p.reference[:40]:40} [{bar:30}] {p.done_bytes / 2**20:7.1f}"
                             f"/{p.total_bytes / 2**20:.1f} MiB  layers {p.layers_done}/{p.layers}")
            sys.stderr.flush()
    sys.stderr.write("\r" + " " * 100 + "\r")
    return call.result()


def _images(c: Any, args: argparse.Namespace) -> int:
    # crictl always sends a filter; an empty image in it means no filter.
    reply = c.image.ListImages(pb.ListImagesRequest(filter=pb.ImageFilter(
        image=pb.ImageSpec(image=args.image))), timeout=c.timeout)
    if args.quiet:
        for image in reply.images:
            print(image.id)
        return 0
    rows = [("IMAGE", "TAG", "DIGEST", "IMAGE ID", "SIZE") if args.digests else
            ("IMAGE", "TAG", "IMAGE ID", "SIZE")]
    for image in reply.images:
        digest = image.repo_digests[0].split("@")[-1][7:19] if image.repo_digests else "<none>"
        names = [t.rsplit(":", 1) for t in image.repo_tags] or \
            [[(image.repo_digests[0].split("@")[0] if image.repo_digests else "<none>"), "<none>"]]
        for repo, tag in names:
            short_id = image.id.removeprefix("sha256:")[:13]
            row = (repo, tag, digest, short_id, human_size(image.size, 3)) if args.digests else \
                (repo, tag, short_id, human_size(image.size, 3))
            rows.append(row)
    table(rows)
    return 0


def _inspecti(c: Any, args: argparse.Namespace) -> int:
    for name in args.images:
        reply = c.image.ImageStatus(pb.ImageStatusRequest(image=pb.ImageSpec(image=name),
                                                          verbose=True), timeout=c.timeout)
        if not reply.HasField("image"):
            raise CtlError(f"no such image {name!r} present")
        print_status(reply.image, reply.info)
    return 0


def _rmi(c: Any, args: argparse.Namespace) -> int:
    for name in args.images:
        status = c.image.ImageStatus(pb.ImageStatusRequest(image=pb.ImageSpec(image=name)),
                                     timeout=c.timeout)
        if not status.HasField("image"):
            raise CtlError(f"no such image {name}")
        c.image.RemoveImage(pb.RemoveImageRequest(image=pb.ImageSpec(image=name)),
                            timeout=c.timeout)
        for ref in status.image.repo_tags or status.image.repo_digests:
            print(f"Deleted: {ref}")
    return 0


def _imagefsinfo(c: Any, args: argparse.Namespace) -> int:
    reply = c.image.ImageFsInfo(pb.ImageFsInfoRequest(), timeout=c.timeout)
    print(json.dumps({"status": to_dict(reply)}, indent=2))
    return 0


def _import(c: Any, args: argparse.Namespace) -> int:
    reply = c.admin.ImportImages(admin.ImportImagesRequest(path=os.path.abspath(args.file)),
                                 timeout=c.timeout)
    for image in reply.images:
        print(f"{', '.join(image.repo_tags) or '(no name)'}  {image.id}")
    return 0


COMMANDS = {"pull": _pull, "images": _images, "inspecti": _inspecti, "rmi": _rmi,
            "imagefsinfo": _imagefsinfo, "import": _import}
