"""Deterministic evaluation of a policy on held-out time, plus two baselines (pure)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from apps.simulation import kernel, metrics
from apps.simulation.actions import N_SIZES, ActionType, encode
from apps.simulation.env import KalshiTradingEnv, positions_from_info

Policy = Callable[[np.ndarray, KalshiTradingEnv], np.ndarray]


@dataclass
class EpisodeResult:
    """One evaluation episode. Money in $0.0001 units (``_e4``); ratios elsewhere.

    ``sharpe`` is per square root of an hour of market time and ``win_rate`` the share of
    closed round trips that made money (see :mod:`apps.simulation.metrics`); ``trace`` keeps
    the per-step records the pooled metrics and their intervals are computed from.
    """

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
    trace: metrics.EpisodeTrace | None = field(default=None, repr=False)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("trace")
        return out


def run_episode(env: KalshiTradingEnv, policy: Policy, *, start_tick: int) -> EpisodeResult:
    """Run one episode from ``start_tick`` with ``policy`` (deterministic if the policy is)."""
    obs, info = env.reset(options={"start_tick": start_tick})
    initial = env.initial_cash_e6
    rewards: list[float] = []
    actions: list[list[int]] = []
    start_ns = info["time_ns"]
    times = [info["time_ns"]]
    equity_e6 = [info["equity_e6"]]
    notional: list[int] = []
    tables = [env.position_table()]
    done = False
    while not done:
        action = np.asarray(policy(obs, env), dtype=np.int64)
        actions.append(action.tolist())
        obs, reward, terminated, truncated, info = env.step(action)
        rewards.append(reward)
        times.append(info["time_ns"])
        equity_e6.append(info["equity_e6"])
        fills = info["fills"]
        traded = fills[:, kernel.F_REFUSAL] == kernel.TRADED
        notional.append(int(fills[traded, kernel.F_NOTIONAL].sum()))
        tables.append(env.position_table())
        done = terminated or truncated
    table = np.stack(tables)
    trace = metrics.EpisodeTrace(
        times_ns=np.asarray(times, dtype=np.int64),
        equity_e6=np.asarray(equity_e6, dtype=np.float64),
        notional_e6=np.asarray(notional, dtype=np.int64),
        held=(table[:, :, kernel.P_YES] != 0) | (table[:, :, kernel.P_NO] != 0),
        # Net of the rounding fees, so a round trip's P&L (realised − trade fees) counts them.
        realized_e6=table[:, :, kernel.P_REALIZED] - table[:, :, kernel.P_ROUNDING],
        fees_cum_e4=table[:, :, kernel.P_FEES],
    )
    point = metrics.compute(trace.blocks(), initial_cash_e6=initial)
    equity = [e / initial for e in equity_e6]
    return EpisodeResult(
        start_time_ns=start_ns,
        end_time_ns=info["time_ns"],
        steps=len(rewards),
        total_reward=float(sum(rewards)),
        total_return=float(equity[-1] - 1.0),
        sharpe=point["sharpe_per_hour"],
        max_drawdown=float(point["max_drawdown"] or 0.0),
        win_rate=point["win_rate"],
        fees_paid_e4=int(info["fees_paid_e4"]),
        final_positions=positions_from_info(env.markets, info),
        equity_curve=[round(e, 8) for e in equity],
        actions=actions,
        trace=trace,
    )


def evaluation_starts(env: KalshiTradingEnv, episodes: int) -> list[int]:
    """Evenly spaced start ticks across the evaluation window (the same for every policy)."""
    last = env.end_tick - env.config.episode_steps - 1
    return [int(x) for x in np.linspace(env.first_tick, last, num=episodes).round()]


def hold_policy(obs: np.ndarray, env: KalshiTradingEnv) -> np.ndarray:
    """Baseline 1: never trade."""
    return np.zeros(env.n_markets, dtype=np.int64)


class HoldFavourite:
    """Baseline: put the agent's capital budget on each market's favourite and hold it to
    settlement (or the end of the episode).

    The budget is what the agent may deploy: ``max_exposure_share`` of the initial cash,
    split evenly over the markets and capped by ``max_market_share`` and the position limit.
    On every step until a market's budget is spent it buys the largest allowed size of the
    side that was the favourite (mid above $0.50: YES, else NO) when it first had a price.
    """

    def __init__(self) -> None:
        self._sides: dict[int, ActionType] = {}
        self._done: set[int] = set()

    def __call__(self, obs: np.ndarray, env: KalshiTradingEnv) -> np.ndarray:
        if env.steps_taken == 0:
            self._sides.clear()
            self._done.clear()
        limits = env.config.limits
        cash = env.initial_cash_e6
        budget = min(
            cash * limits.max_exposure_share / env.n_markets, cash * limits.max_market_share
        )
        mask = env.action_masks().reshape(env.n_markets, -1)
        marks = env.marks_e4x2()
        table = env.position_table()
        exposure = table[:, kernel.P_YES_COST] + table[:, kernel.P_NO_COST]
        actions = np.zeros(env.n_markets, dtype=np.int64)
        for j, market in enumerate(env.markets):
            if j in self._done:
                continue
            if j not in self._sides:
                mid_x2 = marks[market]
                if mid_x2 is None:
                    continue
                self._sides[j] = ActionType.BUY_YES if mid_x2 >= 10_000 else ActionType.BUY_NO
            if exposure[j] >= budget:
                self._done.add(j)
                continue
            for size_index in reversed(range(N_SIZES)):
                action = encode(self._sides[j], size_index)
                if mask[j, action]:
                    actions[j] = action
                    break
            else:
                self._done.add(j)  # nothing more can be bought: the budget's limit is reached
        return actions


class Momentum:
    """Baseline: a taker momentum rule. When a market's mid has moved at least
    ``threshold_e4`` over the last ``lookback`` steps, buy ``size_index`` of the side it moved
    towards; flatten after ``hold`` steps. No position is added while one is held."""

    def __init__(
        self, lookback: int = 10, threshold_e4: int = 200, hold: int = 10, size_index: int = 1
    ) -> None:
        self.lookback, self.threshold_e4, self.hold, self.size_index = (
            lookback,
            threshold_e4,
            hold,
            size_index,
        )
        self._mids: list[list[int | None]] = []
        self._held_since: dict[int, int] = {}

    def __call__(self, obs: np.ndarray, env: KalshiTradingEnv) -> np.ndarray:
        if env.steps_taken == 0:
            self._mids.clear()
            self._held_since.clear()
        marks = env.marks_e4x2()
        self._mids.append([marks[m] for m in env.markets])
        mask = env.action_masks().reshape(env.n_markets, -1)
        actions = np.zeros(env.n_markets, dtype=np.int64)
        now = env.steps_taken
        for j in range(env.n_markets):
            if j in self._held_since:
                if now - self._held_since[j] >= self.hold:
                    flatten = encode(ActionType.FLATTEN, 0)
                    if mask[j, flatten]:
                        actions[j] = flatten
                    del self._held_since[j]
                continue
            if len(self._mids) <= self.lookback:
                continue
            then, current = self._mids[-1 - self.lookback][j], self._mids[-1][j]
            if then is None or current is None:
                continue
            move = (current - then) / 2  # marks are twice the mid
            if abs(move) < self.threshold_e4:
                continue
            side = ActionType.BUY_YES if move > 0 else ActionType.BUY_NO
            action = encode(side, self.size_index)
            if mask[j, action]:
                actions[j] = action
                self._held_since[j] = now
        return actions


def baseline_policies() -> dict[str, Policy]:
    """Fresh instances of the baselines shown beside every agent (they keep per-episode state)."""
    return {"no_trading": hold_policy, "hold_favourite": HoldFavourite(), "momentum": Momentum()}


# Fewer blocks than this make a bootstrap interval meaningless: long episodes are cut into
# blocks of at least MIN_BLOCK_STEPS steps until there are about this many.
TARGET_BLOCKS = 20
MIN_BLOCK_STEPS = 10


def _blocks(results: list[EpisodeResult], block_steps: int | None) -> list[metrics.Block]:
    if any(r.trace is None for r in results):
        raise ValueError("summarize() needs results from run_episode (they carry traces)")
    return trace_blocks([r.trace for r in results], block_steps)


def trace_blocks(
    traces: list[metrics.EpisodeTrace], block_steps: int | None = None
) -> list[metrics.Block]:
    """The bootstrap's blocks of ``traces``: each episode one block, or, with fewer than
    :data:`TARGET_BLOCKS` episodes, pieces of at least :data:`MIN_BLOCK_STEPS` steps."""
    if block_steps is None and 0 < len(traces) < TARGET_BLOCKS:
        total = sum(t.notional_e6.size for t in traces)
        block_steps = max(MIN_BLOCK_STEPS, -(-total // TARGET_BLOCKS))
    blocks: list[metrics.Block] = []
    for trace in traces:
        blocks += trace.blocks(block_steps)
    return blocks


def _initial_cash_e6(results: list[EpisodeResult]) -> int:
    # Equity at reset is the initial cash: an episode starts flat.
    return int(results[0].trace.equity_e6[0]) if results and results[0].trace else 1


def summarize(
    results: list[EpisodeResult], *, block_steps: int | None = None, seed: int = 0
) -> dict[str, Any]:
    """Pooled metrics of an evaluation with block-bootstrap 95 % intervals (``<name>_ci``).

    ``sharpe`` and ``win_rate`` are the pooled ``sharpe_per_hour`` and trade-level win rate;
    ``mean_return`` is the mean return per episode. See :mod:`apps.simulation.metrics`.
    """
    if not results:
        return {"episodes": 0}
    blocks = _blocks(results, block_steps)
    per_episode = len(blocks) / len(results)
    summary = metrics.summarize(
        blocks,
        initial_cash_e6=_initial_cash_e6(results),
        blocks_per_episode=per_episode,
        seed=seed,
    ).as_dict()
    return {
        "episodes": len(results),
        "mean_return": float(np.mean([r.total_return for r in results])),
        "mean_reward": float(np.mean([r.total_reward for r in results])),
        "sharpe": summary["sharpe_per_hour"],
        "win_rate": summary["win_rate"],
        # The worst whole episode (a block's drawdown only sees its own stretch); the
        # interval in max_drawdown_ci is over blocks.
        "max_drawdown": max(r.max_drawdown for r in results),
        "fees_paid_e4": sum(r.fees_paid_e4 for r in results),
        **{k: v for k, v in summary.items() if k != "max_drawdown"},
    }


def compare(
    agent: list[EpisodeResult],
    baseline: list[EpisodeResult],
    *,
    metric: str = "pnl_per_hour_dollars",
    block_steps: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """``metric`` of the agent minus the baseline's, run on the same start ticks, with its
    paired block-bootstrap 95 % interval: ``{"metric", "difference", "ci"}``."""
    a, b = _blocks(agent, block_steps), _blocks(baseline, block_steps)
    point, interval = metrics.paired_difference(
        a,
        b,
        metric=metric,
        initial_cash_e6=_initial_cash_e6(agent),
        blocks_per_episode=len(a) / max(len(agent), 1),
        seed=seed,
    )
    return {"metric": metric, "difference": point, "ci": interval.as_list()}


def _number(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def describe_metrics(m: dict[str, Any]) -> str:
    """One line of the held-out metrics (see apps/simulation/metrics.py for definitions)."""
    low, high = m.get("pnl_per_hour_dollars_ci") or [None, None]
    return (
        f"P&L {_number(m.get('pnl_per_hour_dollars'), '+,.2f')} $/h "
        f"[{_number(low, '+,.2f')}, {_number(high, '+,.2f')}]  "
        f"Sharpe/sqrt(h) {_number(m.get('sharpe_per_hour'), '+.2f')}  "
        f"win rate {_number(m.get('win_rate'), '.0%')} of {m.get('round_trips', 0)} trips  "
        f"max drawdown {m.get('max_drawdown', 0.0):.2%}  fees ${m.get('fees_dollars', 0.0):,.2f}"
    )
