"""Paper trading as a Celery task, for bounded sessions scheduled on the workers.

An open-ended trader belongs in ``manage.py paper_trade`` under a process supervisor: a
Celery worker's warm shutdown waits for running tasks, so a task must end by itself and
therefore takes a positive duration.
"""

from __future__ import annotations

from typing import Any

from celery import shared_task

from apps.trading.services import PaperError, run_paper_trading


@shared_task(name="trading.paper_trade")
def paper_trade_task(
    model_name: str,
    duration_s: float,
    exchange: str = "local",
    ws_url: str = "",
    cadence_s: float | None = None,
    on_change: bool = False,
) -> dict[str, Any]:
    """Paper trade ``model_name``'s active version for ``duration_s`` seconds (> 0).

    Returns the session's summary (P&L in dollars, decisions, episode id, model versions).
    """
    if not duration_s or duration_s <= 0:
        raise PaperError("a paper_trade task needs duration_s > 0 (a task must end by itself)")
    result = run_paper_trading(
        model_name=model_name,
        duration_s=duration_s,
        exchange=exchange,
        ws_url=ws_url,
        cadence_s=cadence_s,
        on_change=on_change,
        install_signal_handlers=False,  # the worker owns the process's signals
    )
    return {
        "model_name": result.model_name,
        "episode_id": result.episode_id,
        "decisions": result.decisions,
        "pnl_dollars": result.pnl_dollars,
        "fees_dollars": result.fees_dollars,
        "model_versions": result.model_versions,
        "kill_switch": result.kill_switch,
        "reload_errors": result.reload_errors,
    }
