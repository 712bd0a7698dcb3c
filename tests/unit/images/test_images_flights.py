"""SingleFlight: concurrent callers share one run; a joined failure is retried once."""

from __future__ import annotations

import threading

import pytest

from images.errors import ImageError
from images.flights import SingleFlight


def test_concurrent_callers_share_one_run() -> None:
    flights = SingleFlight()
    started, release = threading.Event(), threading.Event()
    runs: list[int] = []

    def work() -> str:
        runs.append(1)
        started.set()
        release.wait(5)
        return "done"
    results: list[str] = []
    first = threading.Thread(target=lambda: results.append(flights.do("k", work)))
    first.start()
    started.wait(5)
    others = [threading.Thread(target=lambda: results.append(flights.do("k", work)))
              for _ in range(3)]
    for t in others:
        t.start()
    release.set()
    for t in [first, *others]:
        t.join(5)
    assert results == ["done"] * 4 and len(runs) == 1 and flights.in_flight() == 0


def test_a_caller_that_joined_a_failed_run_runs_once_itself() -> None:
    flights = SingleFlight()
    started, release = threading.Event(), threading.Event()

    def failing() -> str:
        started.set()
        release.wait(5)
        raise ImageError("the owner's own source failed")
    owner_error: list[BaseException] = []

    def owner() -> None:
        try:
            flights.do("k", failing)
        except ImageError as exc:
            owner_error.append(exc)
    t = threading.Thread(target=owner)
    t.start()
    started.wait(5)
    joined: list[str] = []
    j = threading.Thread(target=lambda: joined.append(flights.do("k", lambda: "mine")))
    j.start()
    release.set()
    t.join(5)
    j.join(5)
    assert owner_error and joined == ["mine"]


def test_failures_are_not_remembered() -> None:
    flights = SingleFlight()
    with pytest.raises(ImageError):
        flights.do("k", lambda: (_ for _ in ()).throw(ImageError("once")))
    assert flights.do("k", lambda: 7) == 7
