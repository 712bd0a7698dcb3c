"""Soak (issue 14): pod cycles with a container each (run, create, start, stop,
remove) from 8 clients; the server's descriptors, threads and memory stay flat and
nothing is left. ``make test`` runs it for about two minutes; ``make soak`` does the
2,000 cycles (CRI_SHIM_SOAK=long), and says the figures."""

from __future__ import annotations

import os
import threading
import time

import pytest

from cri_shim.api import api_pb2 as pb
from testbed.containers import PodWorld, container_config
from testbed.pods import pod_config

pytestmark = pytest.mark.privileged

LONG = os.environ.get("CRI_SHIM_SOAK") == "long"
CYCLES = 2000 if LONG else None
SECONDS = None if LONG else 110.0
CLIENTS = 8


def usage(pid: int) -> dict[str, int]:
    status = dict(line.split(":", 1) for line in open(f"/proc/{pid}/status").read().splitlines()
                  if ":" in line)
    return {"fds": len(os.listdir(f"/proc/{pid}/fd")), "threads": int(status["Threads"]),
            "rss_kib": int(status["VmRSS"].split()[0])}


def test_soak(tmp_path) -> None:
    world = PodWorld(tmp_path).start()
    try:
        world.busybox()
        pid = world.server.pid
        done = [0]
        errors: list[str] = []
        lock = threading.Lock()
        stop_at = time.monotonic() + SECONDS if SECONDS else None
        samples: list[dict[str, int]] = []

        def more() -> int | None:
            with lock:
                if errors or (CYCLES and done[0] >= CYCLES) or (stop_at and time.monotonic() > stop_at):
                    return None
                done[0] += 1
                return done[0]

        def client(k: int) -> None:
            while (n := more()) is not None:
                config = pod_config(f"soak-{k}-{n}", log_directory=str(world.work / "logs" / f"{k}-{n}"))
                try:
                    sid = world.rt.RunPodSandbox(pb.RunPodSandboxRequest(config=config), timeout=120).pod_sandbox_id
                    cid = world.rt.CreateContainer(pb.CreateContainerRequest(
                        pod_sandbox_id=sid, sandbox_config=config,
                        config=container_config("c", command=["sleep", "600"])), timeout=120).container_id
                    world.rt.StartContainer(pb.StartContainerRequest(container_id=cid), timeout=120)
                    world.rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=sid), timeout=120)
                    world.rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sid), timeout=120)
                except Exception as exc:   # the first failure ends the soak, and says why
                    with lock:
                        errors.append(f"cycle {n}: {exc}")

        threads = [threading.Thread(target=client, args=(k,)) for k in range(CLIENTS)]
        started = time.monotonic()
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            time.sleep(5)
            samples.append(usage(pid))
        for t in threads:
            t.join()
        elapsed = time.monotonic() - started
        assert not errors, errors[:3]
        end = usage(pid)
        # Flat: the second half's samples no higher than the first half's (small slack
        # for a thread or descriptor caught mid-call, and for the allocator).
        half = samples[len(samples) // 4: len(samples) // 2] or samples[:1]
        base = {k: max(s[k] for s in half) for k in end}
        print(f"soak: {done[0]} cycles with a container each in {elapsed:.0f} s "
              f"({done[0] / elapsed:.1f}/s, {CLIENTS} clients); start {samples[0]} end {end}")
        assert end["fds"] <= base["fds"] + 8, (samples, end)
        assert end["threads"] <= base["threads"] + 8, (samples, end)
        assert end["rss_kib"] <= base["rss_kib"] * 1.15 + 8192, (samples, end)
        assert done[0] >= (CYCLES or 100)
        assert world.rt.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=60).items == []
        assert world.leftovers() == {}
    finally:
        world.close()
