"""The planted world sampled for the simulation, and the oracle policy that knows it (numpy).

The process itself (:class:`PlantedConfig`, :class:`PlantedWorld`: lead-lag, or no edge) is
defined with the local exchange that serves it live, in
``apps.marketdata.exchange.planted_world``; see there for what is planted and why.
:func:`planted_history` samples it on a clock as books in arrays (fast tests, no exchange);
:class:`LeadLagOracle` is the policy that knows the process. The observation carries each
market's recent mid changes (``mid_change_1/5/30``), so the lead-lag edge is visible to a
policy.
"""

from __future__ import annotations

import numpy as np

from apps.marketdata.exchange.planted_world import PlantedConfig, PlantedWorld
from apps.simulation.actions import N_SIZES, ActionType, encode
from apps.simulation.history import DEFAULT_LEVELS, MarketQuality, RecordedHistory

NS = 1_000_000_000


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
