"""What a paper session is asked to do, what it did, and what stops it before it starts.

:class:`PaperOptions` (model, exchange, cadence, risk limits, ...), :class:`PaperResult`,
:class:`PaperError` and the mode check: only ``paper`` exists (:func:`check_mode`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from apps.trading.actor import DecisionOutcome
from apps.trading.risk import RiskSettings
from kalshiflow_site.modes import LiveTradingRefused, validate_mode


class PaperError(Exception):
    """A problem the operator must fix before paper trading can run (the message says how)."""


@dataclass
class PaperOptions:
    """What to paper trade and how. Times in seconds; None = the setting or model default.

    Attributes:
        model_name: the registry name; its active version trades.
        exchange: ``local`` (the bundled exchange), ``demo`` or ``prod`` (market data only).
        ws_url: any Kalshi-compatible WebSocket URL (overrides the exchange's).
        duration_s: stop after this long; 0 = until stopped.
        cadence_s: seconds between decisions (default: the model's training ``step_s``).
        on_change: decide on every book change instead of on a cadence.
        mode: must be ``paper``; ``live`` and the rest are refused.
        risk: kill-switch limits (default: the ``RL_PAPER_MAX_*`` settings).
        keep_trace: keep every decision's sample, observation, masks and actions in the result
            (for the parity test; memory grows with the run).
    """

    model_name: str
    exchange: str = "local"
    ws_url: str = ""
    duration_s: float = 0.0
    cadence_s: float | None = None
    on_change: bool = False
    mode: str = "paper"
    risk: RiskSettings | None = None
    reload_check_s: float | None = None
    status_interval_s: float | None = None
    flush_interval_s: float | None = None
    warmup_s: float | None = None
    progress_interval_s: float = 10.0
    keep_trace: bool = False


@dataclass
class DecisionTrace:
    """One decision as kept with ``keep_trace`` (times in Unix ns)."""

    outcome: DecisionOutcome
    model_version: int
    trigger_ns: int
    enqueued_ns: int


@dataclass
class PaperResult:
    """What a paper session did (money in dollars)."""

    model_name: str
    episode_id: int
    decisions: int
    pnl_dollars: float
    total_return: float
    fees_dollars: float
    trades: int
    positions: dict[str, float]
    model_versions: list[int]
    reload_errors: list[dict[str, Any]]
    kill_switch: dict[str, Any]
    writer: dict[str, Any]
    client: dict[str, Any]
    elapsed_s: float
    missed_ticks: int
    latency: dict[str, list[int]] = field(default_factory=dict)
    trace: list[DecisionTrace] = field(default_factory=list)


def check_mode(mode: str) -> None:
    """Refuse every mode but ``paper`` (``live`` with the product-wide message)."""
    value = validate_mode(mode, source="--mode")
    if value != "paper":
        raise LiveTradingRefused(
            f"--mode={value!r}: paper_trade only runs in paper mode (training and evaluation "
            "run through the train command)"
        )


def dollars(amount: float) -> str:
    """``+$1,234.50`` / ``-$0.43``: a signed amount of money for people."""
    return f"{'-' if amount < 0 else '+'}${abs(amount):,.2f}"
