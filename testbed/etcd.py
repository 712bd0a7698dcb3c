"""etcd (Debian's etcd-server) serving inside one of our namespaces."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from typing import Any

from .process import stop, wait_for

__all__ = ["ETCD", "Etcd"]

ETCD = "/usr/bin/etcd"


class Etcd:
    """One etcd member in namespace *ns* (anything with ``.path``), clients on
    ``http://<address>:2379``, its data and log in a temp dir removed by ``stop``."""

    def __init__(self, ns: Any, address: str = "127.0.0.1", *, name: str = "testbed") -> None:
        self.ns = ns
        self.name = name
        self.endpoint = f"http://{address}:2379"
        self.data_dir = tempfile.mkdtemp(prefix="testbed-etcd-")
        self.log_path = os.path.join(self.data_dir, "etcd.log")
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30) -> "Etcd":
        peer = "http://127.0.0.1:2380"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                ["nsenter", f"--net={self.ns.path}", ETCD, "--name", self.name,
                 "--data-dir", os.path.join(self.data_dir, "data"),
                 "--listen-client-urls", self.endpoint, "--advertise-client-urls", self.endpoint,
                 "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                 "--initial-cluster", f"{self.name}={peer}", "--log-level", "warn"],
                stdout=log, stderr=subprocess.STDOUT)
        wait_for(self.healthy, "etcd", self.log, proc=self.proc, timeout=timeout)
        # etcd (nsenter exec'ed it) runs in the throwaway namespace, not the host's.
        assert os.stat(f"/proc/{self.proc.pid}/ns/net").st_ino == os.stat(self.ns.path).st_ino
        return self

    def healthy(self) -> bool:
        """etcd answers ``/health`` with true. Run from inside the namespace (the
        caller's thread is there, or the namespace shares a path to it)."""
        try:
            out = subprocess.run(
                ["nsenter", f"--net={self.ns.path}", sys.executable, "-c",
                 "import sys, urllib.request as u; print(u.build_opener(u.ProxyHandler({}))"
                 ".open(sys.argv[1], timeout=1).read().decode())", self.endpoint + "/health"],
                capture_output=True, text=True, timeout=10).stdout
        except subprocess.TimeoutExpired:
            return False
        return '"health":"true"' in out.replace(" ", "")

    def stop(self) -> None:
        """Kill etcd (a test's data is throwaway) and remove its data."""
        stop(self.proc, timeout=30)
        self.proc = None
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def pause(self) -> None:
        """Stop etcd but keep its data: ``start`` brings the same cluster back."""
        stop(self.proc, timeout=30)
        self.proc = None

    def log(self) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()[-3000:]
        except OSError:
            return ""
