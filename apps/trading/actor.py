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

Around the policy a decision is two compiled calls (:mod:`apps.trading.hotpath`): one does
the marks, equity, the observation's per-market inputs and the masks (steps 2 and 4), the
other the fills, equity after and every column of the logged rows (step 5); Python only builds
the observation, asks the policy and makes the row tuples.

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
from apps.simulation.env import EnvConfig
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
    FILL_COLUMNS,
    P_NO,
    P_YES,
    REFUSALS,
    TRADED,
)
from apps.simulation.portfolio import EquityPeak, Portfolio, new_account
from apps.trading.hotpath import (
    NO_PRICE,
    R_BITS,
    R_FEE,
    R_FILLED,
    R_GAIN_X2,
    R_NET,
    R_PRICE,
    R_REFUSAL,
    ROW_COLUMNS,
    after_fills,
    before_decision,
)
from apps.trading.risk import KILL_SWITCH, KillSwitch
from apps.trading.sampling import BookSample, LiveHistory


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
        # The same, as a plain tuple: the compiled hot path unpacks it into the kernel calls.
        self._rule_args = tuple(self._rules)
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
        self._columns = np.zeros((self.n_markets, ROW_COLUMNS), dtype=np.int64)
        self._equity_after_x2 = 2 * self.initial_cash_e6
        self._fills = np.zeros((self.n_markets, FILL_COLUMNS), dtype=np.int64)
        self._holds = np.zeros(self.n_markets, dtype=np.int64)
        self._marks = np.zeros((1, self.n_markets), dtype=np.int64)
        # Per action id, what its rows log: the type's name and the decoded size in whole
        # contracts (0 for HOLD and FLATTEN).
        self._action_types = [ActionType(a // N_SIZES).name for a in range(ACTIONS_PER_MARKET)]
        self._action_sizes = [
            _decoded_size(a, self.sizes_e2) // 100 for a in range(ACTIONS_PER_MARKET)
        ]
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
        time_ns = sample.time_ns
        batch = self._batch
        self.history.push(sample, out=batch.history[:m])
        # The books as a tick axis of one, the env's layout for the kernels.
        px, sz, trusted = sample.px[None], sample.sz[None], sample.trusted[None]
        marks = self._marks
        # The env's order: mark and record equity at the new tick, then decide. (The same
        # call writes the batch's books, trust, time to close and holdings.)
        flat_masks = np.empty(m * ACTIONS_PER_MARKET, dtype=bool)  # fresh: the outcome keeps it
        # The fee settings in force now, in the rules' tick row the kernel calls read.
        self.fees.write_ids(time_ns, self._rules.fee_ids[0])
        equity_x2 = before_decision(
            px,
            sz,
            trusted,
            pos,
            acct,
            self._rule_args,
            marks,
            flat_masks,
            self._close_ns,
            time_ns,
            batch.px,
            batch.sz,
            batch.trusted,
            batch.seconds_to_close,
            batch.yes_held_e2,
            batch.no_held_e2,
            batch.cost_e6,
        )
        peak.record(equity_x2)
        halted = self.kill_switch.check_account(
            markets=self.markets, pos=pos, acct=acct, equity_e6x2=equity_x2, time_ns=time_ns
        )

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

        masks = flat_masks.reshape(m, ACTIONS_PER_MARKET)
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
        action_ids = actions.tolist()
        if min(action_ids) < 0 or max(action_ids) >= ACTIONS_PER_MARKET:
            j = int(np.flatnonzero((actions < 0) | (actions >= ACTIONS_PER_MARKET))[0])
            raise ValueError(f"v{policy.version} chose action {actions[j]} for {self.markets[j]}")

        # The kill switch holds every market: nothing is executed, what was asked is logged.
        fills = self._fills
        columns = self._columns
        equity_after = after_fills(
            px,
            sz,
            trusted,
            pos,
            acct,
            self._rule_args,
            self._holds if halted else actions,
            fills,
            marks,
            masks,
            self._values_x2,
            self._values_after_x2,
            columns,
        )
        self.kill_switch.check_account(
            markets=self.markets, pos=pos, acct=acct, equity_e6x2=equity_after, time_ns=time_ns
        )
        rows = self._rows(step, time_ns, action_ids, columns, halted)
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
        self, step: int, time_ns: int, action_ids: list[int], columns: np.ndarray, halted: bool
    ) -> list[ActionRow]:
        """One :class:`ActionRow` per market from the columns :func:`after_fills` computed
        (the kernel's fills and the account after): tuples only, no arithmetic left."""
        initial_x2 = 2 * self.initial_cash_e6
        cash_after_e4 = int(self._acct[A_CASH]) // 100
        when = utc_from_ns(time_ns)
        version = self.policy.version
        types, sizes = self._action_types, self._action_sizes
        make = ActionRow._make
        rows = []
        trades = 0
        for ticker, action_id, row in zip(self.markets, action_ids, columns.tolist(), strict=True):
            if action_id < N_SIZES:  # HOLD (as the env: nothing to evaluate)
                refusal = ""
            elif halted:
                refusal = KILL_SWITCH
            else:
                code = row[R_REFUSAL]
                refusal = "" if code == TRADED else str(REFUSALS[code])
            filled = row[R_FILLED]
            if filled:
                trades += 1
            price = row[R_PRICE]
            rows.append(
                make(
                    (
                        step,
                        when,
                        ticker,
                        action_id,
                        types[action_id],
                        sizes[action_id],
                        row[R_BITS],
                        None if price == NO_PRICE else price,
                        filled,
                        row[R_FEE],
                        row[R_NET],
                        cash_after_e4,
                        # reward × 2 × initial = value change (×2) + 2 × the cash moved
                        row[R_GAIN_X2] / initial_x2,
                        version,
                        refusal,
                    )
                )
            )
        self.stats.trades += trades
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
