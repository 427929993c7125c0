"""Markets with a planted, documented edge, and the oracle policy that knows it (pure numpy).

Nothing shows that a training pipeline can learn unless it is given something learnable with a
known answer. This module plants one:

**Lead-lag** (``edge="lead_lag"``). Two markets, a *leader* and a *follower*. The leader's fair
value jumps by ``jump_cents`` (up or down with equal odds, reflected inside
``[low_cents, high_cents]``) at exponentially spaced times (mean ``mean_gap_s``); the follower's
fair value is the leader's ``lag_s`` seconds earlier. Makers in both markets quote
``half_spread_cents`` around the fair value. So for ``lag_s`` after every jump the follower's
book is stale by one jump: buying the follower in the direction the leader moved, and
flattening once it has caught up, earns about ``jump - spread - 2 x taker fee`` per contract.
The observation carries each market's recent mid changes (``mid_change_1/5/30``), so the edge
is visible to a policy.

**No edge** (``edge="none"``). The same two markets, but the follower jumps on its own
independent schedule: nothing in the leader predicts it. A model trained here must not pass
the promotion gate (no false discoveries).

:class:`PlantedWorld` is the process (a deterministic function of time and the seed), used both
by :func:`planted_history` (books as arrays, for fast tests) and by the local exchange's
``PlantedSource`` (the real path: exchange -> recorder -> tables -> loader -> env).
:class:`LeadLagOracle` is the policy that knows the process.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from apps.simulation.actions import N_SIZES, ActionType, encode
from apps.simulation.history import DEFAULT_LEVELS, MarketQuality, RecordedHistory

NS = 1_000_000_000
EDGES = ("lead_lag", "none")
LEADER, FOLLOWER = 0, 1


@dataclass(frozen=True)
class PlantedConfig:
    """The planted process. Prices in whole cents (the markets use the ``linear_cent`` grid)."""

    edge: str = "lead_lag"
    seed: int = 0
    jump_cents: int = 8
    mean_gap_s: float = 12.0
    lag_s: float = 3.0
    start_cents: int = 50
    low_cents: int = 20
    high_cents: int = 80
    half_spread_cents: int = 1
    horizon_s: float = 6 * 3600.0
    series_ticker: str = "KXPLANT"
    event_suffix: str = "26DEC31"

    def __post_init__(self) -> None:
        if self.edge not in EDGES:
            raise ValueError(f"edge must be one of {EDGES}, got {self.edge!r}")
        if not 0 < self.low_cents < self.start_cents < self.high_cents < 100:
            raise ValueError("need 0 < low_cents < start_cents < high_cents < 100")
        if self.jump_cents <= 0 or self.mean_gap_s <= 0 or self.lag_s < 0:
            raise ValueError("jump_cents and mean_gap_s must be positive, lag_s >= 0")
        if self.half_spread_cents < 1:
            raise ValueError("half_spread_cents must be >= 1")

    @property
    def tickers(self) -> tuple[str, str]:
        event = f"{self.series_ticker}-{self.event_suffix}"
        return f"{event}-LEAD", f"{event}-FOLLOW"


def _jumps(rng: np.random.Generator, config: PlantedConfig) -> tuple[np.ndarray, np.ndarray]:
    """Jump times (s from the start) and the fair value after each, reflected into bounds."""
    count = int(config.horizon_s / config.mean_gap_s * 2) + 16
    times = np.cumsum(rng.exponential(config.mean_gap_s, size=count))
    times = times[times < config.horizon_s]
    signs = rng.choice([-1, 1], size=times.size)
    levels = np.empty(times.size, dtype=np.int64)
    level = config.start_cents
    for i, sign in enumerate(signs.tolist()):
        step = sign * config.jump_cents
        if not config.low_cents <= level + step <= config.high_cents:
            step = -step
        level += step
        levels[i] = level
    return times, levels


class PlantedWorld:
    """The fair value of each market as a function of time since the start (seconds)."""

    def __init__(self, config: PlantedConfig) -> None:
        self.config = config
        rng = np.random.default_rng(config.seed)
        self._leader = _jumps(rng, config)
        if config.edge == "lead_lag":
            times, levels = self._leader
            self._follower = (times + config.lag_s, levels)
        else:
            self._follower = _jumps(rng, config)

    @staticmethod
    def _at(schedule: tuple[np.ndarray, np.ndarray], t_s: np.ndarray, start: int) -> np.ndarray:
        times, levels = schedule
        index = np.searchsorted(times, t_s, side="right")
        with_start = np.concatenate([[start], levels])
        return with_start[index]

    def fair_cents(self, t_s: np.ndarray | float) -> np.ndarray:
        """``(len(t_s), 2)`` int64 fair YES values in cents (leader, follower) at ``t_s``."""
        t = np.atleast_1d(np.asarray(t_s, dtype=np.float64))
        start = self.config.start_cents
        return np.stack(
            [self._at(self._leader, t, start), self._at(self._follower, t, start)], axis=1
        )

    def jump_count(self, until_s: float) -> int:
        return int(np.searchsorted(self._leader[0], until_s, side="right"))


def planted_history(
    config: PlantedConfig,
    *,
    ticks: int = 3_600,
    step_s: float = 1.0,
    levels: int = DEFAULT_LEVELS,
    start_ns: int = 1_790_000_000 * NS,
) -> RecordedHistory:
    """The planted world sampled on a clock, as a :class:`RecordedHistory` (books quoted
    ``half_spread_cents`` around each fair value, 1-cent levels, 50-500 contracts each)."""
    rng = np.random.default_rng(config.seed + 1)
    world = PlantedWorld(config)
    t_s = np.arange(ticks) * step_s
    fair = world.fair_cents(t_s)  # (ticks, 2)
    offsets = np.arange(levels)
    yes_best = fair - config.half_spread_cents
    no_best = 100 - (fair + config.half_spread_cents)
    yes_px = ((yes_best[..., None] - offsets) * 100).astype(np.int32)
    no_px = ((no_best[..., None] - offsets) * 100).astype(np.int32)
    shape = yes_px.shape
    yes_sz = rng.integers(50, 501, size=shape).astype(np.int64) * 100
    no_sz = rng.integers(50, 501, size=shape).astype(np.int64) * 100
    for px, sz in ((yes_px, yes_sz), (no_px, no_sz)):
        sz[px <= 0] = 0
        px[px <= 0] = 0
    tickers = list(config.tickers)
    step_ns = int(step_s * NS)
    return RecordedHistory(
        markets=tickers,
        times_ns=start_ns + np.arange(ticks, dtype=np.int64) * step_ns,
        yes_px=yes_px,
        yes_sz=yes_sz,
        no_px=no_px,
        no_sz=no_sz,
        trusted=np.ones((ticks, 2), dtype=bool),
        updates=np.ones((ticks, 2), dtype=np.int32),
        quality={t: MarketQuality() for t in tickers},
        step_ns=step_ns,
    )


class LeadLagOracle:
    """The policy that knows the process: when the leader's mid is ``threshold`` away from the
    follower's, buy the follower towards the leader (the largest size allowed, until the
    position limit); flatten once the gap has closed. Markets are found by their role in
    ``config.tickers``; other markets are left alone."""

    def __init__(self, config: PlantedConfig, *, threshold_cents: float | None = None) -> None:
        self.config = config
        self.threshold_e4 = int(
            (threshold_cents if threshold_cents is not None else config.jump_cents / 2) * 100
        )

    def __call__(self, obs: np.ndarray, env) -> np.ndarray:
        actions = np.zeros(env.n_markets, dtype=np.int64)
        leader_ticker, follower_ticker = self.config.tickers
        if leader_ticker not in env.markets or follower_ticker not in env.markets:
            return actions
        j = env.markets.index(follower_ticker)
        marks = env.marks_e4x2()
        lead, follow = marks[leader_ticker], marks[follower_ticker]
        if lead is None or follow is None:
            return actions
        gap = (lead - follow) / 2
        mask = env.action_masks().reshape(env.n_markets, -1)
        position = env.portfolio.position(follower_ticker)
        holding = position.yes_e2 or position.no_e2
        if abs(gap) >= self.threshold_e4:
            side = ActionType.BUY_YES if gap > 0 else ActionType.BUY_NO
            wrong = position.no_e2 if side == ActionType.BUY_YES else position.yes_e2
            if wrong:
                flatten = encode(ActionType.FLATTEN, 0)
                if mask[j, flatten]:
                    actions[j] = flatten
                return actions
            for size_index in reversed(range(N_SIZES)):
                action = encode(side, size_index)
                if mask[j, action]:
                    actions[j] = action
                    break
        elif holding and abs(gap) < self.threshold_e4 / 2:
            flatten = encode(ActionType.FLATTEN, 0)
            if mask[j, flatten]:
                actions[j] = flatten
        return actions
