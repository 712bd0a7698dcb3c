"""Exec, Attach and PortForward against real containers (runc, conmon) in a throwaway
node namespace, through our own SPDY and WebSocket clients (streaming.testing); with
``CRI_SHIM_CRICTL=/path/to/crictl`` also through the real crictl."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Iterator

import grpc
import pytest

from cri_shim.api import api_pb2 as pb
from streaming.testing import SpdyClient, WsClient
from testbed.containers import PodWorld, container_config

pytestmark = pytest.mark.privileged

HTTPD = ["sh", "-c", "httpd -f -p 8080 -h /www"]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PodWorld]:
    w = PodWorld(tmp_path_factory.mktemp("streaming"), prefix="crishim-strm")
    try:
        w.start()
        w.busybox(files={"www/index.html": b"hello from the pod\n"})
        w.sid = w.run_pod("streams")   # type: ignore[attr-defined]
        w.web = w.run(w.sid, container_config("web", command=HTTPD))   # type: ignore[attr-defined]
        yield w
        w.remove_pod(w.sid)   # type: ignore[attr-defined]
        assert w.leftovers() == {}
    finally:
        w.close()


def _exec_url(w: PodWorld, cid: str, cmd: list[str], **io: bool) -> str:
    return w.rt.Exec(pb.ExecRequest(container_id=cid, cmd=cmd, **io), timeout=30).url


def _spdy(w: PodWorld, url: str, **kw) -> SpdyClient:
    return SpdyClient(url, connect=w.node.connect, **kw)


def _processes(word: str) -> list[str]:
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if word in line and "ps -eo" not in line]


def test_exec_streams_and_exit_code(world: PodWorld) -> None:
    url = _exec_url(world, world.web, ["sh", "-c", "echo out; echo err >&2; exit 3"],
                    stdout=True, stderr=True)
    c = _spdy(world, url)
    got = c.command()
    c.close()
    assert (got["stdout"], got["stderr"]) == (b"out\n", b"err\n")
    status = json.loads(got["error"])
    assert status["reason"] == "NonZeroExitCode"
    assert status["details"]["causes"] == [{"reason": "ExitCode", "message": "3"}]
    assert status["message"] == ("command terminated with non-zero exit code: error executing "
                                 "command [sh -c echo out; echo err >&2; exit 3], exit code 3")


def test_exec_stdin_large(world: PodWorld) -> None:
    data = os.urandom(4 << 20)
    c = _spdy(world, _exec_url(world, world.web, ["sh", "-c", "cat | md5sum"], stdin=True, stdout=True))
    got = c.command(stdin=data, stderr=False)
    c.close()
    import hashlib
    assert got["stdout"].split()[0].decode() == hashlib.md5(data).hexdigest()
    assert json.loads(got["error"])["status"] == "Success"


def test_exec_tty_with_resize(world: PodWorld) -> None:
    c = _spdy(world, _exec_url(world, world.web, ["sh", "-c", "sleep 0.3; stty size; tty"],
                               stdout=True, tty=True))
    got = c.command(tty=True, resize=[(120, 40)], stderr=False)
    c.close()
    lines = got["stdout"].decode().split("\r\n")
    assert lines[0] == "40 120" and lines[1].startswith("/dev/pts/")


def test_exec_over_websocket_v5(world: PodWorld) -> None:
    ws = WsClient(_exec_url(world, world.web, ["cat"], stdin=True, stdout=True, stderr=True),
                  connect=world.node.connect)
    ws.send(0, b"ws stdin\n")
    ws.close_stdin()
    got = ws.collect()
    assert got[1] == b"ws stdin\n" and json.loads(got[3])["status"] == "Success"


def test_exec_a_command_not_in_the_image(world: PodWorld) -> None:
    c = _spdy(world, _exec_url(world, world.web, ["/no/such"], stdout=True))
    status = json.loads(c.command(stderr=False)["error"])
    c.close()
    assert status["reason"] == "InternalError"
    assert "error executing command in container" in status["message"] and "/no/such" in status["message"]


def test_client_gone_leaves_no_process(world: PodWorld) -> None:
    c = _spdy(world, _exec_url(world, world.web, ["sleep", "4321"], stdin=True, stdout=True))
    for kind in ("error", "stdin", "stdout"):
        c.open(streamType=kind)
    deadline = time.monotonic() + 10
    while not _processes("sleep 4321") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _processes("sleep 4321")
    c.sock.shutdown(2)
    c.sock.close()
    deadline = time.monotonic() + 10
    while _processes("sleep 4321") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _processes("sleep 4321") == [] and _processes("runc") == []
    assert world.state(world.web) == "CONTAINER_RUNNING"


def test_fifty_concurrent_execs_leave_nothing(world: PodWorld) -> None:
    import threading
    fds_before = len(os.listdir(f"/proc/{world.server.pid}/fd"))
    results: dict[int, bytes] = {}

    def one(i: int) -> None:
        c = _spdy(world, _exec_url(world, world.web, ["echo", str(i)], stdout=True))
        results[i] = c.command(stderr=False)["stdout"]
        c.close()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert results == {i: f"{i}\n".encode() for i in range(50)}
    deadline = time.monotonic() + 10
    while len(os.listdir(f"/proc/{world.server.pid}/fd")) > fds_before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(os.listdir(f"/proc/{world.server.pid}/fd")) <= fds_before
    assert _processes("runc") == [] and world.state(world.web) == "CONTAINER_RUNNING"


def test_exec_rpc_errors(world: PodWorld) -> None:
    for req, code, words in [
        (pb.ExecRequest(container_id=world.web, cmd=["ls"], tty=True, stderr=True),
         grpc.StatusCode.INVALID_ARGUMENT, "tty and stderr cannot both be true"),
        (pb.ExecRequest(container_id=world.web, cmd=["ls"]), grpc.StatusCode.INVALID_ARGUMENT,
         "one of stdin, stdout, or stderr must be set"),
        (pb.ExecRequest(container_id="f00d", cmd=["ls"], stdout=True), grpc.StatusCode.NOT_FOUND, "f00d"),
    ]:
        with pytest.raises(grpc.RpcError) as exc:
            world.rt.Exec(req, timeout=30)
        assert exc.value.code() == code and words in exc.value.details()
    with pytest.raises(grpc.RpcError) as exc:
        world.rt.PortForward(pb.PortForwardRequest(pod_sandbox_id="f00d"), timeout=30)
    assert exc.value.code() == grpc.StatusCode.NOT_FOUND


def test_attach_with_stdin_once(world: PodWorld) -> None:
    cid = world.run(world.sid, container_config("reader", command=["sh", "-c", "cat; echo done"],
                                                stdin=True, stdin_once=True))
    url = world.rt.Attach(pb.AttachRequest(container_id=cid, stdin=True, stdout=True, stderr=True),
                          timeout=30).url
    c = _spdy(world, url)
    got = c.command(stdin=b"through conmon\n")
    c.close()
    assert got["stdout"] == b"through conmon\ndone\n"
    st = world.wait_state(cid, "CONTAINER_EXITED")
    assert st.exit_code == 0
    world.remove(cid)


def test_attach_tty_and_a_container_that_exits(world: PodWorld) -> None:
    cid = world.run(world.sid, container_config("term", command=["sh"], stdin=True, tty=True))
    url = world.rt.Attach(pb.AttachRequest(container_id=cid, stdin=True, stdout=True, tty=True),
                          timeout=30).url
    c = _spdy(world, url)
    ids = {k: c.open(streamType=k) for k in ("error", "stdin", "stdout", "resize")}
    c.write(ids["resize"], b'{"Width":100,"Height":30}\n')
    time.sleep(0.3)
    c.write(ids["stdin"], b"stty size; exit 5\n")
    out = c.read_all(ids["stdout"]).decode()
    c.read_all(ids["error"])
    c.close()
    assert "30 100" in out
    assert world.wait_state(cid, "CONTAINER_EXITED").exit_code == 5
    world.remove(cid)


def test_port_forward_spdy_and_websocket(world: PodWorld) -> None:
    url = world.rt.PortForward(pb.PortForwardRequest(pod_sandbox_id=world.sid), timeout=30).url
    c = _spdy(world, url, protocols=("portforward.k8s.io",))
    request = b"GET /index.html HTTP/1.0\r\n\r\n"
    for n in range(2):
        err = c.open(streamType="error", port="8080", requestID=str(n))
        c.write(err, b"", fin=True)
        data = c.open(streamType="data", port="8080", requestID=str(n))
        c.write(data, request, fin=True)
        reply = c.read_all(data)
        assert reply.startswith(b"HTTP/1.") and reply.endswith(b"hello from the pod\n")
        assert c.read_all(err) == b""
    err = c.open(streamType="error", port="9", requestID="9")
    c.open(streamType="data", port="9", requestID="9")
    assert c.read_all(err).decode() == (f"error forwarding port 9 to pod {world.sid}, uid : failed to "
                                        f'connect to localhost:9 inside namespace "{world.sid}": '
                                        "Connection refused")
    c.close()
    ws_url = world.rt.PortForward(pb.PortForwardRequest(pod_sandbox_id=world.sid, port=[8080]),
                                  timeout=30).url
    ws = WsClient(ws_url, ("v4.channel.k8s.io",), connect=world.node.connect)
    ws.send(0, request)
    got = ws.collect()
    assert got[0].startswith(b"\x90\x1fHTTP/1.") and got[0].endswith(b"hello from the pod\n")
    assert got[1] == b"\x90\x1f"


# -- the real crictl, when given ------------------------------------------------------

CRICTL = os.environ.get("CRI_SHIM_CRICTL", "")


@pytest.mark.crictl
@pytest.mark.parametrize("transport", ["spdy", "websocket"])
def test_crictl_exec_attach_port_forward(world: PodWorld, transport: str, tmp_path: Path) -> None:
    crictl = [shutil.which("nsenter") or "nsenter", f"--net={world.node.path}", CRICTL,
              "-r", f"unix://{world.server.socket}"]
    ran = subprocess.run(crictl + ["exec", "-i", "--transport", transport, world.web, "sh", "-c",
                                   "cat; exit 4"], input=b"via crictl\n", capture_output=True, timeout=60)
    assert ran.stdout == b"via crictl\n" and b"command terminated with exit code 4" in ran.stderr
    log = open(tmp_path / "pf.log", "wb")
    pf = subprocess.Popen(crictl + ["port-forward", "--transport", transport, world.sid, "18090:8080"],
                          stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while b"Forwarding from" not in (tmp_path / "pf.log").read_bytes() and time.monotonic() < deadline:
            time.sleep(0.1)
        page = world.node.run("busybox", "wget", "-q", "-O", "-", "http://127.0.0.1:18090/index.html")
        assert page == "hello from the pod\n"
    finally:
        pf.terminate()
        pf.wait(10)
        log.close()
