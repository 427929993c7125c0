"""What every long-running worker (the recorder, the paper trader) runs on.

* **Stopping.** :func:`stop_signals` turns SIGTERM / SIGINT into an :class:`asyncio.Event`;
  :func:`run_until_stopped` waits for the first of: a task of the worker's ends, that event,
  an outside stop event (asyncio or threading, e.g. from a Channels consumer or the demo), or
  the run's duration.
* **Housekeeping.** :func:`ticks` is the housekeeping loop's clock and :class:`Periodic` one
  job on it (heartbeats, progress lines, snapshots, registry checks).
* **Worker threads.** Everything that touches the database runs off the event loop;
  :func:`closing_connections` closes the thread's connections afterwards (executor threads
  are reused by anything) and :func:`logged_failures` keeps a failing heartbeat from taking
  the worker down.
* **Start-up and health.** :func:`freeze_startup_heap` and :func:`feed_silence`.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from django.conf import settings
from django.db import connections

StopEvent = asyncio.Event | threading.Event

# How often an outside threading.Event is looked at (it cannot be awaited).
_POLL_S = 0.05


# -- stopping ----------------------------------------------------------------------------------


def install_stop_handlers(loop: asyncio.AbstractEventLoop, stop: Callable[[], None]) -> list[int]:
    """Call ``stop`` on SIGTERM or SIGINT; returns the signals installed.

    Outside the main thread (a Channels or Celery worker) nothing can be installed: the
    caller stops the worker through its stop event instead.
    """
    installed: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop)
        except (NotImplementedError, RuntimeError):
            continue
        installed.append(sig)
    return installed


def remove_stop_handlers(loop: asyncio.AbstractEventLoop, installed: list[int]) -> None:
    for sig in installed:
        loop.remove_signal_handler(sig)


@contextmanager
def stop_signals(stop: asyncio.Event, *, enabled: bool = True) -> Iterator[list[int]]:
    """While inside, SIGTERM / SIGINT set ``stop`` (when ``enabled``; main thread only)."""
    loop = asyncio.get_running_loop()
    installed = install_stop_handlers(loop, stop.set) if enabled else []
    try:
        yield installed
    finally:
        remove_stop_handlers(loop, installed)


async def _outside_stop(event: StopEvent) -> None:
    if isinstance(event, asyncio.Event):
        await event.wait()
        return
    # A threading.Event cannot be awaited, and a thread blocked in its wait() would outlive a
    # run that ends otherwise (asyncio.run waits for its executor): look at it every _POLL_S.
    while not event.is_set():  # noqa: ASYNC110
        await asyncio.sleep(_POLL_S)


async def run_until_stopped(
    work: Sequence[asyncio.Future[Any]],
    *,
    stop: asyncio.Event,
    duration_s: float = 0.0,
    outside: StopEvent | None = None,
) -> None:
    """Wait until a task of ``work`` ends, ``stop`` or ``outside`` is set, or ``duration_s``
    passes (0 = no limit); ``stop`` is set on return, whatever ended the wait.

    The tasks of ``work`` are left running: the caller stops and awaits them in its order."""
    waiters = [asyncio.create_task(stop.wait(), name="worker-stop")]
    if outside is not None:
        waiters.append(asyncio.create_task(_outside_stop(outside), name="worker-outside-stop"))
    try:
        await asyncio.wait(
            [*work, *waiters], timeout=duration_s or None, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        stop.set()
        for waiter in waiters:
            waiter.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)


# -- housekeeping ------------------------------------------------------------------------------


async def ticks(tick_s: float) -> AsyncIterator[float]:
    """The housekeeping loop's clock: the monotonic time every ``tick_s`` seconds, forever
    (cancel the task to end it)."""
    while True:
        await asyncio.sleep(tick_s)
        yield time.monotonic()


class Periodic:
    """A housekeeping job due every ``interval_s`` seconds of the monotonic clock.

    The first time is ``first_in_s`` from now (default: one interval; 0 = at the first tick).
    """

    def __init__(self, interval_s: float, *, first_in_s: float | None = None) -> None:
        self.interval_s = interval_s
        self.next_at = time.monotonic() + (interval_s if first_in_s is None else first_in_s)

    def due(self, now: float) -> bool:
        """True (and the next time set one interval after ``now``) when the job is due."""
        if now < self.next_at:
            return False
        self.next_at = now + self.interval_s
        return True


# -- worker threads and logging ------------------------------------------------------------------


def closing_connections(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn``, closing the calling thread's database connections after it (for a function run
    in an executor thread: those threads are reused by anything)."""

    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        finally:
            connections.close_all()

    call.__name__ = getattr(fn, "__name__", "call")
    return call


def logged_failures(
    fn: Callable[..., Any], *, log: logging.Logger, worker: str
) -> Callable[..., Any]:
    """Like :func:`closing_connections`, and a failure is logged as a warning and returns
    None instead of raising (heartbeats and status writes: never fatal to the worker)."""

    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # a heartbeat must never take the worker down
            log.warning("%s: %s failed: %s", worker, fn.__name__, exc)
            return None
        finally:
            connections.close_all()

    return call


def progress_sink(
    progress: Callable[[str], None] | None, log: logging.Logger
) -> Callable[[str], None]:
    """Where a worker's human-readable lines go: ``progress`` if given, else ``log`` (info)."""
    return progress or (lambda line: log.info("%s", line))


# -- start-up and health ------------------------------------------------------------------------


def freeze_startup_heap() -> None:
    """Move the objects alive now out of the garbage collector's way.

    Full collections over Django's start-up heap stall every thread for tens of milliseconds
    (measured in the recorder writer's outage test); freezing that heap keeps a worker's
    socket and decisions responsive. It only concerns the objects of today, not later ones.
    """
    gc.freeze()


def feed_silence(last_message_at: float | None, *, since: float) -> str | None:
    """The problem to report when the exchange has sent no frame for longer than
    ``RL_FEED_SILENT_S`` (default 30 s); ``since`` stands for the last frame when there was none
    yet (Unix seconds)."""
    silent_s = time.time() - (last_message_at or since)
    if silent_s > float(getattr(settings, "RL_FEED_SILENT_S", 30)):
        return f"no frame from the exchange for {silent_s:.0f}s"
    return None
