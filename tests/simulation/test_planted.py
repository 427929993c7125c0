"""The planted lead-lag world: the follower lags the leader, the oracle earns, no edge = no gain."""

from __future__ import annotations

import numpy as np
import pytest

from apps.marketdata.exchange.planted_world import PlantedConfig, PlantedWorld
from apps.simulation.env import EnvConfig, KalshiTradingEnv
from apps.simulation.planted import LeadLagOracle, planted_history
from apps.training.evaluation import compare, hold_policy, run_episode, summarize


def test_the_follower_is_the_leader_lag_seconds_earlier_and_stays_in_bounds() -> None:
    config = PlantedConfig(seed=3, lag_s=4.0)
    world = PlantedWorld(config)
    t = np.arange(0, 3_600, 0.5)
    fair = world.fair_cents(t)
    lagged = world.fair_cents(np.clip(t - 4.0, -1, None))
    assert (fair[:, 1] == lagged[:, 0]).all()
    assert fair.min() >= config.low_cents and fair.max() <= config.high_cents
    assert world.jump_count(3_600) > 100  # ~ one jump per mean_gap_s
    assert (PlantedWorld(config).fair_cents(t) == fair).all()  # a function of the seed
    independent = PlantedWorld(PlantedConfig(seed=3, edge="none")).fair_cents(t)
    assert (independent[:, 0] == fair[:, 0]).all()
    assert (independent[:, 1] != lagged[:, 0]).mean() > 0.5


def _evaluate(edge: str, seed: int):
    config = PlantedConfig(edge=edge, seed=seed)
    history = planted_history(config, ticks=2_500, step_s=1.0)
    env = KalshiTradingEnv(history, config=EnvConfig(episode_steps=200))
    starts = [env.first_tick + i * 200 for i in range(12)]
    oracle = [run_episode(env, LeadLagOracle(config), start_tick=s) for s in starts]
    hold = [run_episode(env, hold_policy, start_tick=s) for s in starts]
    return summarize(oracle), compare(oracle, hold)


@pytest.mark.parametrize("seed", [1, 2])
def test_the_oracle_beats_no_trading_after_fees_where_the_edge_is_planted(seed: int) -> None:
    summary, versus = _evaluate("lead_lag", seed)
    assert versus["ci"][0] > 0, versus
    assert summary["fees_dollars"] > 0 and summary["round_trips"] > 20
    assert summary["win_rate"] > 0.7


def test_the_same_rule_earns_nothing_where_no_edge_is_planted() -> None:
    summary, versus = _evaluate("none", 1)
    assert versus["ci"][0] <= 0, versus
    assert summary["pnl_dollars"] < 0  # it pays spreads and fees for nothing
