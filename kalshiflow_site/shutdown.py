"""SIGTERM / SIGINT for the long-running async workers (recorder, paper trader)."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable


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
