"""The paper-trading actor: one decision = sample -> observation -> policy -> simulated fills.

Pure (no Django, no I/O): :mod:`apps.trading.session` feeds it live books and writes what it
returns. Every step reuses the env's own code, in the env's order, so that a paper session
replayed through :class:`~apps.simulation.env.KalshiTradingEnv` gives the same observations,
actions and fills (``tests/trading/test_parity.py``):

1. the books are sampled into the env's array layout (:class:`~apps.trading.sampling.BookSample`)
   and their history features computed exactly as the env computes them;
2. equity is marked to the sampled mids and recorded (drawdown), as ``env.step`` does after
   moving to a tick; the kill switch is checked;
3. :func:`~apps.simulation.features.build_observation_batch` builds the observation (time to
   close, positions, cash, fees, drawdown, and progress = decisions / the model's training
   episode length, held at 1 after it: a paper session is open-ended, the model only ever saw
   progress up to 1);
4. masks come from :func:`apps.simulation.kernel.action_masks`, the env's compiled twin of
   :func:`~apps.simulation.actions.action_mask` (MaskablePPO receives them; every model's
   are logged), the policy predicts deterministically;
5. each market's action is carried out by :func:`~apps.simulation.actions.execute` against
   the sampled book (an :class:`~apps.simulation.fills.ArrayBook` of it, the env's view) with
   the env's sizes, fees and risk limits, market by market in slot order.

Money follows :mod:`apps.simulation.portfolio` (cash in $0.000001). A decision's ``reward``
per market is the change of that market's value marked to mid since the previous decision
plus the cash its fills moved, over the starting cash: the rewards of all markets sum to the
change of the portfolio's marked equity, so their total over a session is its return. (The
env books the same money one step later, when it marks the next tick; totals agree.)

Markets are treated as open: the trainer gives the env no close times or results
(``EnvConfig.market_info`` is empty), so the actor shows the model an unknown close exactly
as the env did in training.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from fractions import Fraction
from typing import Any, NamedTuple, Protocol

import numpy as np

from apps.marketdata.kalshi.units import utc_from_ns
from apps.simulation import kernel
from apps.simulation.actions import (
    ACTIONS_PER_MARKET,
    N_SIZES,
    decode,
    execute,
    sizes_e2_from_contracts,
)
from apps.simulation.env import NS, EnvConfig
from apps.simulation.features import (
    N_MARKETS,
    MarketBatch,
    PortfolioState,
    build_observation_batch,
)
from apps.simulation.fills import ArrayBook
from apps.simulation.portfolio import Portfolio
from apps.trading.risk import KILL_SWITCH, KillSwitch
from apps.trading.sampling import BookSample, LiveHistory

_MASK_WEIGHTS = np.left_shift(np.int64(1), np.arange(ACTIONS_PER_MARKET, dtype=np.int64))
_UNKNOWN_CLOSE_NS = np.iinfo(np.int64).max  # the env's close time for a market without one


class Policy(Protocol):
    """What the actor needs from a model: SB3's ``predict``."""

    def predict(
        self, observation: np.ndarray, *args: Any, **kwargs: Any
    ) -> tuple[np.ndarray, Any]: ...


@dataclass(frozen=True)
class PolicyVersion:
    """A loaded policy and where it came from in the registry.

    Attributes:
        policy: the SB3 model (anything with ``predict``).
        version: the registry version (logged with every decision).
        algorithm: ``PPO``, ``A2C`` or ``MaskablePPO`` (the last one receives masks).
        pk: the ``rl_models`` row id (None outside the registry, e.g. benchmarks).
        sha256: the artifact's verified sha256.
    """

    policy: Policy
    version: int
    algorithm: str
    pk: int | None = None
    sha256: str = ""

    @property
    def masked(self) -> bool:
        return self.algorithm == "MaskablePPO"


class ActionRow(NamedTuple):
    """One ``rl_trading_actions`` row without its episode (the writer adds it).

    Units as in :class:`apps.trading.models.TradingAction`.
    """

    step: int
    time: datetime
    market_ticker: str
    action_id: int
    action_type: str
    action_size: int
    mask_bits: int
    price_e4: int | None
    quantity_filled_e2: int
    fee_e4: int
    position_after_e2: int
    cash_after_e4: int
    reward: float
    model_version: int
    refusal: str


@dataclass
class DecisionOutcome:
    """Everything one decision produced (arrays are fresh; safe to keep).

    Attributes:
        step: 0-based decision number.
        sample: the books as decided on.
        observation: (N_FEATURES,) float32 shown to the policy.
        masks: (M, 30) bool, what :func:`execute` would carry out.
        actions: (M,) int64 what the policy chose (before the kill switch).
        rows: one :class:`ActionRow` per market, slot order.
        forward_ns: the policy's ``predict`` time in ns.
        halted: the kill switch held this decision.
        equity_e6: equity after the fills, marked to the sampled mids, in $0.000001.
    """

    step: int
    sample: BookSample
    observation: np.ndarray
    masks: np.ndarray
    actions: np.ndarray
    rows: list[ActionRow]
    forward_ns: int
    halted: bool
    equity_e6: Fraction


@dataclass
class SessionStats:
    """Running summary of a session (for the episode row and status)."""

    decisions: int = 0
    trades: int = 0
    total_reward: float = 0.0
    step_returns: int = 0
    sum_returns: float = 0.0
    sum_sq_returns: float = 0.0
    moving_steps: int = 0
    winning_steps: int = 0
    equity_curve: list[float] = field(default_factory=list)
    curve_every: int = 1


class PaperActor:
    """Decides for M markets with one policy; see the module docstring.

    Args:
        markets: the model's markets in its slot order (1 to 10).
        policy: the policy to start with.
        config: the env settings the model was trained with (cash, sizes, fees, limits).
        episode_steps: the model's training episode length (the progress feature's scale).
        kill_switch: the operator's risk limits.
        max_curve_points: equity points kept for the episode row (older ones thinned).
    """

    def __init__(
        self,
        *,
        markets: Sequence[str],
        policy: PolicyVersion,
        config: EnvConfig,
        episode_steps: int,
        kill_switch: KillSwitch,
        max_curve_points: int = 2_000,
    ) -> None:
        if not 1 <= len(markets) <= N_MARKETS:
            raise ValueError(f"the actor trades 1 to {N_MARKETS} markets, got {len(markets)}")
        if episode_steps < 1:
            raise ValueError(f"episode_steps must be positive, got {episode_steps}")
        self.markets = list(markets)
        self.n_markets = len(self.markets)
        self.policy = policy
        self.config = config
        self.episode_steps = episode_steps
        self.kill_switch = kill_switch
        self.sizes_e2 = sizes_e2_from_contracts(config.sizes_contracts)
        self.fees = [config.fees_by_market.get(m, config.fees) for m in self.markets]
        self.initial_cash_e6 = round(config.initial_cash_dollars * 1_000_000)
        self.portfolio = Portfolio(cash_e6=self.initial_cash_e6, limits=config.limits)
        # The training env accepted these settings; the masks come from its kernel.
        self._rules = kernel.trading_rules(
            fees=self.fees,
            limits=config.limits,
            sizes_e2=self.sizes_e2,
            initial_cash_e6=self.initial_cash_e6,
            episode_steps=episode_steps,
        )
        self.history = LiveHistory(self.n_markets)
        self.stats = SessionStats()
        self.steps = 0
        self._max_curve_points = max_curve_points
        self._close_ns = np.full(self.n_markets, _UNKNOWN_CLOSE_NS, dtype=np.int64)
        self._batch = MarketBatch.empty()
        self._batch.present[: self.n_markets] = True
        self._batch.is_open[: self.n_markets] = True
        self._values_x2 = [0] * self.n_markets  # each market's value after the last decision
        self._equity_after_e6: Fraction = Fraction(self.initial_cash_e6)
        self.stats.equity_curve.append(1.0)

    # -- control ----------------------------------------------------------------------------

    def swap_policy(self, policy: PolicyVersion) -> None:
        """Use ``policy`` from the next decision on (call between decisions only)."""
        self.policy = policy

    # -- reading ----------------------------------------------------------------------------

    @property
    def equity_e6(self) -> Fraction:
        """Equity after the last decision, marked to its sampled mids, in $0.000001."""
        return self._equity_after_e6

    @property
    def pnl_dollars(self) -> float:
        return float(self._equity_after_e6 - self.initial_cash_e6) / 1e6

    def positions_contracts(self) -> dict[str, float]:
        """Net contracts per market with a position (+ YES, − NO)."""
        return {m: p.net_e2 / 100 for m, p in self.portfolio if p.net_e2}

    # -- deciding ---------------------------------------------------------------------------

    def decide(self, sample: BookSample) -> DecisionOutcome:
        """Take one decision on ``sample`` (the books now); see the module docstring."""
        m = self.n_markets
        step = self.steps
        portfolio = self.portfolio
        history = self.history.push(sample)
        marks = self._marks(sample)
        # The env's integer path (equity_e6x2 / record_equity_x2), so drawdown is its number.
        equity_x2 = portfolio.equity_e6x2(marks)
        portfolio.record_equity_x2(equity_x2)
        halted = self.kill_switch.check(
            portfolio=portfolio, equity_e6=Fraction(equity_x2, 2), time_ns=sample.time_ns
        )

        batch = self._batch
        batch.px[:m] = sample.px
        batch.sz[:m] = sample.sz
        batch.history[:m] = history
        batch.trusted[:m] = sample.trusted
        batch.seconds_to_close[:m] = (self._close_ns - np.int64(sample.time_ns)) / NS
        for j, market in enumerate(self.markets):
            batch.set_position(j, portfolio.position(market))
        state = PortfolioState.from_portfolio(
            portfolio, progress=min(step / self.episode_steps, 1.0)
        )
        observation = build_observation_batch(batch, state)

        books = [
            ArrayBook(
                sample.px[j, 0], sample.sz[j, 0], sample.px[j, 1], sample.sz[j, 1], validate=False
            )
            for j in range(m)
        ]
        # The env's compiled masks (kernel.action_masks, tested equal to actions.action_mask)
        # on this account and these books: a tick axis of one.
        pos, acct = kernel.account_arrays(portfolio, self.markets)
        masks = np.empty((m, ACTIONS_PER_MARKET), dtype=bool)
        kernel.action_masks(
            sample.px[None],
            sample.sz[None],
            sample.trusted[None],
            pos,
            acct,
            *self._rules,
            0,
            masks.reshape(-1),
        )
        policy = self.policy
        started = time.perf_counter_ns()
        if policy.masked:
            action, _ = policy.policy.predict(
                observation, deterministic=True, action_masks=masks.reshape(-1)
            )
        else:
            action, _ = policy.policy.predict(observation, deterministic=True)
        forward_ns = time.perf_counter_ns() - started
        actions = np.asarray(action, dtype=np.int64).reshape(-1)
        if actions.shape != (m,):
            raise ValueError(
                f"v{policy.version} answered actions of shape {actions.shape}, expected ({m},)"
            )

        when = utc_from_ns(sample.time_ns)
        rows = []
        cash_moves = [0] * m
        fills = []
        for j, market in enumerate(self.markets):
            action_id = int(actions[j])
            if not 0 <= action_id < ACTIONS_PER_MARKET:
                raise ValueError(f"v{policy.version} chose action {action_id} for {market}")
            refusal = ""
            decision = None
            if action_id >= N_SIZES:  # ids 0..4 are HOLD: nothing to evaluate (as the env)
                if halted:
                    refusal = KILL_SWITCH
                else:
                    cash_before = portfolio.cash_e6
                    decision = execute(
                        action_id,
                        book=books[j],
                        portfolio=portfolio,
                        market=market,
                        trusted=bool(sample.trusted[j]),
                        is_open=True,
                        sizes_e2=self.sizes_e2,
                        fees=self.fees[j],
                    )
                    cash_moves[j] = portfolio.cash_e6 - cash_before
                    if not decision.trades:
                        refusal = str(decision.refusal)
            fills.append((action_id, decision, refusal))

        equity_after = Fraction(portfolio.equity_e6x2(marks), 2)
        self.kill_switch.check(portfolio=portfolio, equity_e6=equity_after, time_ns=sample.time_ns)
        initial_x2 = 2 * self.initial_cash_e6
        for j, market in enumerate(self.markets):
            action_id, decision, refusal = fills[j]
            position = portfolio.position(market)
            value_x2 = position.value_e6x2(marks[market])
            reward = (value_x2 - self._values_x2[j] + 2 * cash_moves[j]) / initial_x2
            self._values_x2[j] = value_x2
            action_type, size_e2 = decode(action_id, self.sizes_e2)
            fill = decision.fill if decision is not None and decision.trades else None
            filled = fill is not None and fill.filled_e2 > 0
            if filled:
                self.stats.trades += 1
            rows.append(
                ActionRow(
                    step=step,
                    time=when,
                    market_ticker=market,
                    action_id=action_id,
                    action_type=action_type.name,
                    action_size=size_e2 // 100,
                    mask_bits=int(masks[j].astype(np.int64) @ _MASK_WEIGHTS),
                    price_e4=round(fill.avg_price_e4) if filled else None,
                    quantity_filled_e2=fill.filled_e2 if fill is not None else 0,
                    fee_e4=fill.fee_e4 if fill is not None else 0,
                    position_after_e2=position.net_e2,
                    cash_after_e4=portfolio.cash_e6 // 100,
                    reward=reward,
                    model_version=policy.version,
                    refusal=refusal,
                )
            )
        self._record(equity_after)
        self.steps += 1
        return DecisionOutcome(
            step=step,
            sample=sample,
            observation=observation,
            masks=masks,
            actions=actions,
            rows=rows,
            forward_ns=forward_ns,
            halted=halted,
            equity_e6=equity_after,
        )

    # -- internals --------------------------------------------------------------------------

    def _marks(self, sample: BookSample) -> dict[str, int | None]:
        """Twice the YES mid in $0.0001 per market, None unless trusted and two-sided (the
        env's marks)."""
        px, sz = sample.px, sample.sz
        marks: dict[str, int | None] = {}
        for j, market in enumerate(self.markets):
            two = sz[j, 0, 0] > 0 and sz[j, 1, 0] > 0 and sample.trusted[j]
            marks[market] = int(px[j, 0, 0] + 10_000 - px[j, 1, 0]) if two else None
        return marks

    def _record(self, equity_after: Fraction) -> None:
        stats = self.stats
        initial = self.initial_cash_e6
        step_return = float((equity_after - self._equity_after_e6) / initial)
        self._equity_after_e6 = equity_after
        stats.decisions += 1
        stats.total_reward += step_return
        stats.step_returns += 1
        stats.sum_returns += step_return
        stats.sum_sq_returns += step_return * step_return
        if step_return != 0:
            stats.moving_steps += 1
            stats.winning_steps += step_return > 0
        if stats.decisions % stats.curve_every == 0:
            stats.equity_curve.append(round(float(equity_after / initial), 8))
            if len(stats.equity_curve) > self._max_curve_points:
                # Keep every other point and sample half as often from now on.
                stats.equity_curve = stats.equity_curve[::2]
                stats.curve_every *= 2

    def summary(self) -> dict[str, Any]:
        """Episode metrics in the registry's units (see ``TradingEpisode``)."""
        stats = self.stats
        n = stats.step_returns
        sharpe = None
        if n > 1:
            mean = stats.sum_returns / n
            var = max(stats.sum_sq_returns / n - mean * mean, 0.0)
            if var > 0:
                sharpe = mean / var**0.5 * n**0.5
        return {
            "steps": stats.decisions,
            "total_reward": stats.total_reward,
            "total_return": float(self._equity_after_e6 / self.initial_cash_e6) - 1.0,
            "sharpe": sharpe,
            "max_drawdown": self.portfolio.max_drawdown,
            "win_rate": stats.winning_steps / stats.moving_steps if stats.moving_steps else None,
            "fees_paid_e4": self.portfolio.fees_paid_e4,
            "final_positions": {
                m: {"yes_e2": p.yes_e2, "no_e2": p.no_e2}
                for m, p in self.portfolio
                if p.yes_e2 or p.no_e2
            },
            "equity_curve": list(stats.equity_curve),
        }
