"""sd_notify(3): the datagram systemd's Type=notify waits for."""

from __future__ import annotations

import os
import socket

from cri_shim import sdnotify


def test_notify_to_a_path_and_to_the_abstract_namespace(tmp_path, monkeypatch) -> None:
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        monkeypatch.setattr(sdnotify, "_claimed", None)
        assert sdnotify.notify("READY=1")
        assert sock.recv(100) == b"READY=1"
    name = f"cri-shim-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        sdnotify.claim()                          # taken out of the children's environment
        assert "NOTIFY_SOCKET" not in os.environ
        assert sdnotify.notify("STOPPING=1")
        assert sock.recv(100) == b"STOPPING=1"
    monkeypatch.setattr(sdnotify, "_claimed", None)


def test_without_systemd_nothing_is_sent(monkeypatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.setattr(sdnotify, "_claimed", None)
    assert not sdnotify.notify("READY=1")


def test_a_socket_nobody_listens_on_is_a_warning_not_a_failure(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))
    monkeypatch.setattr(sdnotify, "_claimed", None)
    assert not sdnotify.notify("READY=1")
