"""The workers' shared runtime: what stops a worker, the housekeeping clock, feed silence."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time

import pytest

from apps.workers.runtime import (
    Periodic,
    feed_silence,
    logged_failures,
    run_until_stopped,
    stop_signals,
)


def test_an_outside_threading_event_stops_the_wait_and_sets_stop() -> None:
    async def scenario() -> tuple[float, bool, bool]:
        stop, outside = asyncio.Event(), threading.Event()
        work = asyncio.create_task(asyncio.sleep(30))
        threading.Timer(0.2, outside.set).start()
        started = time.monotonic()
        await run_until_stopped([work], stop=stop, duration_s=30, outside=outside)
        waited = time.monotonic() - started
        still_running = not work.done()
        work.cancel()
        return waited, stop.is_set(), still_running

    waited, stopped, still_running = asyncio.run(scenario())
    assert 0.15 < waited < 2
    assert stopped, "whatever ended the wait, stop is set for the worker's own loops"
    assert still_running, "the caller stops its tasks in its own order"


def test_the_duration_a_finished_task_or_stop_each_end_the_wait() -> None:
    async def scenario() -> list[float]:
        times = []
        for case in ("duration", "task", "stop"):
            stop = asyncio.Event()
            work = asyncio.create_task(asyncio.sleep(0.1 if case == "task" else 30))
            if case == "stop":
                asyncio.get_running_loop().call_later(0.1, stop.set)
            started = time.monotonic()
            await run_until_stopped(
                [work], stop=stop, duration_s=0.1 if case == "duration" else 0.0
            )
            times.append(time.monotonic() - started)
            assert stop.is_set()
            work.cancel()
        return times

    assert all(0.05 < t < 2 for t in asyncio.run(scenario()))


def test_sigterm_sets_stop_while_the_handlers_are_installed() -> None:
    before = signal.getsignal(signal.SIGTERM)

    async def scenario() -> bool:
        stop = asyncio.Event()
        with stop_signals(stop) as installed:
            assert signal.SIGTERM in installed
            os.kill(os.getpid(), signal.SIGTERM)
            await asyncio.wait_for(stop.wait(), 5)
        return stop.is_set()

    assert asyncio.run(scenario())
    assert signal.getsignal(signal.SIGTERM) == before


def test_a_periodic_job_is_due_once_per_interval() -> None:
    job = Periodic(10.0, first_in_s=0)
    now = time.monotonic()
    assert job.due(now)
    assert not job.due(now + 9.9)
    assert job.due(now + 10.0)
    assert not job.due(now + 15.0)
    assert not Periodic(10.0).due(time.monotonic()), "the first time is one interval away"


def test_feed_silence_counts_from_the_last_frame_or_the_start(settings) -> None:
    settings.RL_FEED_SILENT_S = 30
    now = time.time()
    assert feed_silence(now - 5, since=now - 100) is None
    assert feed_silence(now - 45, since=now) == "no frame from the exchange for 45s"
    assert feed_silence(None, since=now - 60) == "no frame from the exchange for 60s"
    assert feed_silence(None, since=now) is None


def test_a_failing_heartbeat_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    def beat() -> None:
        raise RuntimeError("database down")

    log = logging.getLogger("tests.workers")
    with caplog.at_level(logging.WARNING, logger="tests.workers"):
        assert logged_failures(beat, log=log, worker="paper trader")() is None
    assert "paper trader: beat failed: database down" in caplog.text
