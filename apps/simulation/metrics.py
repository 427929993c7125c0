"""Trading metrics that mean one thing, with block-bootstrap confidence intervals (pure numpy).

Every figure is defined once here and used by the evaluation, the registry, the admin, the
API, TensorBoard and the demo:

* ``pnl_dollars``: the change in marked equity over all evaluated time, in dollars.
* ``return_per_episode``: that P&L over the initial cash, per evaluated episode.
* ``pnl_per_hour_dollars``: P&L per hour of **market time** (the recorded clock, not wall time).
* ``sharpe_per_hour``: mean / standard deviation of the per-step equity change, times
  ``sqrt(steps per hour of market time)``. The time unit is explicit, so the figure does not
  grow with the episode length (``mean/std * sqrt(steps in the episode)`` did: 5.3 / 10.4 /
  20.9 for one policy at 300 / 1,200 / 4,800 steps).
* ``win_rate``: the share of **closed round trips** that made money after fees. A round trip
  in a market starts when the position leaves flat and ends when it is flat again (closed by
  trades or settled); its P&L is the change of the market's realised P&L minus the fees paid
  in between. Trips still open at the end of an episode are not counted (``open_trips``).
* ``turnover``: traded notional over the initial cash.
* ``fees_dollars``: fees paid.
* ``time_in_market``: the share of steps that end holding anything.
* ``max_drawdown``: the largest fall of marked equity from its running peak, as a fraction of
  that peak, within one episode; the worst episode's.

Confidence intervals: the evaluation is cut into contiguous blocks of steps (by default each
episode is one block; a long episode is cut into ``block_steps`` pieces) and blocks are drawn
with replacement (a block bootstrap keeps the serial dependence inside a block), the metric
recomputed on each draw, and the 2.5 % / 97.5 % percentiles reported. Comparisons with a
baseline (:func:`paired_difference`) draw the *same* blocks for both policies, which were run
on the same start ticks, so the market path cancels out of the difference.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

HOUR_NS = 3_600 * 10**9
CONFIDENCE = 0.95
DEFAULT_RESAMPLES = 1_000
METRICS = (
    "pnl_dollars",
    "return_per_episode",
    "pnl_per_hour_dollars",
    "sharpe_per_hour",
    "win_rate",
    "turnover",
    "fees_dollars",
    "time_in_market",
    "max_drawdown",
)


@dataclass
class Block:
    """A contiguous run of steps of one policy. Money in e6 ($0.000001), fees in e4."""

    dt_ns: np.ndarray  # (n,) market time each step spans
    pnl_e6: np.ndarray  # (n,) change of marked equity in the step
    fees_e4: np.ndarray  # (n,) fees paid in the step
    notional_e6: np.ndarray  # (n,) traded notional in the step
    in_market: np.ndarray  # (n,) bool: holding anything after the step
    equity_e6: np.ndarray  # (n + 1,) marked equity at the block's start and after each step
    trip_pnls_e6: np.ndarray  # P&L of the round trips that closed inside the block
    open_trips: int = 0  # trips still open at the end of the episode (last block only)

    @property
    def steps(self) -> int:
        return int(self.dt_ns.size)


@dataclass
class EpisodeTrace:
    """Per-step records of one episode, from which blocks and round trips are cut.

    ``held`` / ``realized_e6`` / ``fees_cum_e4`` are per market after each step, row 0 being
    the state at reset (shape (steps + 1, n_markets)); ``equity_e6`` likewise per step.
    """

    times_ns: np.ndarray
    equity_e6: np.ndarray
    notional_e6: np.ndarray  # (steps,)
    held: np.ndarray
    realized_e6: np.ndarray
    fees_cum_e4: np.ndarray

    def blocks(self, block_steps: int | None = None) -> list[Block]:
        steps = self.notional_e6.size
        size = steps if not block_steps or block_steps >= steps else int(block_steps)
        closes_at, trip_pnls, open_trips = round_trips(
            self.held, self.realized_e6, self.fees_cum_e4
        )
        fees_total = self.fees_cum_e4.sum(axis=1)
        in_market = self.held.any(axis=1)[1:]
        out = []
        for lo in range(0, steps, size):
            hi = min(lo + size, steps)
            inside = (closes_at > lo) & (closes_at <= hi)
            out.append(
                Block(
                    dt_ns=np.diff(self.times_ns[lo : hi + 1]).astype(np.int64),
                    pnl_e6=np.diff(self.equity_e6[lo : hi + 1]).astype(np.float64),
                    fees_e4=np.diff(fees_total[lo : hi + 1]),
                    notional_e6=self.notional_e6[lo:hi],
                    in_market=in_market[lo:hi],
                    equity_e6=self.equity_e6[lo : hi + 1].astype(np.float64),
                    trip_pnls_e6=trip_pnls[inside],
                    open_trips=open_trips if hi == steps else 0,
                )
            )
        return out


def round_trips(
    held: np.ndarray, realized_e6: np.ndarray, fees_cum_e4: np.ndarray
) -> tuple[np.ndarray, np.ndarray, int]:
    """Closed round trips of an episode: (step each closed at, its P&L in e6, trips left open).

    A trip of a market runs from the step its position leaves flat to the step it is flat
    again; its P&L is the realised P&L gained over the trip minus the fees paid over it.
    """
    closes: list[int] = []
    pnls: list[float] = []
    open_trips = 0
    steps = held.shape[0] - 1
    for j in range(held.shape[1]):
        column = held[:, j]
        opened: int | None = 0 if column[0] else None
        for t in range(1, steps + 1):
            if opened is None and column[t]:
                opened = t - 1
            elif opened is not None and not column[t]:
                gained = realized_e6[t, j] - realized_e6[opened, j]
                fees = fees_cum_e4[t, j] - fees_cum_e4[opened, j]
                closes.append(t)
                pnls.append(float(gained - 100 * fees))
                opened = None
        if opened is not None:
            open_trips += 1
    return np.asarray(closes, dtype=np.int64), np.asarray(pnls, dtype=np.float64), open_trips


def _drawdown(equity: np.ndarray) -> float:
    if equity.size == 0:
        return 0.0
    peak = np.maximum.accumulate(equity)
    return float(((peak - equity) / peak).max())


def compute(
    blocks: Sequence[Block], *, initial_cash_e6: int, blocks_per_episode: float = 1.0
) -> dict[str, float | int | None]:
    """Every metric of :data:`METRICS` over ``blocks`` (plus counts), point estimates."""
    dt = np.concatenate([b.dt_ns for b in blocks]) if blocks else np.zeros(0, np.int64)
    pnl = np.concatenate([b.pnl_e6 for b in blocks]) if blocks else np.zeros(0)
    hours = float(dt.sum()) / HOUR_NS
    total_pnl = float(pnl.sum())
    episodes = len(blocks) / blocks_per_episode if blocks else 0.0
    sharpe = None
    if pnl.size > 1 and hours > 0:
        std = float(pnl.std())
        if std > 0:
            steps_per_hour = pnl.size / hours
            sharpe = float(pnl.mean()) / std * math.sqrt(steps_per_hour)
    trips = np.concatenate([b.trip_pnls_e6 for b in blocks]) if blocks else np.zeros(0)
    steps = int(pnl.size)
    return {
        "pnl_dollars": total_pnl / 1e6,
        "return_per_episode": (total_pnl / initial_cash_e6 / episodes) if episodes else 0.0,
        "pnl_per_hour_dollars": (total_pnl / 1e6 / hours) if hours > 0 else None,
        "sharpe_per_hour": sharpe,
        "win_rate": float((trips > 0).mean()) if trips.size else None,
        "turnover": float(sum(b.notional_e6.sum() for b in blocks)) / initial_cash_e6,
        "fees_dollars": float(sum(b.fees_e4.sum() for b in blocks)) / 1e4,
        "time_in_market": (float(sum(b.in_market.sum() for b in blocks)) / steps) if steps else 0.0,
        "max_drawdown": max((_drawdown(b.equity_e6) for b in blocks), default=0.0),
        "round_trips": int(trips.size),
        "open_trips": int(sum(b.open_trips for b in blocks)),
        "hours": hours,
        "steps": steps,
    }


@dataclass
class Interval:
    low: float | None
    high: float | None

    def as_list(self) -> list[float | None]:
        return [self.low, self.high]


def _percentiles(values: list[float]) -> Interval:
    if not values:
        return Interval(None, None)
    tail = (1 - CONFIDENCE) / 2 * 100
    low, high = np.percentile(np.asarray(values), [tail, 100 - tail])
    return Interval(float(low), float(high))


def _draws(n_blocks: int, resamples: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, n_blocks, size=(resamples, n_blocks))


@dataclass
class Summary:
    """Point estimates and 95 % intervals of every metric for one policy."""

    values: dict[str, float | int | None]
    intervals: dict[str, Interval] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        """``{"sharpe_per_hour": 1.2, "sharpe_per_hour_ci": [0.3, 2.0], ...}`` (JSON-ready)."""
        out: dict[str, object] = dict(self.values)
        for name, interval in self.intervals.items():
            out[f"{name}_ci"] = interval.as_list()
        return out


def summarize(
    blocks: Sequence[Block],
    *,
    initial_cash_e6: int,
    blocks_per_episode: float = 1.0,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> Summary:
    """Point estimates of every metric and their block-bootstrap 95 % intervals."""
    point = compute(blocks, initial_cash_e6=initial_cash_e6, blocks_per_episode=blocks_per_episode)
    samples: dict[str, list[float]] = {name: [] for name in METRICS}
    if len(blocks) > 1:
        for draw in _draws(len(blocks), resamples, seed):
            values = compute(
                [blocks[i] for i in draw],
                initial_cash_e6=initial_cash_e6,
                blocks_per_episode=blocks_per_episode,
            )
            for name in METRICS:
                if values[name] is not None:
                    samples[name].append(float(values[name]))
    return Summary(point, {name: _percentiles(samples[name]) for name in METRICS})


def paired_difference(
    agent: Sequence[Block],
    baseline: Sequence[Block],
    *,
    metric: str = "pnl_per_hour_dollars",
    initial_cash_e6: int,
    blocks_per_episode: float = 1.0,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> tuple[float | None, Interval]:
    """``metric(agent) - metric(baseline)`` and its 95 % interval, drawing the same blocks
    (same start ticks, same market path) for both."""
    if len(agent) != len(baseline):
        raise ValueError(f"{len(agent)} agent blocks vs {len(baseline)} baseline blocks")

    def diff(indices: Sequence[int]) -> float | None:
        a = compute(
            [agent[i] for i in indices],
            initial_cash_e6=initial_cash_e6,
            blocks_per_episode=blocks_per_episode,
        )[metric]
        b = compute(
            [baseline[i] for i in indices],
            initial_cash_e6=initial_cash_e6,
            blocks_per_episode=blocks_per_episode,
        )[metric]
        return None if a is None or b is None else float(a) - float(b)

    point = diff(range(len(agent)))
    samples = []
    if len(agent) > 1:
        for draw in _draws(len(agent), resamples, seed):
            value = diff(draw.tolist())
            if value is not None:
                samples.append(value)
    return point, _percentiles(samples)
