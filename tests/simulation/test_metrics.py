"""Metrics that mean one thing: per-hour Sharpe, trade-level win rate, bootstrap intervals."""

from __future__ import annotations

import math

import numpy as np
import pytest

from apps.simulation import metrics
from apps.simulation.actions import ActionType, decode, encode
from apps.simulation.env import EnvConfig, KalshiTradingEnv
from apps.simulation.synthetic import synthetic_history
from apps.training.evaluation import compare, hold_policy, run_episode, summarize

CASH_E6 = 1_000 * 10**6


def _trace(held: list[list[int]], realized: list[list[int]], fees: list[list[int]]):
    steps = len(held) - 1
    return metrics.EpisodeTrace(
        times_ns=np.arange(steps + 1, dtype=np.int64) * 10**9,
        equity_e6=np.full(steps + 1, float(CASH_E6)),
        notional_e6=np.zeros(steps, dtype=np.int64),
        held=np.asarray(held, dtype=bool),
        realized_e6=np.asarray(realized, dtype=np.int64),
        fees_cum_e4=np.asarray(fees, dtype=np.int64),
    )


def test_round_trips_are_counted_from_flat_to_flat_after_fees() -> None:
    # Market 0: a trip from step 1 to 3 gaining 500 e6 of realised P&L for 2 e4 of fees
    # (+300 e6), then a trip from 4 to 5 gaining 100 e6 for 3 e4 (-200 e6). Market 1 opens at 2
    # and is still open at the end.
    held = [[0, 0], [1, 0], [1, 1], [0, 1], [1, 1], [0, 1]]
    realized = [[0, 0], [0, 0], [200, 0], [500, 0], [500, 0], [600, 0]]
    fees = [[0, 0], [1, 0], [1, 4], [2, 4], [4, 4], [5, 4]]
    closes, pnls, open_trips = metrics.round_trips(
        np.asarray(held, bool), np.asarray(realized), np.asarray(fees)
    )
    assert closes.tolist() == [3, 5]
    assert pnls.tolist() == [300.0, -200.0]
    assert open_trips == 1
    point = metrics.compute(_trace(held, realized, fees).blocks(), initial_cash_e6=CASH_E6)
    assert point["win_rate"] == 0.5
    assert point["round_trips"] == 2 and point["open_trips"] == 1
    assert point["time_in_market"] == 1.0


def test_a_trip_is_attributed_to_the_block_it_closes_in() -> None:
    held = [[0], [1], [1], [0], [1], [0]]
    realized = [[0], [0], [0], [10], [10], [0]]
    fees = [[0]] * 6
    blocks = _trace(held, realized, fees).blocks(2)
    assert [b.steps for b in blocks] == [2, 2, 1]
    assert [b.trip_pnls_e6.tolist() for b in blocks] == [[], [10.0], [-10.0]]


def _alternating(env: KalshiTradingEnv) -> np.ndarray:
    """Buy YES every 40 ticks, flatten 20 ticks later: a function of the clock only, so every
    episode length sees the same trades on the same path."""
    actions = np.zeros(env.n_markets, dtype=np.int64)
    if env.current_tick % 40 == 0:
        actions[:] = encode(ActionType.BUY_YES, 2)
    elif env.current_tick % 40 == 20:
        actions[:] = encode(ActionType.FLATTEN, 0)
    return actions


def test_sharpe_per_hour_does_not_change_with_episode_length() -> None:
    history = synthetic_history(markets=2, ticks=2_500, seed=11)
    total = 2_400
    per_hour, per_episode_old = {}, {}
    for length in (150, 300, 600, 1_200):
        env = KalshiTradingEnv(history, config=EnvConfig(episode_steps=length))
        starts = [env.first_tick + i * length for i in range(total // length)]
        results = [run_episode(env, lambda o, e: _alternating(e), start_tick=s) for s in starts]
        per_hour[length] = summarize(results)["sharpe_per_hour"]
        # The old definition: mean/std of per-step equity changes x sqrt(steps), per episode.
        olds = []
        for r in results:
            changes = np.diff(np.asarray(r.equity_curve))
            olds.append(changes.mean() / changes.std() * math.sqrt(changes.size))
        per_episode_old[length] = float(np.mean(olds))
    values = np.asarray(list(per_hour.values()))
    assert values.min() < 0 or values.max() > 0  # it measured something
    spread = values.max() - values.min()
    assert spread <= 0.05 * np.abs(values).max(), per_hour
    # The old figure moved with sqrt(length): a factor of about 2.8 from 150 to 1,200 steps.
    assert abs(per_episode_old[1_200]) > 2 * abs(per_episode_old[150]), per_episode_old


def test_intervals_bracket_the_estimate_are_seeded_and_paired_differences_cancel() -> None:
    history = synthetic_history(markets=2, ticks=1_300, seed=4)
    env = KalshiTradingEnv(history, config=EnvConfig(episode_steps=100))
    starts = [env.first_tick + i * 100 for i in range(12)]
    agent = [run_episode(env, lambda o, e: _alternating(e), start_tick=s) for s in starts]
    again = [run_episode(env, lambda o, e: _alternating(e), start_tick=s) for s in starts]
    hold = [run_episode(env, hold_policy, start_tick=s) for s in starts]
    summary = summarize(agent)
    assert summary == summarize(again)  # deterministic: same paths, same seed
    for name in ("pnl_dollars", "sharpe_per_hour", "turnover", "fees_dollars"):
        low, high = summary[f"{name}_ci"]
        assert low <= summary[name] <= high, name
    assert summary["fees_dollars"] > 0 and summary["turnover"] > 0
    assert summary["hours"] == pytest.approx(12 * 100 / 3600)
    held = summarize(hold)
    assert held["pnl_dollars"] == 0 and held["turnover"] == 0 and held["time_in_market"] == 0
    assert held["sharpe_per_hour"] is None  # no variance: no Sharpe, not a zero
    same = compare(agent, again)
    assert same["difference"] == 0 and same["ci"] == [0.0, 0.0]
    versus = compare(agent, hold)
    assert versus["difference"] == pytest.approx(summary["pnl_per_hour_dollars"])
    low, high = versus["ci"]
    assert low <= versus["difference"] <= high


def test_hold_favourite_spends_the_agents_budget_and_holds_to_settlement() -> None:
    from apps.simulation.env import MarketInfo
    from apps.training.evaluation import HoldFavourite

    history = synthetic_history(markets=2, ticks=400, seed=6)
    close_ns = int(history.times_ns[250])
    info = {m: MarketInfo(close_ns=close_ns, result="yes") for m in history.markets}
    config = EnvConfig(episode_steps=300, market_info=info)
    env = KalshiTradingEnv(history, config=config)
    policy = HoldFavourite()
    result = run_episode(env, policy, start_tick=env.first_tick)
    # The budget: half the cash per market (max_market_share), capped by the 100-contract
    # position limit; at these prices the position limit binds, which is the agent's limit too.
    assert result.trace is not None
    bought = result.trace.held[1:].any(axis=0)
    assert bought.all()
    # Settled at the close: both markets flat afterwards, the episode terminated there.
    assert result.steps < 300
    assert not result.trace.held[-1].any()
    summary = summarize([result])
    assert summary["round_trips"] == 2 and summary["open_trips"] == 0
    # The old baseline bought one contract (0.15% of cash); this one buys up to the agent's
    # limits: here the 100-contract position limit binds before the exposure budget.
    bought_e2 = np.zeros(env.n_markets, dtype=np.int64)
    for step in result.actions:
        for j, action in enumerate(step):
            if action:
                bought_e2[j] += decode(action)[1]
    assert (bought_e2 == env.config.limits.max_position_e2).all(), bought_e2


def test_momentum_buys_the_side_the_mid_moved_towards_and_flattens_after_its_hold() -> None:
    from apps.training.evaluation import Momentum

    history = synthetic_history(markets=3, ticks=700, seed=2)
    env = KalshiTradingEnv(history, config=EnvConfig(episode_steps=600))
    policy = Momentum(lookback=5, threshold_e4=100, hold=5)
    result = run_episode(env, policy, start_tick=env.first_tick)
    buys = sum(1 for step in result.actions for a in step if a)
    assert buys > 0
    summary = summarize([result])
    assert summary["round_trips"] > 0
    assert summary["time_in_market"] < 1.0
