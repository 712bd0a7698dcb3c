"""Throwaway network namespaces: a node, an underlay between nodes, a pod.

``Namespace`` is ``ip netns add`` with ``lo`` up; commands run in it through
``nsenter --net=`` (not ``ip netns exec``, whose private mount namespace would hide the
pod netns our servers pin). ``delete()`` removes it with every link, address, route and
iptables rule inside.
"""

from __future__ import annotations

import secrets
import socket
import subprocess
import sys

from .process import sh

__all__ = ["Namespace", "Underlay"]


class Namespace:
    """A network namespace of ours, named ``<prefix>-<random>`` unless *name* is given."""

    def __init__(self, prefix: str = "crishim-t", *, name: str | None = None) -> None:
        self.name = name or f"{prefix}-{secrets.token_hex(4)}"
        self.path = f"/var/run/netns/{self.name}"
        sh("ip", "netns", "add", self.name)
        try:
            self.run("ip", "link", "set", "lo", "up")
        except BaseException:
            self.delete()
            raise

    def run(self, *cmd: str, check: bool = True, timeout: float = 120) -> str:
        """Run *cmd* inside; its stdout."""
        return sh("nsenter", f"--net={self.path}", *cmd, check=check, timeout=timeout)

    def links(self) -> list[str]:
        out = self.run("ip", "-o", "link", "show")
        return [line.split(": ")[1].split("@")[0] for line in out.splitlines()]

    def veths(self) -> list[str]:
        return [name for name in self.links() if name.startswith("veth")]

    def connect(self, host: str, port: int) -> socket.socket:
        """A TCP connection to *host*:*port* made inside this namespace (by a short
        child under ``nsenter``, which passes the socket back), so a test in the host's
        namespace talks to a server on the node's 127.0.0.1."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        code = ("import socket,sys;s=socket.create_connection((sys.argv[1],int(sys.argv[2])),timeout=10);"
                "c=socket.socket(fileno=int(sys.argv[3]));"
                "c.sendmsg([b'x'],[(socket.SOL_SOCKET,socket.SCM_RIGHTS,s.fileno().to_bytes(4,sys.byteorder))])")
        with ours:
            try:
                proc = subprocess.run(["nsenter", f"--net={self.path}", sys.executable, "-S", "-c", code,
                                       host, str(port), str(theirs.fileno())],
                                      pass_fds=(theirs.fileno(),), capture_output=True, text=True, timeout=30)
            finally:
                theirs.close()
            if proc.returncode != 0:
                raise ConnectionError(f"connecting to {host}:{port} in {self.name}: {proc.stderr.strip()}")
            _, anc, _, _ = ours.recvmsg(1, socket.CMSG_SPACE(4))
        return socket.socket(fileno=int.from_bytes(anc[0][2][:4], sys.byteorder))

    def delete(self) -> None:
        sh("ip", "netns", "del", self.name, check=False)

    close = delete


class Underlay(Namespace):
    """A namespace with bridge ``br0`` (at *address*, e.g. ``198.18.0.254/24``, when
    given): the network between nodes. ``attach`` gives a node an ``eth0`` on it."""

    def __init__(self, prefix: str, address: str = "") -> None:
        super().__init__(prefix)
        try:
            self.run("ip", "link", "add", "br0", "type", "bridge")
            if address:
                self.run("ip", "addr", "add", address, "dev", "br0")
            self.run("ip", "link", "set", "br0", "up")
        except BaseException:
            self.delete()
            raise

    def attach(self, node: Namespace, index: int, address: str) -> None:
        """veth ``u<index>`` on br0 to ``eth0`` in *node*, which gets *address* and
        IP forwarding."""
        self.run("ip", "link", "add", f"u{index}", "type", "veth", "peer", "name", "eth0",
                 "netns", node.name)
        self.run("ip", "link", "set", f"u{index}", "master", "br0", "up")
        node.run("ip", "addr", "add", address, "dev", "eth0")
        node.run("ip", "link", "set", "eth0", "up")
        # /proc/sys/net is the writer's namespace's (no procps needed)
        node.run("sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward")
