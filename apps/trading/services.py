"""Paper trading: the promoted model on the live book, every decision logged, hot reload.

``run_paper_trading()`` is what ``manage.py paper_trade``, the Celery task and the demo run.
This layer checks what is asked (the mode, the exchange, the cadence), resolves the endpoint
(:mod:`apps.marketdata.endpoints`, as the recorder does), loads the model's active version
(:mod:`apps.trading.registry`), opens the paper episode
(:func:`~apps.training.services.start_paper_episode`) and hands over to the session runtime
(:mod:`apps.trading.session`), which follows the books, decides, logs and hot-reloads.

**Live trading does not exist.** The client only subscribes to market data; nothing in this
module (or anywhere in the product) can send an order. The mode is checked with
:func:`kalshiflow_site.modes.validate_mode` and anything but ``paper`` is refused.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
from django.core.exceptions import ImproperlyConfigured

from apps.marketdata.endpoints import EXCHANGES, EndpointError, resolve_endpoint
from apps.trading.options import PaperError, PaperOptions, PaperResult, check_mode
from apps.trading.registry import load_active_model
from apps.trading.risk import RiskSettings
from apps.trading.session import run_session
from apps.training.services import start_paper_episode
from apps.workers.runtime import closing_connections, freeze_startup_heap, progress_sink

log = logging.getLogger(__name__)


async def run_paper_async(
    options: PaperOptions,
    *,
    progress: Callable[[str], None] | None = None,
    stop_event: asyncio.Event | threading.Event | None = None,
    install_signal_handlers: bool = True,
) -> PaperResult:
    """Paper trade until ``duration_s`` passes, ``stop_event`` is set, or SIGTERM/SIGINT;
    every decision is in the database when this returns."""
    check_mode(options.mode)
    if options.exchange not in EXCHANGES:
        raise PaperError(f"--exchange must be local, demo or prod, not {options.exchange!r}")
    if options.cadence_s is not None and options.cadence_s <= 0:
        raise PaperError(f"--cadence-s must be positive, got {options.cadence_s}")
    try:
        endpoint = resolve_endpoint(exchange=options.exchange, ws_url=options.ws_url)
    except EndpointError as exc:
        raise PaperError(str(exc)) from None
    say = progress_sink(progress, log)
    risk = options.risk or RiskSettings.from_settings()
    model = await asyncio.to_thread(closing_connections(load_active_model), name=options.model_name)
    import torch  # only a running trader needs it (seconds to import)

    torch.set_num_threads(1)  # the trainer's setting: the same numbers, no thread contention
    freeze_startup_heap()  # as the recorder does: keeps decisions prompt
    episode_id = await asyncio.to_thread(
        closing_connections(start_paper_episode),
        model_id=model.policy.pk,
        markets=list(model.markets),
    )
    return await run_session(
        options,
        model=model,
        episode_id=episode_id,
        endpoint=endpoint,
        risk=risk,
        say=say,
        stop_event=stop_event,
        install_signal_handlers=install_signal_handlers,
    )


def run_paper_trading(
    *,
    model_name: str,
    ws_url: str = "",
    duration_s: float = 60.0,
    exchange: str = "local",
    progress: Callable[[str], None] | None = None,
    stop_event: threading.Event | None = None,
    install_signal_handlers: bool = True,
    **options: Any,
) -> PaperResult:
    """Paper trade the active version of ``model_name`` (synchronous; the demo calls this).

    Args:
        model_name: the registry name; its promoted version trades and is hot-reloaded.
        ws_url: the exchange's WebSocket URL ("" = the ``exchange``'s own).
        duration_s: seconds to run; 0 = until SIGTERM/SIGINT or ``stop_event``.
        exchange: ``local``, ``demo`` or ``prod`` (which keys and default URL to use).
        progress: called with one human-readable line at a time.
        stop_event: set it (from any thread) to stop.
        install_signal_handlers: stop on SIGTERM/SIGINT (main thread only).
        **options: any other :class:`PaperOptions` field (``cadence_s``, ``on_change``,
            ``mode``, ``risk``, ...).

    Returns:
        A :class:`PaperResult` (P&L in dollars, decision count, episode id, ...).
    """
    opts = PaperOptions(
        model_name=model_name, exchange=exchange, ws_url=ws_url, duration_s=duration_s, **options
    )
    try:
        return asyncio.run(
            run_paper_async(
                opts,
                progress=progress,
                stop_event=stop_event,
                install_signal_handlers=install_signal_handlers,
            )
        )
    except ImproperlyConfigured as exc:
        raise PaperError(str(exc)) from None


def latency_summary(values_ns: list[int]) -> dict[str, float | None]:
    """p50 / p99 / max of ns samples, in ms (None when empty)."""
    if not values_ns:
        return {"p50_ms": None, "p99_ms": None, "max_ms": None}
    arr = np.asarray(values_ns, dtype=np.float64) / 1e6
    return {
        "p50_ms": float(np.percentile(arr, 50)),
        "p99_ms": float(np.percentile(arr, 99)),
        "max_ms": float(arr.max()),
    }


__all__ = [
    "PaperError",
    "PaperOptions",
    "PaperResult",
    "latency_summary",
    "run_paper_async",
    "run_paper_trading",
]
