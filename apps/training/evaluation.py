"""Deterministic evaluation of a policy on held-out time, plus two baselines (pure)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from apps.simulation.actions import ActionType, encode
from apps.simulation.env import KalshiTradingEnv, positions_from_info

Policy = Callable[[np.ndarray, KalshiTradingEnv], np.ndarray]


@dataclass
class EpisodeResult:
    """One evaluation episode. Money in $0.0001 units (``_e4``); ratios elsewhere."""

    start_time_ns: int
    end_time_ns: int
    steps: int
    total_reward: float
    total_return: float
    sharpe: float | None
    max_drawdown: float
    win_rate: float | None
    fees_paid_e4: int
    final_positions: dict[str, Any]
    equity_curve: list[float]
    actions: list[list[int]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_episode(env: KalshiTradingEnv, policy: Policy, *, start_tick: int) -> EpisodeResult:
    """Run one episode from ``start_tick`` with ``policy`` (deterministic if the policy is)."""
    obs, info = env.reset(options={"start_tick": start_tick})
    initial = env.initial_cash_e6
    equity = [1.0]
    rewards: list[float] = []
    actions: list[list[int]] = []
    start_ns = info["time_ns"]
    done = False
    while not done:
        action = np.asarray(policy(obs, env), dtype=np.int64)
        actions.append(action.tolist())
        obs, reward, terminated, truncated, info = env.step(action)
        rewards.append(reward)
        equity.append(info["equity_e6"] / initial)
        done = terminated or truncated
    returns = np.diff(np.asarray(equity))
    std = float(returns.std())
    sharpe = float(returns.mean() / std * math.sqrt(len(returns))) if std > 0 else None
    peak = np.maximum.accumulate(np.asarray(equity))
    drawdown = float(((peak - equity) / peak).max())
    moving = returns[returns != 0]
    win_rate = float((moving > 0).mean()) if moving.size else None
    return EpisodeResult(
        start_time_ns=start_ns,
        end_time_ns=info["time_ns"],
        steps=len(rewards),
        total_reward=float(sum(rewards)),
        total_return=float(equity[-1] - 1.0),
        sharpe=sharpe,
        max_drawdown=drawdown,
        win_rate=win_rate,
        fees_paid_e4=int(info["fees_paid_e4"]),
        final_positions=positions_from_info(env.markets, info),
        equity_curve=[round(e, 8) for e in equity],
        actions=actions,
    )


def evaluation_starts(env: KalshiTradingEnv, episodes: int) -> list[int]:
    """Evenly spaced start ticks across the evaluation window (the same for every policy)."""
    last = env.end_tick - env.config.episode_steps - 1
    return [int(x) for x in np.linspace(env.first_tick, last, num=episodes).round()]


def hold_policy(obs: np.ndarray, env: KalshiTradingEnv) -> np.ndarray:
    """Baseline 1: never trade."""
    return np.zeros(env.n_markets, dtype=np.int64)


def favourite_policy(obs: np.ndarray, env: KalshiTradingEnv) -> np.ndarray:
    """Baseline 2: on the first step buy the smallest size of each market's favourite side
    (YES when its mid is above $0.50, else NO) and hold it to the end."""
    if env.portfolio.exposure_e6() > 0 or env.steps_taken > 0:
        return np.zeros(env.n_markets, dtype=np.int64)
    mask = env.action_masks().reshape(env.n_markets, -1)
    actions = np.zeros(env.n_markets, dtype=np.int64)
    marks = env.marks_e4x2()
    for j, market in enumerate(env.markets):
        mid_x2 = marks[market]
        if mid_x2 is None:
            continue
        side = ActionType.BUY_YES if mid_x2 >= 10_000 else ActionType.BUY_NO
        action = encode(side, 0)
        if mask[j, action]:
            actions[j] = action
    return actions


def summarize(results: list[EpisodeResult]) -> dict[str, Any]:
    def mean(values: list[float | None]) -> float | None:
        known = [v for v in values if v is not None]
        return float(np.mean(known)) if known else None

    return {
        "episodes": len(results),
        "mean_return": mean([r.total_return for r in results]),
        "mean_reward": mean([r.total_reward for r in results]),
        "sharpe": mean([r.sharpe for r in results]),
        "max_drawdown": max((r.max_drawdown for r in results), default=0.0),
        "win_rate": mean([r.win_rate for r in results]),
        "fees_paid_e4": sum(r.fees_paid_e4 for r in results),
    }
