"""The files a pod's containers share: ``/etc/hostname``, ``/etc/resolv.conf``,
``/etc/hosts`` and the ``/dev/shm`` tmpfs, made in the pod's directory under the
state dir and bind-mounted into every container, as containerd's sandbox does.

- ``resolv.conf`` from ``dns_config`` as containerd writes it (``search`` with every
  search domain, one ``nameserver`` line each, ``options``); without a DNS config the
  node's own ``/etc/resolv.conf`` is copied.
- ``hostname``: the pod's hostname (the node's for a host-network pod), newline ended.
- ``hosts``: kubelet sends its own ``/etc/hosts`` as a mount for most pods; the one
  written here is used when it does not: the node's copied for a host-network pod,
  else localhost entries and the pod's own address.
- ``shm``: a 64 MiB tmpfs (containerd's ``defaultShmSize``), for a pod that does not
  share the node's IPC namespace.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import shutil
import socket
from collections.abc import Sequence

from atomicfile import write_atomic

__all__ = ["PodFiles", "resolv_conf", "SHM_SIZE"]

SHM_SIZE = 64 << 20
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_MS_NOSUID, _MS_NODEV, _MS_NOEXEC, _MNT_DETACH = 2, 4, 8, 2
HOST_RESOLV_CONF = "/etc/resolv.conf"
HOST_HOSTS = "/etc/hosts"


def resolv_conf(servers: Sequence[str], searches: Sequence[str], options: Sequence[str]) -> str:
    text = ""
    if searches:
        text += f"search {' '.join(searches)}\n"
    for server in servers:
        text += f"nameserver {server}\n"
    if options:
        text += f"options {' '.join(options)}\n"
    return text


class PodFiles:
    """The pod directory *directory* (``<state>/pods/<sandbox id>``)."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.hostname = os.path.join(directory, "hostname")
        self.resolv_conf = os.path.join(directory, "resolv.conf")
        self.hosts = os.path.join(directory, "hosts")
        self.shm = os.path.join(directory, "shm")
        self.ipc = os.path.join(directory, "ipc")
        self.uts = os.path.join(directory, "uts")

    def write(self, *, hostname: str, host_network: bool, dns: tuple[Sequence[str], Sequence[str],
              Sequence[str]] | None, ip: str = "") -> None:
        """Write hostname, resolv.conf and hosts. Raises OSError."""
        os.makedirs(self.directory, mode=0o711, exist_ok=True)
        name = hostname or socket.gethostname()
        write_atomic(self.hostname, f"{name}\n".encode(), mode=0o644)
        text = resolv_conf(*dns) if dns else ""
        if text:
            write_atomic(self.resolv_conf, text.encode(), mode=0o644)
        else:
            _copy(HOST_RESOLV_CONF, self.resolv_conf)
        if host_network:
            _copy(HOST_HOSTS, self.hosts)
        else:
            write_atomic(self.hosts, hosts_file(name, ip).encode(), mode=0o644)

    def set_ip(self, hostname: str, ip: str) -> None:
        """Rewrite ``hosts`` once the pod has its address."""
        name = hostname or socket.gethostname()
        write_atomic(self.hosts, hosts_file(name, ip).encode(), mode=0o644)

    def mount_shm(self) -> None:
        os.makedirs(self.shm, mode=0o755, exist_ok=True)
        opts = f"mode=1777,size={SHM_SIZE}".encode()
        if _libc.mount(b"shm", os.fsencode(self.shm), b"tmpfs",
                       _MS_NOSUID | _MS_NODEV | _MS_NOEXEC, opts) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"cannot mount the pod's /dev/shm on {self.shm}: {os.strerror(err)}")

    def unmount_shm(self) -> None:
        if _libc.umount2(os.fsencode(self.shm), _MNT_DETACH) != 0:
            err = ctypes.get_errno()
            if err not in (errno.EINVAL, errno.ENOENT):
                raise OSError(err, f"cannot unmount {self.shm}: {os.strerror(err)}")

    def remove(self) -> None:
        """Remove the directory (after the shm and the namespaces are unmounted)."""
        self.unmount_shm()
        shutil.rmtree(self.directory, ignore_errors=True)


def hosts_file(hostname: str, ip: str) -> str:
    text = ("127.0.0.1\tlocalhost\n"
            "::1\tlocalhost ip6-localhost ip6-loopback\n"
            "fe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\n"
            "fe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n")
    if ip:
        text += f"{ip}\t{hostname}\n"
    return text


def _copy(source: str, dest: str) -> None:
    try:
        with open(source, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        data = b""
    write_atomic(dest, data, mode=0o644)
