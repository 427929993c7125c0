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
4. masks come from :func:`apps.simulation.kernel.action_masks` (MaskablePPO receives them;
   every model's are logged), the policy predicts deterministically;
5. the actions are carried out by :func:`apps.simulation.kernel.execute_all` against the
   sampled books (a tick axis of one) with the env's sizes, fees and risk limits, market by
   market in slot order: the env's own compiled rules, on the actor's own account arrays.

The account is the kernel's ``pos`` / ``acct`` arrays (cash in $0.000001), read through a
:class:`~apps.simulation.portfolio.Portfolio` view; the hot path reads the arrays directly and
keeps equity as an exact integer (twice its value), so a decision makes no Fraction. A
decision's ``reward``
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
    ActionType,
    sizes_e2_from_contracts,
)
from apps.simulation.env import NS, EnvConfig
from apps.simulation.features import (
    N_MARKETS,
    MarketBatch,
    PortfolioState,
    build_observation_batch,
)
from apps.simulation.layout import (
    A_CASH,
    A_EXPOSURE,
    A_FEES,
    F_CASH,
    F_FEE,
    F_FILLED,
    F_NOTIONAL,
    F_REFUSAL,
    FILL_COLUMNS,
    P_NO,
    P_NO_COST,
    P_YES,
    P_YES_COST,
    REFUSALS,
    TRADED,
)
from apps.simulation.portfolio import EquityPeak, Portfolio, new_account
from apps.trading.risk import KILL_SWITCH, KillSwitch
from apps.trading.sampling import BookSample, LiveHistory


def _round_half_even(numerator: int, denominator: int) -> int:
    """``round(Fraction(numerator, denominator))`` for a positive denominator, in integers."""
    quotient, remainder = divmod(numerator, denominator)
    twice = 2 * remainder
    if twice > denominator or (twice == denominator and quotient % 2):
        return quotient + 1
    return quotient


def _decoded_size(action_id: int, sizes_e2: tuple[int, ...]) -> int:
    """The size of an action in 0.01 contract (0 for HOLD and FLATTEN), as ``decode``."""
    kind = action_id // N_SIZES
    if kind == ActionType.HOLD or kind == ActionType.FLATTEN:
        return 0
    return sizes_e2[action_id % N_SIZES]


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
        masks: (M, 30) bool, what ``kernel.execute_all`` would carry out.
        actions: (M,) int64 what the policy chose (before the kill switch).
        rows: one :class:`ActionRow` per market, slot order.
        forward_ns: the policy's ``predict`` time in ns.
        halted: the kill switch held this decision.
        equity_e6x2: twice the equity after the fills, marked to the sampled mids, in
            $0.000001 (exact).
    """

    step: int
    sample: BookSample
    observation: np.ndarray
    masks: np.ndarray
    actions: np.ndarray
    rows: list[ActionRow]
    forward_ns: int
    halted: bool
    equity_e6x2: int


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
        self.fees = kernel.FeeIndex([config.fee_timeline(m) for m in self.markets])
        self.initial_cash_e6 = round(config.initial_cash_dollars * 1_000_000)
        # The account: the kernel's arrays, as in the env.
        self._pos, self._acct = new_account(self.n_markets, self.initial_cash_e6)
        self._peak = EquityPeak(self.initial_cash_e6)
        self.portfolio = Portfolio(
            markets=self.markets,
            pos=self._pos,
            acct=self._acct,
            initial_cash_e6=self.initial_cash_e6,
            limits=config.limits,
            peak=self._peak,
        )
        # The training env accepted these settings; the same rules run here.
        self._rules = kernel.trading_rules(
            fees=self.fees,
            times_ns=np.zeros(1, dtype=np.int64),  # one tick: decide() writes the fees now
            limits=config.limits,
            sizes_e2=self.sizes_e2,
            initial_cash_e6=self.initial_cash_e6,
            episode_steps=episode_steps,
            precision_e4=config.account_precision_e4,
        )
        self.history = LiveHistory(self.n_markets)
        self.stats = SessionStats()
        self.steps = 0
        self._max_curve_points = max_curve_points
        self._close_ns = np.full(self.n_markets, _UNKNOWN_CLOSE_NS, dtype=np.int64)
        self._batch = MarketBatch.empty()
        self._batch.present[: self.n_markets] = True
        self._batch.is_open[: self.n_markets] = True
        # Each market's value (×2) after the last decision, for the per-market rewards.
        self._values_x2 = np.zeros(self.n_markets, dtype=np.int64)
        self._values_after_x2 = np.zeros(self.n_markets, dtype=np.int64)
        self._mask_bits = np.zeros(self.n_markets, dtype=np.int64)
        self._equity_after_x2 = 2 * self.initial_cash_e6
        self._fills = np.zeros((self.n_markets, FILL_COLUMNS), dtype=np.int64)
        self._holds = np.zeros(self.n_markets, dtype=np.int64)
        self._marks = np.zeros((1, self.n_markets), dtype=np.int64)
        self._masks = np.zeros(self.n_markets * ACTIONS_PER_MARKET, dtype=bool)
        self._action_names = [t.name for t in ActionType]
        self.stats.equity_curve.append(1.0)

    # -- control ----------------------------------------------------------------------------

    def swap_policy(self, policy: PolicyVersion) -> None:
        """Use ``policy`` from the next decision on (call between decisions only)."""
        self.policy = policy

    # -- reading ----------------------------------------------------------------------------

    @property
    def equity_e6(self) -> Fraction:
        """Equity after the last decision, marked to its sampled mids, in $0.000001."""
        return Fraction(self._equity_after_x2, 2)

    @property
    def pnl_dollars(self) -> float:
        return (self._equity_after_x2 - 2 * self.initial_cash_e6) / 2e6

    def positions_contracts(self) -> dict[str, float]:
        """Net contracts per market with a position (+ YES, − NO)."""
        net = (self._pos[:, P_YES] - self._pos[:, P_NO]).tolist()
        return {m: n / 100 for m, n in zip(self.markets, net, strict=True) if n}

    # -- deciding ---------------------------------------------------------------------------

    def decide(self, sample: BookSample) -> DecisionOutcome:
        """Take one decision on ``sample`` (the books now); see the module docstring."""
        m = self.n_markets
        step = self.steps
        pos, acct, peak = self._pos, self._acct, self._peak
        history = self.history.push(sample)
        # The books as a tick axis of one, the env's layout for the kernels.
        px, sz, trusted = sample.px[None], sample.sz[None], sample.trusted[None]
        marks = self._marks
        kernel.tick_marks(sample.px, sample.sz, sample.trusted, marks[0])
        # The env's order: mark and record equity at the new tick, then decide.
        equity_x2 = kernel.equity_x2(marks, 0, pos, acct)
        peak.record(equity_x2)
        halted = self.kill_switch.check(
            portfolio=self.portfolio, equity_e6x2=equity_x2, time_ns=sample.time_ns
        )

        batch = self._batch
        batch.px[:m] = sample.px
        batch.sz[:m] = sample.sz
        batch.history[:m] = history
        batch.trusted[:m] = sample.trusted
        batch.seconds_to_close[:m] = (self._close_ns - np.int64(sample.time_ns)) / NS
        batch.yes_held_e2[:m] = pos[:, P_YES]
        batch.no_held_e2[:m] = pos[:, P_NO]
        batch.cost_e6[:m] = pos[:, P_YES_COST] + pos[:, P_NO_COST]
        cash, exposure, fees_paid = int(acct[A_CASH]), int(acct[A_EXPOSURE]), int(acct[A_FEES])
        state = PortfolioState(
            cash_e6=cash,
            initial_cash_e6=self.initial_cash_e6,
            exposure_e6=exposure,
            fees_paid_e4=fees_paid,
            drawdown=peak.drawdown,
            progress=min(step / self.episode_steps, 1.0),
            max_position_e2=self.config.limits.max_position_e2,
        )
        observation = build_observation_batch(batch, state)

        flat_masks = self._masks
        self.fees.write_ids(sample.time_ns, self._rules.fee_ids[0])  # the fees in force now
        kernel.action_masks(px, sz, trusted, pos, acct, *self._rules, 0, flat_masks)
        masks = flat_masks.reshape(m, ACTIONS_PER_MARKET).copy()
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
        if actions.min() < 0 or actions.max() >= ACTIONS_PER_MARKET:
            j = int(np.flatnonzero((actions < 0) | (actions >= ACTIONS_PER_MARKET))[0])
            raise ValueError(f"v{policy.version} chose action {actions[j]} for {self.markets[j]}")

        # The kill switch holds every market: nothing is executed, what was asked is logged.
        fills = self._fills
        kernel.execute_all(
            px, sz, trusted, pos, acct, *self._rules, 0, self._holds if halted else actions, fills
        )
        equity_after = kernel.equity_x2(marks, 0, pos, acct)
        self.kill_switch.check(
            portfolio=self.portfolio, equity_e6x2=equity_after, time_ns=sample.time_ns
        )
        rows = self._rows(step, sample.time_ns, actions, masks, halted)
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
            equity_e6x2=equity_after,
        )

    def _rows(
        self, step: int, time_ns: int, actions: np.ndarray, masks: np.ndarray, halted: bool
    ) -> list[ActionRow]:
        """One :class:`ActionRow` per market from the kernel's fills and the account after."""
        pos = self._pos
        values_x2 = self._values_after_x2
        kernel.market_values_x2(self._marks, 0, pos, values_x2)
        previous_x2 = self._values_x2.tolist()
        self._values_x2[:] = values_x2
        initial_x2 = 2 * self.initial_cash_e6
        net = (pos[:, P_YES] - pos[:, P_NO]).tolist()
        bits_out = self._mask_bits
        kernel.mask_bits(masks, bits_out)
        bits = bits_out.tolist()
        cash_after_e4 = int(self._acct[A_CASH]) // 100
        when = utc_from_ns(time_ns)
        version = self.policy.version
        names = self._action_names
        rows = []
        for j, (action_id, row, value_x2) in enumerate(
            zip(actions.tolist(), self._fills.tolist(), values_x2.tolist(), strict=True)
        ):
            code = row[F_REFUSAL]
            did_trade = code == TRADED
            # reward × 2 × initial = value change (×2) + 2 × the cash the fills moved
            gain_x2 = value_x2 - previous_x2[j] + (2 * row[F_CASH] if did_trade else 0)
            if action_id < N_SIZES:  # HOLD (as the env: nothing to evaluate)
                refusal = ""
            elif halted:
                refusal = KILL_SWITCH
            else:
                refusal = "" if did_trade else str(REFUSALS[code])
            filled = row[F_FILLED] if did_trade else 0
            if filled:
                self.stats.trades += 1
            rows.append(
                ActionRow(
                    step=step,
                    time=when,
                    market_ticker=self.markets[j],
                    action_id=action_id,
                    action_type=names[action_id // N_SIZES],
                    # The decoded size (0 for HOLD and FLATTEN), in whole contracts.
                    action_size=_decoded_size(action_id, self.sizes_e2) // 100,
                    mask_bits=bits[j],
                    price_e4=_round_half_even(row[F_NOTIONAL], filled) if filled else None,
                    quantity_filled_e2=filled,
                    fee_e4=row[F_FEE] if did_trade else 0,
                    position_after_e2=net[j],
                    cash_after_e4=cash_after_e4,
                    reward=gain_x2 / initial_x2,
                    model_version=version,
                    refusal=refusal,
                )
            )
        return rows

    # -- internals --------------------------------------------------------------------------

    def _record(self, equity_after_x2: int) -> None:
        stats = self.stats
        initial_x2 = 2 * self.initial_cash_e6
        # Exact integers over an integer: rounded once, like the Fractions they replace.
        step_return = (equity_after_x2 - self._equity_after_x2) / initial_x2
        self._equity_after_x2 = equity_after_x2
        stats.decisions += 1
        stats.total_reward += step_return
        stats.step_returns += 1
        stats.sum_returns += step_return
        stats.sum_sq_returns += step_return * step_return
        if step_return != 0:
            stats.moving_steps += 1
            stats.winning_steps += step_return > 0
        if stats.decisions % stats.curve_every == 0:
            stats.equity_curve.append(round(equity_after_x2 / initial_x2, 8))
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
            "total_return": self._equity_after_x2 / (2 * self.initial_cash_e6) - 1.0,
            "sharpe": sharpe,
            "max_drawdown": self._peak.max_drawdown,
            "win_rate": stats.winning_steps / stats.moving_steps if stats.moving_steps else None,
            "fees_paid_e4": int(self._acct[A_FEES]),
            "final_positions": {
                m: {"yes_e2": yes, "no_e2": no}
                for m, (yes, no) in zip(
                    self.markets, self._pos[:, P_YES : P_NO + 1].tolist(), strict=True
                )
                if yes or no
            },
            "equity_curve": list(stats.equity_curve),
        }
