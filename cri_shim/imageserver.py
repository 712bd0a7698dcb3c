"""The CRI ImageService: a thin servicer over ``images.ImageService``.

As containerd's CRI plugin: ``PullImage`` answers the image id (the config digest) as
``image_ref``, which kubelet passes to CreateContainer; ``ImageStatus`` of an unknown
image is an empty answer, not an error; ``RemoveImage`` of an unknown image is OK;
``uid``/``username`` come from the config's ``User`` up to the first ``:`` (a number is
a uid); verbose ``info`` holds ``{"chainID", "imageSpec"}``; ``ImageFsInfo`` reports the
bytes and inodes the image store really uses, at the snapshots' directory.
"""

from __future__ import annotations

import json
import time
from typing import Any
from urllib.parse import urlsplit

from images.errors import HostsConfigError
from images.hosts import Credentials, decode_auth
from images.service import ImageService
from images.store import ImageRecord

from .api import admin_pb2 as admin
from .api import admin_pb2_grpc as admin_grpc
from .api import api_pb2 as pb
from .api import api_pb2_grpc as pb_grpc
from .errors import InvalidArgument
from .rpc import answer_unimplemented, rpc

__all__ = ["ImageServicer", "AdminServicer", "credentials"]

def credentials(auth: pb.AuthConfig) -> Credentials | None:
    """``PullImageRequest.auth`` as containerd reads it (``ParseAuth``): username and
    password; else the identity token; else base64 ``auth``; a registry token as it is.
    With a ``server_address`` they go only to that registry's host. None when kubelet
    sent none: each host then gets the registry table's ``configs."<host>".auth``."""
    server = urlsplit(auth.server_address if "://" in auth.server_address
                      else f"//{auth.server_address}").netloc
    if auth.username or auth.password:
        return Credentials(auth.username, auth.password, server=server)
    if auth.identity_token:
        return Credentials(identity_token=auth.identity_token, server=server)
    if auth.auth:
        try:
            user, password = decode_auth(auth.auth, "PullImageRequest.auth.auth")
        except HostsConfigError as exc:
            raise InvalidArgument(str(exc)) from None
        return Credentials(user, password, server=server)
    if auth.registry_token:
        return Credentials(registry_token=auth.registry_token, server=server)
    return None


class ImageServicer(pb_grpc.ImageServiceServicer):
    def __init__(self, service: ImageService) -> None:
        self.service = service

    @rpc
    def PullImage(self, request: pb.PullImageRequest, context: Any) -> pb.PullImageResponse:
        rec = self.service.pull(request.image.image, credentials(request.auth))
        return pb.PullImageResponse(image_ref=rec.id)

    @rpc
    def ImageStatus(self, request: pb.ImageStatusRequest, context: Any) -> pb.ImageStatusResponse:
        rec = self._find(request.image.image)
        if rec is None:
            return pb.ImageStatusResponse()
        reply = pb.ImageStatusResponse(image=self._image(rec))
        if request.verbose:
            config = self.service.config(rec)
            reply.info["info"] = json.dumps({"chainID": rec.chain_id, "imageSpec": config.raw})
        return reply

    @rpc
    def ListImages(self, request: pb.ListImagesRequest, context: Any) -> pb.ListImagesResponse:
        wanted = request.filter.image.image if request.HasField("filter") else ""
        if wanted:
            rec = self._find(wanted)
            return pb.ListImagesResponse(images=[self._image(rec)] if rec else [])
        return pb.ListImagesResponse(images=[self._image(r) for r in self.service.list()])

    @rpc
    def RemoveImage(self, request: pb.RemoveImageRequest, context: Any) -> pb.RemoveImageResponse:
        if not request.image.image:
            raise InvalidArgument("RemoveImageRequest.image.image is required")
        self.service.remove(request.image.image)
        return pb.RemoveImageResponse()

    @rpc
    def ImageFsInfo(self, request: Any, context: Any) -> pb.ImageFsInfoResponse:
        used, inodes = self.service.usage()
        usage = pb.FilesystemUsage(
            timestamp=time.time_ns(),
            fs_id=pb.FilesystemIdentifier(mountpoint=self.service.snapshots.root),
            used_bytes=pb.UInt64Value(value=used), inodes_used=pb.UInt64Value(value=inodes))
        return pb.ImageFsInfoResponse(image_filesystems=[usage])

    def _find(self, text: str) -> ImageRecord | None:
        if not text:
            raise InvalidArgument("ImageSpec.image is required")
        return self.service.find(text)

    def _image(self, rec: ImageRecord) -> pb.Image:
        config = self.service.config(rec)
        image = pb.Image(id=rec.id, repo_tags=rec.repo_tags, repo_digests=rec.repo_digests,
                         size=rec.size, pinned=rec.pinned,
                         spec=pb.ImageSpec(image=rec.id))
        user = config.user.split(":", 1)[0]
        if user.isdigit():
            image.uid.value = int(user)
        elif user:
            image.username = user
        return image


answer_unimplemented(ImageServicer, "ImageService")


class AdminServicer(admin_grpc.AdminServicer):
    """cri-shim's own service beside the CRI (``proto/cri_shim/api/admin.proto``)."""

    def __init__(self, service: ImageService) -> None:
        self.service = service

    @rpc
    def ImportImages(self, request: admin.ImportImagesRequest, context: Any) -> admin.ImportImagesResponse:
        if not request.path:
            raise InvalidArgument("ImportImagesRequest.path is required")
        records = self.service.import_archive(request.path)
        return admin.ImportImagesResponse(images=[
            admin.ImportedImage(id=r.id, repo_tags=r.repo_tags) for r in records])

    @rpc
    def PullProgress(self, request: Any, context: Any) -> admin.PullProgressResponse:
        now = time.monotonic()
        return admin.PullProgressResponse(pulls=[
            admin.Pull(reference=p.reference, total_bytes=p.total_bytes, done_bytes=p.done_bytes,
                       layers=p.layers, layers_done=p.layers_done, seconds=now - p.started)
            for p in self.service.progress()])
