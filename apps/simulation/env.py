"""KalshiTradingEnv: recorded Kalshi books as a multi-market Gymnasium environment.

Pure: the env takes a :class:`~apps.simulation.history.RecordedHistory` (numpy arrays loaded
once) and never touches the database. Each step:

1. every market's action (6 types x 5 sizes, see :mod:`apps.simulation.actions`) is carried
   out, market by market, against the book as it stood at the current tick: a taker order
   walks the opposite bid ladder (:mod:`apps.simulation.fills`) and pays Kalshi's fee
   (:mod:`apps.simulation.fees`); a refused action is a hold (reported in ``info``);
2. time moves one tick; a market past its close is settled at $1/$0 when its result is known,
   else closed at its mid (``settled_at_mid`` in ``info``);
3. reward = change of portfolio value (marked to mid) / initial cash, minus
   ``risk_penalty`` x the increase of drawdown (0 by default).

The observation is :func:`~apps.simulation.features.build_observation_batch` of the current
tick: it only ever reads history rows up to the current tick (the per-tick book block is
computed once per history from rows <= t, see :func:`features.history_summaries`).

Episodes start at ticks drawn with the env's seeded ``np_random`` from the allowed window
(``window=(start_ns, end_ns)``: the train / evaluation split is an argument) and never read a
tick at or after the window's end. A market whose book is untrusted (gap or resync in the
recording) can only hold until its next snapshot.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np

from apps.simulation.actions import (
    ACTIONS_PER_MARKET,
    DEFAULT_SIZES_CONTRACTS,
    action_mask,
    execute,
    sizes_e2_from_contracts,
)
from apps.simulation.features import (
    BOOK_LEVELS,
    N_BOOK_FEATURES,
    N_FEATURES,
    N_MARKETS,
    MarketBatch,
    PortfolioState,
    book_features,
    build_observation_batch,
    history_summaries,
    series_values,
)
from apps.simulation.fees import STANDARD_FEES, FeeSchedule
from apps.simulation.fills import ArrayBook
from apps.simulation.history import RecordedHistory
from apps.simulation.portfolio import Portfolio, RiskLimits

NS = 1_000_000_000


@dataclass(frozen=True)
class MarketInfo:
    """What the recording cannot tell: when a market closes and how it settled.

    ``close_ns``: Unix ns of the close (None = not within reach). ``result``: ``yes``, ``no``,
    ``scalar`` (with ``settlement_value_e4``) or None while unknown.
    """

    close_ns: int | None = None
    result: str | None = None
    settlement_value_e4: int | None = None


@dataclass(frozen=True)
class EnvConfig:
    """Episode and account settings (money in dollars here, integers inside)."""

    episode_steps: int = 300
    initial_cash_dollars: float = 1_000.0
    sizes_contracts: tuple[int, ...] = DEFAULT_SIZES_CONTRACTS
    limits: RiskLimits = field(default_factory=RiskLimits)
    fees: FeeSchedule = STANDARD_FEES
    fees_by_market: Mapping[str, FeeSchedule] = field(default_factory=dict)
    risk_penalty: float = 0.0
    market_info: Mapping[str, MarketInfo] = field(default_factory=dict)


class LookAheadError(RuntimeError):
    """Something asked for market data after the env's current time."""


class KalshiTradingEnv(gym.Env):
    """Trade up to 10 recorded markets at once. See the module docstring."""

    metadata = {"render_modes": []}

    def __init__(
        self,
        history: RecordedHistory,
        *,
        config: EnvConfig | None = None,
        window: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        self.config = config or EnvConfig()
        markets = list(history.markets)
        if not 1 <= len(markets) <= N_MARKETS:
            raise ValueError(f"the env trades 1 to {N_MARKETS} markets, got {len(markets)}")
        if history.n_levels < BOOK_LEVELS:
            raise ValueError(
                f"history has {history.n_levels} book levels; the env needs {BOOK_LEVELS}"
            )
        self.history = history
        self.markets = markets
        self.n_markets = len(markets)
        times = history.times_ns
        lo, hi = (int(times[0]), int(times[-1]) + 1) if window is None else window
        self.first_tick = int(np.searchsorted(times, lo, side="left"))
        self.end_tick = int(np.searchsorted(times, hi, side="left"))  # exclusive
        steps = self.config.episode_steps
        if self.end_tick - self.first_tick < steps + 1:
            raise ValueError(
                f"the window holds {self.end_tick - self.first_tick} ticks; an episode of "
                f"{steps} steps needs {steps + 1}"
            )
        self.sizes_e2 = sizes_e2_from_contracts(self.config.sizes_contracts)
        self.initial_cash_e6 = round(self.config.initial_cash_dollars * 1_000_000)
        self.observation_space = gym.spaces.Box(-1.0, 1.0, shape=(N_FEATURES,), dtype=np.float32)
        self.action_space = gym.spaces.MultiDiscrete([ACTIONS_PER_MARKET] * self.n_markets)
        self._fees = [self.config.fees_by_market.get(m, self.config.fees) for m in markets]
        self._close_ns = np.array(
            [
                (self.config.market_info.get(m) or MarketInfo()).close_ns or np.iinfo(np.int64).max
                for m in markets
            ],
            dtype=np.int64,
        )
        self._precompute()
        self._t = self.first_tick
        self._episode_end = self.first_tick
        self.portfolio = Portfolio(cash_e6=self.initial_cash_e6, limits=self.config.limits)

    # -- precomputation (once per history) -----------------------------------------------

    def _precompute(self) -> None:
        h = self.history
        k = BOOK_LEVELS
        t = h.n_ticks
        px = np.zeros((t, N_MARKETS, 2, k), dtype=np.int64)
        sz = np.zeros((t, N_MARKETS, 2, k), dtype=np.int64)
        m = self.n_markets
        px[:, :m, 0] = h.yes_px[:, :, :k]
        px[:, :m, 1] = h.no_px[:, :, :k]
        sz[:, :m, 0] = h.yes_sz[:, :, :k]
        sz[:, :m, 1] = h.no_sz[:, :, :k]
        trusted = np.zeros((t, N_MARKETS), dtype=bool)
        trusted[:, :m] = h.trusted
        hist = np.zeros((t, N_MARKETS, 12))
        mid, spread, yes_depth, no_depth = series_values(px, sz, trusted)
        for j in range(m):
            hist[:, j] = history_summaries(
                mid[:, j], spread[:, j], h.updates[:, j], yes_depth[:, j], no_depth[:, j]
            )
        block = np.empty((t, N_MARKETS, N_BOOK_FEATURES), dtype=np.float64)
        # In slices, to keep the float64 temporaries small on long histories.
        for lo in range(0, t, 4096):
            hi = min(lo + 4096, t)
            book_features(px[lo:hi], sz[lo:hi], hist[lo:hi], trusted[lo:hi], out=block[lo:hi])
        self._px, self._sz, self._trusted, self._hist = px, sz, trusted, hist
        self._block = block.astype(np.float32)
        # Twice the mid in e4 per tick and market (None-able marks are made per step).
        two_sided = (sz[:, :, 0, 0] > 0) & (sz[:, :, 1, 0] > 0) & trusted
        self._mid_e4x2 = np.where(two_sided, px[:, :, 0, 0] + 10_000 - px[:, :, 1, 0], -1)
        self._batch = MarketBatch.empty()
        self._batch.present[:m] = True

    # -- gymnasium API ----------------------------------------------------------------------

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        options = options or {}
        steps = self.config.episode_steps
        last_start = self.end_tick - steps - 1
        if "start_tick" in options:
            start = int(options["start_tick"])
            if not self.first_tick <= start <= last_start:
                raise ValueError(
                    f"start_tick {start} outside [{self.first_tick}, {last_start}] of the window"
                )
        else:
            start = int(self.np_random.integers(self.first_tick, last_start + 1))
        self._t = start
        self._start = start
        self._episode_end = start + steps
        self.portfolio = Portfolio(cash_e6=self.initial_cash_e6, limits=self.config.limits)
        self._settled = np.zeros(self.n_markets, dtype=bool)
        batch = self._batch
        batch.yes_held_e2[:] = 0
        batch.no_held_e2[:] = 0
        batch.cost_e6[:] = 0
        self._positions_changed: set[int] = set()
        self._settle_due()
        self._equity_x2 = self._equity_now_x2()
        self.portfolio.record_equity_x2(self._equity_x2)
        self._steps = 0
        return self._observation(), self._info(trades=[])

    def step(
        self, action: np.ndarray | Sequence[int]
    ) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        actions = np.asarray(action, dtype=np.int64).reshape(-1)
        if actions.shape != (self.n_markets,):
            raise ValueError(f"expected {self.n_markets} actions, got shape {actions.shape}")
        if self._steps >= self.config.episode_steps:
            raise RuntimeError("the episode is over: call reset()")
        t = self._t
        trades = []
        for j, market in enumerate(self.markets):
            action_id = int(actions[j])
            if not 0 <= action_id < ACTIONS_PER_MARKET:
                raise ValueError(f"action {action_id} for {market} is not in 0..29")
            if action_id < len(self.sizes_e2):
                continue  # HOLD: nothing to evaluate
            decision = execute(
                action_id,
                book=self._book(t, j),
                portfolio=self.portfolio,
                market=market,
                trusted=bool(self._trusted[t, j]),
                is_open=not self._settled[j],
                sizes_e2=self.sizes_e2,
                fees=self._fees[j],
            )
            if decision.trades:
                self._positions_changed.add(j)
            trades.append(
                {
                    "market": market,
                    "action_id": action_id,
                    "type": decision.action_type.name,
                    "size_e2": decision.size_e2,
                    "filled_e2": decision.fill.filled_e2 if decision.trades else 0,
                    "avg_price_e4": (
                        decision.fill.notional_e6 / decision.fill.filled_e2
                        if decision.trades and decision.fill.filled_e2
                        else None
                    ),
                    "fee_e4": decision.fill.fee_e4 if decision.trades else 0,
                    "refusal": None if decision.trades else str(decision.refusal),
                }
            )
        self._t = t + 1
        self._steps += 1
        settled = self._settle_due()
        equity_x2 = self._equity_now_x2()
        drawdown_before = self.portfolio.drawdown
        drawdown = self.portfolio.record_equity_x2(equity_x2)
        # Integer numerator over integer denominator: the exact change, rounded once.
        reward = (equity_x2 - self._equity_x2) / (2 * self.initial_cash_e6)
        if self.config.risk_penalty:
            reward -= self.config.risk_penalty * max(0.0, drawdown - drawdown_before)
        self._equity_x2 = equity_x2
        terminated = bool(self._settled.all())
        truncated = not terminated and self._steps >= self.config.episode_steps
        info = self._info(trades=trades)
        info["settled"] = settled
        return self._observation(), reward, terminated, truncated, info

    def action_masks(self) -> np.ndarray:
        """(n_markets * 30,) bool for sb3-contrib MaskablePPO: True = allowed now."""
        t = self._t
        masks = [
            action_mask(
                book=self._book(t, j),
                portfolio=self.portfolio,
                market=market,
                trusted=bool(self._trusted[t, j]),
                is_open=not self._settled[j],
                sizes_e2=self.sizes_e2,
                fees=self._fees[j],
            )
            for j, market in enumerate(self.markets)
        ]
        return np.concatenate(masks)

    # -- internals -----------------------------------------------------------------------------

    @property
    def current_tick(self) -> int:
        return self._t

    @property
    def steps_taken(self) -> int:
        """Steps of the current episode so far."""
        return self._steps

    def marks_e4x2(self) -> dict[str, int | None]:
        """Twice each market's YES mid now, in $0.0001 (None without a two-sided trusted book)."""
        return self._marks()

    @property
    def current_time_ns(self) -> int:
        return int(self.history.times_ns[self._t])

    def _book(self, t: int, j: int) -> ArrayBook:
        self._guard(t)
        px, sz = self._px[t, j], self._sz[t, j]
        return ArrayBook(px[0], sz[0], px[1], sz[1], validate=False)

    def _guard(self, t: int) -> None:
        if t > self._t or t >= self.end_tick:
            raise LookAheadError(
                f"tick {t} is after the current tick {self._t} (window ends at {self.end_tick})"
            )

    def _observation(self, t: int | None = None) -> np.ndarray:
        t = self._t if t is None else t
        self._guard(t)
        batch = self._batch
        m = self.n_markets
        batch.px[:] = self._px[t]
        batch.sz[:] = self._sz[t]
        batch.history[:] = self._hist[t]
        batch.trusted[:] = self._trusted[t]
        batch.is_open[:m] = ~self._settled
        now = self.history.times_ns[t]
        batch.seconds_to_close[:m] = (self._close_ns - now) / NS
        # Holdings change only when a market trades or settles: refresh just those slots.
        for j in self._positions_changed:
            batch.set_position(j, self.portfolio.position(self.markets[j]))
        self._positions_changed.clear()
        state = PortfolioState.from_portfolio(
            self.portfolio, progress=self._steps / self.config.episode_steps
        )
        return build_observation_batch(batch, state, book_block=self._block[t])

    def _marks(self) -> dict[str, int | None]:
        row = self._mid_e4x2[self._t]
        return {m: (int(row[j]) if row[j] >= 0 else None) for j, m in enumerate(self.markets)}

    def _equity_now_x2(self) -> int:
        return self.portfolio.equity_e6x2(self._marks())

    def _settle_due(self) -> list[dict[str, Any]]:
        """Settle every market whose close has come (at the result, else at its mid)."""
        now = self.history.times_ns[self._t]
        done = []
        for j, market in enumerate(self.markets):
            if self._settled[j] or now < self._close_ns[j]:
                continue
            info = self.config.market_info.get(market) or MarketInfo()
            if info.result is not None:
                payout = self.portfolio.settle(market, info.result, info.settlement_value_e4)
                how = info.result
            else:
                # Close at the last mid seen up to now ($0.50 if the book never had one).
                seen = self._mid_e4x2[: self._t + 1, j]
                seen = seen[seen >= 0]
                value = int(seen[-1] // 2) if seen.size else 5_000
                payout = self.portfolio.settle(market, "scalar", value)
                how = "settled_at_mid"
            self._settled[j] = True
            self._positions_changed.add(j)
            done.append({"market": market, "how": how, "payout_e6": payout})
        return done

    def _info(self, *, trades: list[dict[str, Any]]) -> dict[str, Any]:
        p = self.portfolio
        return {
            "time_ns": int(self.history.times_ns[self._t]),
            "tick": self._t,
            "trades": trades,
            "cash_e6": p.cash_e6,
            "equity_e6": self._equity_x2 / 2 if hasattr(self, "_equity_x2") else p.cash_e6,
            "fees_paid_e4": p.fees_paid_e4,
            "drawdown": p.drawdown,
            "positions": {
                m: {"yes_e2": pos.yes_e2, "no_e2": pos.no_e2}
                for m, pos in p
                if pos.yes_e2 or pos.no_e2
            },
        }
