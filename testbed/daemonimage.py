"""The node-daemon image (the top-level ``Dockerfile``) built and run with nothing
pulled from a registry: a Debian bookworm base made by ``debootstrap`` (minbase, from
Debian's archive) and imported as ``debian:bookworm-slim``, our wheel and its pinned
dependencies from ``pip wheel``, then ``buildah bud`` and ``podman run``.

Everything podman and buildah keep lives in a storage root of our own under *work*
(``--root``/``--runroot``), so ``/var/lib/containers`` is never touched, and
:meth:`DaemonImage.close` resets it (unmounting what is mounted). Builds run with the
host's network namespace (``--network=host``: apt and nothing else goes out) so no
bridge is ever made on the machine; containers run in a namespace of ours.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Sequence

from .process import REPO

__all__ = ["DaemonImage", "BASE", "MIRROR"]

BASE = "docker.io/library/debian:bookworm-slim"
MIRROR = "http://deb.debian.org/debian"
# The machine's limits may be below podman's defaults (nofile and nproc 1048576);
# crun cannot run in a hybrid cgroup layout, runc can.
RUN_FLAGS = ("--runtime", "runc", "--ulimit", "nofile=1024:8192", "--ulimit", "nproc=4096:4096")


class DaemonImage:
    def __init__(self, work: Path, tag: str = "localhost/cri-shim:test") -> None:
        self.work, self.tag = work, tag
        # podman wants a run root under 50 characters: a short directory of our own
        self.runroot = tempfile.mkdtemp(prefix="cs-img-", dir="/tmp")
        self.storage = ("--root", str(work / "storage"), "--runroot", self.runroot,
                        "--storage-driver", "overlay")

    def _run(self, tool: str, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
        proc = subprocess.run([tool, *self.storage, *args], capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"{tool} {' '.join(args[:3])}... failed ({proc.returncode}):\n"
                               f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        return proc

    def base(self) -> None:
        """debootstrap a minbase bookworm and import it as ``BASE``."""
        root = self.work / "base"
        proc = subprocess.run(["debootstrap", "--variant=minbase", "bookworm", str(root), MIRROR],
                              capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            raise RuntimeError(f"debootstrap failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        for junk in ("var/cache/apt/archives", "usr/share/doc", "usr/share/man"):
            shutil.rmtree(root / junk, ignore_errors=True)
        tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        try:
            proc = subprocess.run(["podman", *self.storage, "import", "-", BASE], stdin=tar.stdout,
                                  capture_output=True, text=True, timeout=600)
        finally:
            assert tar.stdout is not None
            tar.stdout.close()
            tar.wait()
        if proc.returncode != 0:
            raise RuntimeError(f"podman import failed: {proc.stderr[-2000:]}")
        shutil.rmtree(root, ignore_errors=True)

    def build(self) -> None:
        """``pip wheel`` the checkout into a context with the Dockerfile, then build."""
        context = self.work / "context"
        dist = context / "dist"
        dist.mkdir(parents=True)
        proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check",
                               "-w", str(dist), str(REPO)], capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            raise RuntimeError(f"pip wheel failed:\n{proc.stderr[-3000:]}")
        shutil.copy(REPO / "Dockerfile", context / "Dockerfile")
        self._run("buildah", "bud", "--pull=never", "--network=host", "--isolation=chroot",
                  "-t", self.tag, "-f", str(context / "Dockerfile"), str(context))

    def run(self, args: Sequence[str], *, podman_args: Sequence[str] = (), timeout: float = 300) -> str:
        """``podman run --rm`` of the image with *args*; its output."""
        return self._run("podman", "run", "--rm", *RUN_FLAGS, *podman_args, self.tag, *args,
                         timeout=timeout).stdout

    def close(self) -> None:
        """Remove every container, image and layer of our storage root."""
        subprocess.run(["podman", *self.storage, "system", "reset", "--force"],
                       capture_output=True, timeout=300)
        shutil.rmtree(self.work / "storage", ignore_errors=True)
        shutil.rmtree(self.runroot, ignore_errors=True)
