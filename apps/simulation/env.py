"""KalshiTradingEnv: recorded Kalshi books as a multi-market Gymnasium environment.

Pure: the env takes a :class:`~apps.simulation.history.RecordedHistory` (numpy arrays loaded
once) and never touches the database. Each step:

1. every market's action (6 types x 5 sizes, see :mod:`apps.simulation.actions`) is carried
   out, market by market, against the book as it stood at the current tick: a taker order
   walks the opposite bid ladder (:mod:`apps.simulation.kernel`) and pays Kalshi's fees per
   fill (:mod:`apps.simulation.fees`: the trade fee and the rounding of the balance change to
   the account precision, with the order's cent refunds), at the fee setting in force at that
   tick; a refused action is a hold (its reason is in ``info``);
2. time moves one tick; a market past its close is settled at $1/$0 when its result is known,
   else closed at its last mid (``how: settled_at_mid`` in ``info["settled"]``);
3. reward = change of portfolio value (marked to mid) / initial cash, minus
   ``risk_penalty`` x the increase of drawdown (0 by default).

The rules: the account lives in int64 arrays and steps 1–2, the masks and the account's part
of the observation run in :mod:`apps.simulation.kernel` (numba), the one implementation of the
trading rules, which the paper trader runs too. ``env.portfolio`` is a read-only
:class:`Portfolio` view of the account.

The observation is the precomputed :func:`~apps.simulation.features.static_features` row of
the current tick (it only ever reads history rows up to that tick: see
:func:`features.history_summaries`) plus the account's features. Episodes start at ticks drawn
with the env's seeded ``np_random`` from the allowed window (``window=(start_ns, end_ns)``:
the train / evaluation split is an argument) and never read a tick at or after the window's
end. A market whose book is untrusted (gap or resync in the recording) can only hold until its
next snapshot.

``info`` is small and array-based, so vectorised envs copy it cheaply: ``time_ns``, ``tick``,
``fills`` ((n_markets, 11) int64, columns ``layout.F_*``: action, type, size, filled,
notional, trade fee, refusal code, contract, side, cash moved, net rounding fee),
``positions_e2`` ((n_markets, 2): YES and NO held), ``cash_e6``, ``equity_e6``,
``fees_paid_e4`` (trade fees), ``rounding_fees_e6``, ``drawdown`` and ``settled``
(a list of ``{market, how, payout_e6}``). :func:`trades_from_info` and
:func:`positions_from_info` turn them into readable dicts.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np

from apps.simulation import kernel
from apps.simulation.actions import (
    ACTIONS_PER_MARKET,
    DEFAULT_SIZES_CONTRACTS,
    ActionType,
    sizes_e2_from_contracts,
)
from apps.simulation.books import ArrayBook
from apps.simulation.features import (
    BOOK_LEVELS,
    FEATURES_PER_MARKET,
    N_FEATURES,
    N_HISTORY,
    N_MARKETS,
    history_block,
    static_features,
)
from apps.simulation.fees import STANDARD_FEES, FeeSchedule, FeeTimeline, check_account_precision
from apps.simulation.history import RecordedHistory
from apps.simulation.portfolio import (
    EquityPeak,
    Portfolio,
    RiskLimits,
    new_account,
    settlement_price_e4,
)

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
    """Episode and account settings (money in dollars here, integers inside).

    Fees: ``fees_by_market`` gives a market its series' :class:`FeeSchedule` or, when its
    fees change during the data, a :class:`FeeTimeline` (schedules with effective times); a
    market not in it pays ``fees`` (standard quadratic, multiplier 1: today's default until the
    recorder records fee settings). ``account_precision_e4`` is the precision Kalshi rounds
    each fill's balance change to: 100 ($0.01, ordinary members) or 1 ($0.0001, direct
    members; the ``RL_ACCOUNT_PRECISION_E4`` setting).
    """

    episode_steps: int = 300
    initial_cash_dollars: float = 1_000.0
    sizes_contracts: tuple[int, ...] = DEFAULT_SIZES_CONTRACTS
    limits: RiskLimits = field(default_factory=RiskLimits)
    fees: FeeSchedule | FeeTimeline = STANDARD_FEES
    fees_by_market: Mapping[str, FeeSchedule | FeeTimeline] = field(default_factory=dict)
    account_precision_e4: int = 100
    risk_penalty: float = 0.0
    market_info: Mapping[str, MarketInfo] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_account_precision(self.account_precision_e4)

    def fee_timeline(self, market: str) -> FeeTimeline:
        """The market's fees over time (a fixed schedule is a timeline without changes)."""
        fees = self.fees_by_market.get(market, self.fees)
        return fees if isinstance(fees, FeeTimeline) else FeeTimeline(initial=fees)


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
        self.n_markets = m = len(markets)
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
        if self.initial_cash_e6 <= 0:
            raise ValueError("initial_cash_dollars must be positive")
        self.observation_space = gym.spaces.Box(-1.0, 1.0, shape=(N_FEATURES,), dtype=np.float32)
        self.action_space = gym.spaces.MultiDiscrete([ACTIONS_PER_MARKET] * m)
        self._setup_rules()
        self._precompute()
        self._pos, self._acct = new_account(m, self.initial_cash_e6)
        self._peak = EquityPeak(self.initial_cash_e6)
        self._hold_fills = np.zeros((m, kernel.FILL_COLUMNS), dtype=np.int64)
        self._hold_fills[:, kernel.F_REFUSAL] = kernel.HOLD
        self._payouts = np.zeros(m, dtype=np.int64)
        # The trading kernels' leading arguments (these arrays only ever change in place).
        self._kernel_args = (self._px, self._sz, self._trusted, self._pos, self._acct, *self._rules)
        self._t = self.first_tick
        self._episode_end = self.first_tick
        self._steps = 0
        self._new_account()

    def spawn(self) -> KalshiTradingEnv:
        """Another env on the same history, window and config with its own account, episode
        and random generator, sharing this one's read-only precomputed arrays (books, trust,
        marks, the static observation, the rule arrays): n of them for a vectorised trainer
        cost one precomputation and one set of per-tick arrays, not n."""
        twin = copy.copy(self)
        twin._pos = np.zeros_like(self._pos)
        twin._acct = np.zeros_like(self._acct)
        twin._peak = EquityPeak(self.initial_cash_e6)
        twin._hold_fills = self._hold_fills.copy()
        twin._payouts = np.zeros_like(self._payouts)
        twin._kernel_args = (self._px, self._sz, self._trusted, twin._pos, twin._acct, *self._rules)
        twin._np_random = None  # gymnasium makes a fresh generator (reset(seed=...) seeds it)
        twin._t = twin._episode_end = self.first_tick
        twin._steps = 0
        twin._new_account()
        return twin

    # -- setup (once per env) ------------------------------------------------------------------

    def _setup_rules(self) -> None:
        """Fees, limits and market outcomes as the integer arrays the kernel reads."""
        cfg = self.config
        self._rules = kernel.trading_rules(
            fees=kernel.FeeIndex([cfg.fee_timeline(mk) for mk in self.markets]),
            times_ns=self.history.times_ns,
            limits=cfg.limits,
            sizes_e2=self.sizes_e2,
            initial_cash_e6=self.initial_cash_e6,
            episode_steps=cfg.episode_steps,
            precision_e4=cfg.account_precision_e4,
        )
        infos = [cfg.market_info.get(mk) or MarketInfo() for mk in self.markets]
        never = np.iinfo(np.int64).max
        self._close_ns = np.array([i.close_ns or never for i in infos], dtype=np.int64)
        codes = {
            None: kernel.RESULT_UNKNOWN,
            "yes": kernel.RESULT_YES,
            "no": kernel.RESULT_NO,
            "scalar": kernel.RESULT_SCALAR,
        }
        results, values = [], []
        for market, info in zip(self.markets, infos, strict=True):
            if info.result not in codes:
                raise ValueError(f"{market}: result {info.result!r} is not yes, no or scalar")
            if info.result == "scalar":
                settlement_price_e4("scalar", info.settlement_value_e4)  # validates the value
            results.append(codes[info.result])
            values.append(info.settlement_value_e4 or 0)
        self._results = np.array(results, dtype=np.int64)
        self._values_e4 = np.array(values, dtype=np.int64)
        self._how = ["settled_at_mid" if i.result is None else i.result for i in infos]

    def _precompute(self) -> None:
        """Per tick, everything that does not depend on the account: books, trust, marks and
        the static part of the observation (flags, book, history, time to close)."""
        h = self.history
        k = BOOK_LEVELS
        t = h.n_ticks
        m = self.n_markets
        px = np.zeros((t, N_MARKETS, 2, k), dtype=np.int64)
        sz = np.zeros((t, N_MARKETS, 2, k), dtype=np.int64)
        px[:, :m, 0] = h.yes_px[:, :, :k]
        px[:, :m, 1] = h.no_px[:, :, :k]
        sz[:, :m, 0] = h.yes_sz[:, :, :k]
        sz[:, :m, 1] = h.no_sz[:, :, :k]
        trusted = np.zeros((t, N_MARKETS), dtype=bool)
        trusted[:, :m] = h.trusted
        hist = np.zeros((t, N_MARKETS, N_HISTORY))
        hist[:, :m] = history_block(px[:, :m], sz[:, :m], trusted[:, :m], h.updates)
        present = np.zeros(N_MARKETS, dtype=bool)
        present[:m] = True
        close = np.full(N_MARKETS, np.iinfo(np.int64).max, dtype=np.int64)
        close[:m] = self._close_ns
        times = h.times_ns
        static = np.empty((t, N_MARKETS * FEATURES_PER_MARKET), dtype=np.float32)
        # In slices, to keep the float64 temporaries small on long histories.
        for lo in range(0, t, 4096):
            hi = min(lo + 4096, t)
            now = times[lo:hi, None]
            static_features(
                px[lo:hi],
                sz[lo:hi],
                hist[lo:hi],
                trusted[lo:hi],
                np.broadcast_to(present, (hi - lo, N_MARKETS)),
                now < close,  # a market is open until its close (settled at the first tick after)
                (close - now) / NS,
                out=static[lo:hi].reshape(hi - lo, N_MARKETS, FEATURES_PER_MARKET),
            )
        self._px, self._sz, self._trusted, self._static = px, sz, trusted, static
        self._times = times
        self._times_list = times.tolist()
        # Twice the mid in e4 per tick and market, -1 without a trusted two-sided book.
        two_sided = (sz[:, :m, 0, 0] > 0) & (sz[:, :m, 1, 0] > 0) & trusted[:, :m]
        self._mid_e4x2 = np.ascontiguousarray(
            np.where(two_sided, px[:, :m, 0, 0] + 10_000 - px[:, :m, 1, 0], -1)
        )

    def _new_account(self) -> None:
        self._pos[:] = 0
        self._acct[:] = 0
        self._acct[kernel.A_CASH] = self.initial_cash_e6
        self._peak.reset(self.initial_cash_e6)
        self._n_settled = 0
        self._next_close = int(self._close_ns.min())
        self._equity_x2 = 2 * self.initial_cash_e6

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
        self._steps = 0
        self._new_account()
        settled = self._settle_due()
        self._equity_x2 = kernel.equity_x2(self._mid_e4x2, start, self._pos, self._acct)
        self._peak.record(self._equity_x2)
        info = self._info(self._hold_fills.copy())
        info["settled"] = settled
        return self._observation(), info

    def step(
        self, action: np.ndarray | Sequence[int]
    ) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        actions = np.asarray(action, dtype=np.int64).reshape(-1)
        if actions.shape != (self.n_markets,):
            raise ValueError(f"expected {self.n_markets} actions, got shape {actions.shape}")
        if self._steps >= self.config.episode_steps:
            raise RuntimeError("the episode is over: call reset()")
        fills = np.empty((self.n_markets, kernel.FILL_COLUMNS), dtype=np.int64)
        bad = kernel.execute_all(*self._kernel_args, self._t, actions, fills)
        if bad >= 0:
            raise ValueError(f"action {actions[bad]} for {self.markets[bad]} is not in 0..29")
        self._t += 1
        self._steps += 1
        settled = self._settle_due() if self._times_list[self._t] >= self._next_close else []
        equity_x2 = kernel.equity_x2(self._mid_e4x2, self._t, self._pos, self._acct)
        peak = self._peak
        drawdown_before = peak.drawdown
        drawdown = peak.record(equity_x2)
        # Integer numerator over integer denominator: the exact change, rounded once.
        reward = (equity_x2 - self._equity_x2) / (2 * self.initial_cash_e6)
        if self.config.risk_penalty:
            reward -= self.config.risk_penalty * max(0.0, drawdown - drawdown_before)
        self._equity_x2 = equity_x2
        terminated = self._n_settled == self.n_markets
        truncated = not terminated and self._steps >= self.config.episode_steps
        info = self._info(fills)
        info["settled"] = settled
        return self._observation(), reward, terminated, truncated, info

    def action_masks(self) -> np.ndarray:
        """(n_markets * 30,) bool for sb3-contrib MaskablePPO: True = allowed now (a fresh
        array)."""
        out = np.empty(self.n_markets * ACTIONS_PER_MARKET, dtype=bool)
        kernel.action_masks(*self._kernel_args, self._t, out)
        return out

    # -- reading ---------------------------------------------------------------------------------

    @property
    def current_tick(self) -> int:
        return self._t

    @property
    def steps_taken(self) -> int:
        """Steps of the current episode so far."""
        return self._steps

    @property
    def current_time_ns(self) -> int:
        return self._times_list[self._t]

    def marks_e4x2(self) -> dict[str, int | None]:
        """Twice each market's YES mid now, in $0.0001 (None without a two-sided trusted book)."""
        row = self._mid_e4x2[self._t].tolist()
        return {m: (v if v >= 0 else None) for m, v in zip(self.markets, row, strict=True)}

    def position_table(self) -> np.ndarray:
        """A copy of the per-market account rows, columns ``kernel.P_*`` (held, cost, fees e4,
        realised e6, settled, rounding fees e6): what round-trip accounting reads after each
        step."""
        return self._pos.copy()

    @property
    def portfolio(self) -> Portfolio:
        """A read-only view of the live account (positions, cash, fees, P&L, drawdown): it
        follows the env as it steps."""
        return Portfolio(
            markets=self.markets,
            pos=self._pos,
            acct=self._acct,
            initial_cash_e6=self.initial_cash_e6,
            limits=self.config.limits,
            peak=self._peak,
        )

    # -- internals -----------------------------------------------------------------------------

    def _guard(self, t: int) -> None:
        if t > self._t or t >= self.end_tick:
            raise LookAheadError(
                f"tick {t} is after the current tick {self._t} (window ends at {self.end_tick})"
            )

    def _book(self, t: int, j: int) -> ArrayBook:
        """Market ``j``'s top-10 book at tick ``t`` (never after the current tick)."""
        self._guard(t)
        px, sz = self._px[t, j], self._sz[t, j]
        return ArrayBook(px[0], sz[0], px[1], sz[1], validate=False)

    def _observation(self, t: int | None = None) -> np.ndarray:
        """The observation with tick ``t``'s market data (default: now) and the account now."""
        t = self._t if t is None else t
        self._guard(t)
        out = np.empty(N_FEATURES, dtype=np.float32)
        kernel.write_env_observation(
            out,
            self._static,
            self._px,
            t,
            self._pos,
            self._acct,
            self.config.limits.max_position_e2,
            float(self.initial_cash_e6),
            self._peak.drawdown,
            self._steps / self.config.episode_steps,
        )
        return out

    def _settle_due(self) -> list[dict[str, Any]]:
        """Settle every market whose close has come (at the result, else at its mid)."""
        count = kernel.settle_due(
            self._t,
            self._times,
            self._close_ns,
            self._results,
            self._values_e4,
            self._mid_e4x2,
            self._pos,
            self._acct,
            self._payouts,
        )
        if not count:
            return []
        self._n_settled += count
        settled = self._pos[:, kernel.P_SETTLED].astype(bool)
        open_closes = self._close_ns[~settled]
        self._next_close = int(open_closes.min()) if open_closes.size else np.iinfo(np.int64).max
        return [
            {"market": self.markets[j], "how": self._how[j], "payout_e6": payout}
            for j, payout in enumerate(self._payouts.tolist())
            if payout >= 0
        ]

    def _info(self, fills: np.ndarray) -> dict[str, Any]:
        cash, _, fees, _, rounding = self._acct.tolist()
        return {
            "time_ns": self._times_list[self._t],
            "tick": self._t,
            "fills": fills,
            "positions_e2": self._pos[:, : kernel.P_NO + 1].copy(),
            "cash_e6": cash,
            "equity_e6": self._equity_x2 / 2,
            "fees_paid_e4": fees,
            "rounding_fees_e6": rounding,
            "drawdown": self._peak.drawdown,
        }


def trades_from_info(markets: Sequence[str], info: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The non-HOLD actions of one step's ``info["fills"]`` as readable dicts, market order.

    Keys: market, action_id, type, size_e2 (decoded; 0 for FLATTEN), filled_e2, avg_price_e4
    (None when nothing filled), fee_e4 (trade fees), rounding_fee_e6 (the order's net rounding
    fee), refusal (None when carried out, else the reason).
    """
    out = []
    for market, row in zip(markets, info["fills"].tolist(), strict=True):
        if row[kernel.F_TYPE] == ActionType.HOLD:
            continue
        traded = row[kernel.F_REFUSAL] == kernel.TRADED
        filled = row[kernel.F_FILLED] if traded else 0
        out.append(
            {
                "market": market,
                "action_id": row[kernel.F_ACTION],
                "type": ActionType(row[kernel.F_TYPE]).name,
                "size_e2": row[kernel.F_SIZE],
                "filled_e2": filled,
                "avg_price_e4": row[kernel.F_NOTIONAL] / filled if filled else None,
                "fee_e4": row[kernel.F_FEE] if traded else 0,
                "rounding_fee_e6": row[kernel.F_ROUNDING] if traded else 0,
                "refusal": kernel.REFUSALS[row[kernel.F_REFUSAL]],
            }
        )
    return out


def positions_from_info(
    markets: Sequence[str], info: Mapping[str, Any]
) -> dict[str, dict[str, int]]:
    """Markets with holdings after the step: ``{market: {"yes_e2": …, "no_e2": …}}``."""
    return {
        market: {"yes_e2": yes, "no_e2": no}
        for market, (yes, no) in zip(markets, info["positions_e2"].tolist(), strict=True)
        if yes or no
    }


def traded_count(info: Mapping[str, Any]) -> int:
    """How many markets got a fill in the step."""
    fills = info["fills"]
    traded = fills[:, kernel.F_REFUSAL] == kernel.TRADED
    return int((traded & (fills[:, kernel.F_FILLED] > 0)).sum())
