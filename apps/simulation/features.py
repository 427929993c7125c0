"""The observation: the one place that turns books, positions, cash and time into features.

The paper trader calls :func:`build_observation_batch`; the env calls its two pieces
(:func:`static_features`, precomputed per tick, and the kernel's position features), so the
same state gives the same vector on both paths, bit for bit.

Layout (``OBSERVATION_SPEC_VERSION = 1``): 545 float32 values =
``N_MARKETS`` (10) slots × ``FEATURES_PER_MARKET`` (54) + ``PORTFOLIO_FEATURES`` (5).
Slot ``i`` occupies ``[54·i, 54·i + 54)``; the portfolio block is ``[540, 545)``. Names are
``m{i}.<name>`` and ``portfolio.<name>`` (:func:`feature_names`). Every value is clipped into
[−1, 1]; an absent slot is all zeros (its ``present`` is 0). Prices ``p`` below are in dollars
of the YES (or named) contract and map as ``2p − 1`` ($0 → −1, $0.50 → 0, $1 → +1).

Per market (offset: name — definition and scale):

* 0 ``present`` — 1 if a market occupies the slot.
* 1 ``trusted`` — 1 if the book is trusted. While untrusted (after a recording gap or resync,
  until the next snapshot) offsets 3–46 (book and history) are 0.
* 2 ``open`` — 1 while the market trades.
* 3 ``has_yes_bid``, 4 ``has_no_bid`` — 1 if that ladder is not empty.
* 5 ``mid`` — 2·mid − 1, mid = (best YES bid + implied YES ask) / 2; 0 unless both sides exist.
* 6 ``spread`` — (YES ask − YES bid) / $0.10 (negative when crossed); 0 unless two-sided.
* 7 ``yes_bid``, 8 ``yes_ask``, 9 ``no_bid``, 10 ``no_ask`` — 2p − 1; asks are implied
  (YES ask = 1 − best NO bid, NO ask = 1 − best YES bid); 0 when the source side is empty.
* 11 ``microprice_offset`` — (size-weighted microprice − mid) / $0.05; 0 unless two-sided.
* 12 ``imbalance_1`` — (YES bid size − NO bid size) / (sum), best level of each side.
* 13–17 ``yes_size_1..5``, 18–22 ``no_size_1..5`` — log1p(contracts) / log1p(10⁶) per level.
* 23–26 ``yes_gap_2..5``, 27–30 ``no_gap_2..5`` — (best price − level price) / $0.10; 1 when
  the level does not exist (nothing within reach).
* 31 ``imbalance_5``, 32 ``imbalance_10`` — size imbalance over the top 5 / all 10 levels.
* 33 ``yes_depth_10``, 34 ``no_depth_10`` — log1p(contracts in the top 10 levels) / log1p(10⁷).
* 35–38 ``mid_change_1/5/30/300`` — mid now − mid w steps ago, / $0.02, $0.05, $0.10, $0.20.
* 39–42 ``updates_1/5/30/300`` — book updates in the last w steps: log1p(n) / log1p(50·w).
* 43 ``mid_vol_30`` — std of the 1-step mid changes over 30 steps / $0.02.
* 44 ``spread_change_5`` — spread now − 5 steps ago, / $0.10.
* 45 ``yes_depth_change_5``, 46 ``no_depth_change_5`` — change of log1p(top-5 contracts)
  over 5 steps, / ln 100.
* 47 ``time_to_close_log`` — log1p(seconds) / log1p(30 days); 48 ``time_to_close_1h`` —
  seconds / 3600. Both 0 once the close has passed.
* 49 ``net_position`` — (YES held − NO held) / the per-market position limit.
* 50 ``avg_entry`` — 2p − 1 of the average price paid for the contracts held; 0 when flat.
* 51 ``unrealized_per_contract`` — mark − average entry in dollars (mark = mid for YES,
  1 − mid for NO); 0 when flat or without a trusted two-sided book.
* 52 ``unrealized`` — unrealized P&L / (10 % of the starting cash).
* 53 ``exposure`` — the market's cost basis / starting cash.

Portfolio (offset from 540): 0 ``cash`` — cash / starting cash − 1; 1 ``exposure`` — total
cost basis / starting cash; 2 ``fees_paid`` — fees / (1 % of starting cash); 3 ``drawdown``
— fraction of the equity peak lost; 4 ``progress`` — episode progress in [0, 1].

History features live in :mod:`apps.simulation.history_features` (re-exported here):
:func:`history_summaries` for a whole series at once (the env), :class:`MarketHistory` and the
paper trader's compiled ring (``LiveHistory``) for one step at a time; all read only samples
at or before the current step. A step whose book is unknown (untrusted, or one side empty)
records NaN and contributes no change.

Inputs are plain typed state: one :class:`MarketState` per market (from a live OrderBook with
:meth:`MarketState.from_book`, or from the env's top-K arrays with
:meth:`MarketState.from_arrays`) and a :class:`PortfolioState`. The env can skip the per-market
objects. The observation is built in two pieces:
:func:`static_features` (offsets 0–48: flags, book, history, time; elementwise numpy, so the
env computes it once per tick of a whole recorded history; :func:`build_observation_batch`
computes one tick with its compiled twin in :mod:`apps.simulation.tick_features`, equal bit
for bit) and the compiled
:func:`apps.simulation.kernel.write_position_features` (offsets 49–53 and the portfolio
block). An env step therefore only copies a precomputed row and writes the account's part.
Position features of a flat market are +0.0 (never −0.0), so observations compare bit for
bit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from apps.simulation import kernel
from apps.simulation.books import BOOK_LEVELS, BookView, book_to_arrays, validate_book_arrays
from apps.simulation.history_features import (
    HISTORY_CAPACITY,
    MarketHistory,
    book_stats,
    history_block,
    history_summaries,
    series_values,
)
from apps.simulation.layout import (
    CHANGE_WINDOW,
    DEPTH_LEVELS,
    FEATURES_PER_MARKET,
    FEES_CAPITAL_SHARE,
    HISTORY_NAMES,
    HISTORY_WINDOWS,
    MARKET_FEATURE_NAMES,
    N_FEATURES,
    N_HISTORY,
    N_MARKETS,
    PORTFOLIO_FEATURE_NAMES,
    PORTFOLIO_FEATURES,
    PRICE_SCALE,
    SIZE_SCALE,
    UNREALIZED_CAPITAL_SHARE,
)
from apps.simulation.portfolio import MarketPosition, Portfolio
from apps.simulation.tick_features import tick_static_features

# The layout's names are part of this module's API (callers import them from here).
__all__ = [
    "BOOK_LEVELS",
    "CHANGE_WINDOW",
    "DEPTH_LEVELS",
    "FEATURES_PER_MARKET",
    "FEES_CAPITAL_SHARE",
    "HISTORY_CAPACITY",
    "HISTORY_NAMES",
    "HISTORY_WINDOWS",
    "MARKET_FEATURE_NAMES",
    "N_FEATURES",
    "N_HISTORY",
    "N_MARKETS",
    "OBSERVATION_SPEC_VERSION",
    "PORTFOLIO_FEATURES",
    "PORTFOLIO_FEATURE_NAMES",
    "UNREALIZED_CAPITAL_SHARE",
    "MarketBatch",
    "MarketHistory",
    "MarketState",
    "PortfolioState",
    "book_features",
    "book_stats",
    "build_observation",
    "build_observation_batch",
    "feature_names",
    "history_block",
    "history_summaries",
    "series_values",
    "static_features",
]

OBSERVATION_SPEC_VERSION = 1

# Column offsets, named so the builder reads like the layout above.
_C = {name: i for i, name in enumerate(MARKET_FEATURE_NAMES)}
_BOOK_FIRST, _BOOK_END = _C["has_yes_bid"], _C[HISTORY_NAMES[-1]] + 1  # zeroed when untrusted

# Scales (dollars unless noted). Inverses are precomputed: the builder runs every env step.
SPREAD_SCALE = 0.10
MICROPRICE_SCALE = 0.05
LEVEL_SIZE_LOG_SCALE = np.log1p(1e6)  # contracts
TOTAL_DEPTH_LOG_SCALE = np.log1p(1e7)  # contracts
GAP_SCALE = 0.10
MID_CHANGE_SCALES = (0.02, 0.05, 0.10, 0.20)
UPDATES_PER_STEP_SCALE = 50
MID_VOL_SCALE = 0.02
SPREAD_CHANGE_SCALE = 0.10
DEPTH_CHANGE_SCALE = np.log(100.0)
TIME_TO_CLOSE_LOG_SCALE = np.log1p(30 * 86_400.0)  # seconds
TIME_TO_CLOSE_NEAR_S = 3_600.0

_INV_MID_CHANGE = 1.0 / np.array(MID_CHANGE_SCALES)
_INV_UPDATES = 1.0 / np.log1p(UPDATES_PER_STEP_SCALE * np.array(HISTORY_WINDOWS, dtype=np.float64))
_INV_TAIL = 1.0 / np.array(
    [MID_VOL_SCALE, SPREAD_CHANGE_SCALE, DEPTH_CHANGE_SCALE, DEPTH_CHANGE_SCALE]
)
_SIZE_TO_CONTRACTS = 1.0 / SIZE_SCALE
_PRICE_TO_DOLLARS = 1.0 / PRICE_SCALE


def feature_names() -> list[str]:
    """The 545 feature names in observation order."""
    names = [f"m{i}.{name}" for i in range(N_MARKETS) for name in MARKET_FEATURE_NAMES]
    names += [f"portfolio.{name}" for name in PORTFOLIO_FEATURE_NAMES]
    return names


# -- inputs -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MarketState:
    """Everything the builder needs about one market at one step.

    Attributes:
        yes_px, no_px: (BOOK_LEVELS,) int64 bid prices in $0.0001, best first, 0 = empty.
        yes_sz, no_sz: (BOOK_LEVELS,) int64 bid sizes in 0.01 contract, 0 = empty.
        history: (N_HISTORY,) raw history values (:meth:`MarketHistory.summary`).
        seconds_to_close: seconds until the market closes (negative once past).
        trusted: False while the book is untrusted after a gap/resync.
        is_open: False once the market no longer trades.
        yes_held_e2, no_held_e2: contracts held, in 0.01 contract.
        cost_e6: cost basis of the contracts held, in $0.000001.
    """

    yes_px: np.ndarray
    yes_sz: np.ndarray
    no_px: np.ndarray
    no_sz: np.ndarray
    history: np.ndarray
    seconds_to_close: float
    trusted: bool = True
    is_open: bool = True
    yes_held_e2: int = 0
    no_held_e2: int = 0
    cost_e6: int = 0

    @classmethod
    def from_arrays(
        cls,
        yes_px: np.ndarray,
        yes_sz: np.ndarray,
        no_px: np.ndarray,
        no_sz: np.ndarray,
        *,
        history: np.ndarray,
        seconds_to_close: float,
        trusted: bool = True,
        is_open: bool = True,
        position: MarketPosition | None = None,
    ) -> MarketState:
        """From top-K arrays (the env's layout). Arrays are copied, so later writes to the
        env's buffers do not change the state."""
        arrays = [np.array(a, dtype=np.int64) for a in (yes_px, yes_sz, no_px, no_sz)]
        for a in arrays:
            if a.shape != (BOOK_LEVELS,):
                raise ValueError(f"book arrays must have shape ({BOOK_LEVELS},), got {a.shape}")
        validate_book_arrays(*arrays)
        history = np.array(history, dtype=np.float64)
        if history.shape != (N_HISTORY,) or not np.isfinite(history).all():
            raise ValueError(f"history must be ({N_HISTORY},) finite values, got {history!r}")
        pos = position or MarketPosition()
        return cls(
            *arrays,
            history=history,
            seconds_to_close=float(seconds_to_close),
            trusted=bool(trusted),
            is_open=bool(is_open),
            yes_held_e2=pos.yes_e2,
            no_held_e2=pos.no_e2,
            cost_e6=pos.cost_e6,
        )

    @classmethod
    def from_book(
        cls,
        book: BookView,
        *,
        history: np.ndarray,
        seconds_to_close: float,
        trusted: bool = True,
        is_open: bool = True,
        position: MarketPosition | None = None,
    ) -> MarketState:
        """From a live OrderBook (or any BookView): its top ``BOOK_LEVELS`` levels per side."""
        return cls.from_arrays(
            *book_to_arrays(book, BOOK_LEVELS),
            history=history,
            seconds_to_close=seconds_to_close,
            trusted=trusted,
            is_open=is_open,
            position=position,
        )


@dataclass(slots=True)
class MarketBatch:
    """The builder's input for all ``N_MARKETS`` slots as arrays (row = slot).

    Books are stored side by side: ``px[slot, 0]`` / ``sz[slot, 0]`` are the YES ladder and
    ``px[slot, 1]`` / ``sz[slot, 1]`` the NO ladder, best first (so one numpy operation
    treats both sides). The env keeps one batch and writes rows of its history arrays into it
    each step; the paper trader builds one from :class:`MarketState` objects.

    Attributes:
        px: (N_MARKETS, 2, BOOK_LEVELS) int64 bid prices in $0.0001, 0 = empty slot.
        sz: (N_MARKETS, 2, BOOK_LEVELS) int64 bid sizes in 0.01 contract, 0 = empty slot.
        history: (N_MARKETS, N_HISTORY) float64 raw history values.
        seconds_to_close: (N_MARKETS,) float64 seconds (negative once past).
        present, trusted, is_open: (N_MARKETS,) bool.
        yes_held_e2, no_held_e2: (N_MARKETS,) int64 contracts held, in 0.01 contract.
        cost_e6: (N_MARKETS,) int64 cost basis of the contracts held, in $0.000001.
    """

    px: np.ndarray
    sz: np.ndarray
    history: np.ndarray
    seconds_to_close: np.ndarray
    present: np.ndarray
    trusted: np.ndarray
    is_open: np.ndarray
    yes_held_e2: np.ndarray
    no_held_e2: np.ndarray
    cost_e6: np.ndarray

    @classmethod
    def empty(cls) -> MarketBatch:
        """All slots absent."""
        book = (N_MARKETS, 2, BOOK_LEVELS)
        return cls(
            px=np.zeros(book, np.int64),
            sz=np.zeros(book, np.int64),
            history=np.zeros((N_MARKETS, N_HISTORY)),
            seconds_to_close=np.zeros(N_MARKETS),
            present=np.zeros(N_MARKETS, bool),
            trusted=np.zeros(N_MARKETS, bool),
            is_open=np.zeros(N_MARKETS, bool),
            yes_held_e2=np.zeros(N_MARKETS, np.int64),
            no_held_e2=np.zeros(N_MARKETS, np.int64),
            cost_e6=np.zeros(N_MARKETS, np.int64),
        )

    def set(self, slot: int, state: MarketState | None) -> None:
        """Write one slot (None clears it)."""
        if state is None:
            self.present[slot] = False
            return
        self.px[slot, 0] = state.yes_px
        self.px[slot, 1] = state.no_px
        self.sz[slot, 0] = state.yes_sz
        self.sz[slot, 1] = state.no_sz
        self.history[slot] = state.history
        self.seconds_to_close[slot] = state.seconds_to_close
        self.present[slot] = True
        self.trusted[slot] = state.trusted
        self.is_open[slot] = state.is_open
        self.yes_held_e2[slot] = state.yes_held_e2
        self.no_held_e2[slot] = state.no_held_e2
        self.cost_e6[slot] = state.cost_e6

    def set_position(self, slot: int, position: MarketPosition) -> None:
        """Write one slot's holdings from the portfolio."""
        self.yes_held_e2[slot] = position.yes_e2
        self.no_held_e2[slot] = position.no_e2
        self.cost_e6[slot] = position.cost_e6

    @classmethod
    def from_states(cls, states: Sequence[MarketState | None]) -> MarketBatch:
        """Slots in order; fewer than ``N_MARKETS`` states leave the rest absent."""
        if len(states) > N_MARKETS:
            raise ValueError(f"at most {N_MARKETS} markets, got {len(states)}")
        batch = cls.empty()
        for slot, state in enumerate(states):
            batch.set(slot, state)
        return batch


@dataclass(frozen=True, slots=True)
class PortfolioState:
    """Account-level inputs.

    Attributes:
        cash_e6: cash in $0.000001.
        initial_cash_e6: starting cash in $0.000001 (the scale of money features; > 0).
        exposure_e6: total cost basis of open contracts in $0.000001.
        fees_paid_e4: fees paid so far in $0.0001.
        drawdown: fraction of the equity peak lost (0..1).
        progress: episode progress (0 at reset, 1 at the last step).
        max_position_e2: the per-market position limit in 0.01 contract (scale of positions).
    """

    cash_e6: int
    initial_cash_e6: int
    exposure_e6: int = 0
    fees_paid_e4: int = 0
    drawdown: float = 0.0
    progress: float = 0.0
    max_position_e2: int = 10_000

    def __post_init__(self) -> None:
        if self.initial_cash_e6 <= 0 or self.max_position_e2 <= 0:
            raise ValueError(
                "initial_cash_e6 and max_position_e2 must be positive (feature scales)"
            )

    @classmethod
    def from_portfolio(cls, portfolio: Portfolio, *, progress: float) -> PortfolioState:
        """Read a :class:`Portfolio` (drawdown as of its last ``record_equity``).

        Args:
            portfolio: the account.
            progress: episode progress in [0, 1] (steps taken / episode length).
        """
        return cls(
            cash_e6=portfolio.cash_e6,
            initial_cash_e6=portfolio.initial_cash_e6,
            exposure_e6=portfolio.exposure_e6(),
            fees_paid_e4=portfolio.fees_paid_e4,
            drawdown=portfolio.drawdown,
            progress=progress,
            max_position_e2=portfolio.limits.max_position_e2,
        )


# -- the builder ----------------------------------------------------------------------------

_M = N_MARKETS
_TOP = DEPTH_LEVELS
N_BOOK_FEATURES = _BOOK_END - _BOOK_FIRST  # 44: offsets 3..46, what book_features() returns
# Offsets inside the book block (feature offset − _BOOK_FIRST).
_B = {name: _C[name] - _BOOK_FIRST for name in MARKET_FEATURE_NAMES[_BOOK_FIRST:_BOOK_END]}
_B_SIZES = _B["yes_size_1"]  # yes_size_1..5 then no_size_1..5
_B_GAPS = _B["yes_gap_2"]  # yes_gap_2..5 then no_gap_2..5
_B_IMBALANCE = _B["imbalance_5"]  # imbalance_5, imbalance_10
_B_DEPTH = _B[f"yes_depth_{BOOK_LEVELS}"]  # yes_depth_10, no_depth_10
_B_HIST = _B[HISTORY_NAMES[0]]
_C_TIME = _C["time_to_close_log"]  # time_to_close_log, time_to_close_1h
_INV_HISTORY = np.concatenate((_INV_MID_CHANGE, np.zeros(len(HISTORY_WINDOWS)), _INV_TAIL))
_INV_LEVEL_SIZE = 1.0 / LEVEL_SIZE_LOG_SCALE
_INV_TOTAL_DEPTH = 1.0 / TOTAL_DEPTH_LOG_SCALE
_IMBALANCE_DEPTHS = np.array([0, _TOP - 1, BOOK_LEVELS - 1])  # cumulative-size columns
_TINY = 1e-12  # a denominator guard; sizes are multiples of 0.01 contract
# The scales tick_static_features reads, in its order.
_TICK_SCALES = np.array(
    [
        1.0 / SPREAD_SCALE,
        0.5 / MICROPRICE_SCALE,
        1 / GAP_SCALE,
        _INV_LEVEL_SIZE,
        _INV_TOTAL_DEPTH,
        1.0 / TIME_TO_CLOSE_LOG_SCALE,
        1.0 / TIME_TO_CLOSE_NEAR_S,
        *_INV_HISTORY,
        *_INV_UPDATES,
    ]
)


def book_features(
    px: np.ndarray,
    sz: np.ndarray,
    history: np.ndarray,
    trusted: np.ndarray,
    *,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """The book and history block of the per-market features (offsets 3–46), any batch shape.

    Elementwise over the leading axes: :func:`static_features` calls it once for a whole
    recorded history (shape (T, N_MARKETS, ...), the env) or per tick (the paper trader), and
    both give the same bits.

    Args:
        px: (..., 2, BOOK_LEVELS) integer bid prices in $0.0001; [..., 0, :] YES, [..., 1, :] NO.
        sz: (..., 2, BOOK_LEVELS) integer bid sizes in 0.01 contract; 0 marks an empty slot.
        history: (..., N_HISTORY) raw history values (update counts ≥ 0).
        trusted: (...) bool; untrusted rows are all zeros.
        out: (..., N_BOOK_FEATURES) float64 array to write into (every column is written).

    Returns:
        (..., N_BOOK_FEATURES) float64, normalised but not yet clipped.
    """
    px = px * _PRICE_TO_DOLLARS
    sz = sz * _SIZE_TO_CONTRACTS
    lead = px.shape[:-2]
    b = np.empty((*lead, N_BOOK_FEATURES)) if out is None else out

    best = px[..., 0]  # (yes bid, no bid)
    has = sz[..., 0] > 0  # (has yes bid, has no bid)
    two = has[..., 0] & has[..., 1]
    yes_bid = best[..., 0]
    no_bid = best[..., 1]
    b[..., 0:2] = has
    b[..., 2] = (yes_bid - no_bid) * two  # 2·mid − 1 = yes bid + (1 − no bid) − 1
    spread = (1.0 - yes_bid - no_bid) * two
    b[..., 3] = spread * (1.0 / SPREAD_SCALE)
    # yes_bid, yes_ask, no_bid, no_ask as 2p − 1 are (u, −v, v, −u) with u, v the bids':
    # an implied ask is 1 − the other side's bid, shown when that side has a bid.
    bids = (2.0 * best - 1.0) * has
    b[..., 4:8:2] = bids
    b[..., 5:9:2] = -bids[..., ::-1]
    # Size imbalance (YES − NO) / (YES + NO) over the best level, the top 5 and all levels.
    cum = np.cumsum(sz, axis=-1)[..., _IMBALANCE_DEPTHS]  # (..., side, 3)
    imbalance = (cum[..., 0, :] - cum[..., 1, :]) / np.maximum(cum.sum(axis=-2), _TINY)
    # Size-weighted microprice − mid = spread × imbalance_1 / 2.
    b[..., 8] = spread * imbalance[..., 0] * (0.5 / MICROPRICE_SCALE)
    b[..., 9] = imbalance[..., 0]
    b[..., _B_IMBALANCE : _B_IMBALANCE + 2] = imbalance[..., 1:]
    b[..., _B_DEPTH : _B_DEPTH + 2] = np.log1p(cum[..., 2]) * _INV_TOTAL_DEPTH

    sizes = np.log1p(sz[..., :_TOP])
    sizes *= _INV_LEVEL_SIZE
    b[..., _B_SIZES : _B_SIZES + 2 * _TOP] = sizes.reshape(*lead, 2 * _TOP)
    gaps = np.where(sz[..., 1:_TOP] > 0, (px[..., :1] - px[..., 1:_TOP]) * (1 / GAP_SCALE), 1.0)
    b[..., _B_GAPS : _B_GAPS + 2 * (_TOP - 1)] = gaps.reshape(*lead, 2 * (_TOP - 1))

    b[..., _B_HIST : _B_HIST + N_HISTORY] = history * _INV_HISTORY
    b[..., _B_HIST + 4 : _B_HIST + 8] = np.log1p(history[..., 4:8]) * _INV_UPDATES
    b *= np.asarray(trusted)[..., None]  # a stale book must not look informative
    return b


def static_features(
    px: np.ndarray,
    sz: np.ndarray,
    history: np.ndarray,
    trusted: np.ndarray,
    present: np.ndarray,
    is_open: np.ndarray,
    seconds_to_close: np.ndarray,
    *,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """The per-market features that do not depend on the account (offsets 0–48), any batch
    shape, as clipped float32; the position offsets 49–53 are left 0.

    Elementwise over the leading axes, so the env computes it once for a whole recorded
    history (shape (T, N_MARKETS, ...)) and the paper trader per tick (shape (N_MARKETS, ...)):
    the same inputs give the same bits.

    Args:
        px, sz: (..., 2, BOOK_LEVELS) integer bid prices ($0.0001) and sizes (0.01 contract).
        history: (..., N_HISTORY) raw history values.
        trusted, present, is_open: (...) bool.
        seconds_to_close: (...) float64 seconds (negative once past, NaN = unknown → 0).
        out: (..., FEATURES_PER_MARKET) float32 to write into.

    Raises:
        ValueError: naming the features that came out NaN (non-finite inputs).
    """
    lead = np.shape(trusted)
    f = np.zeros((*lead, FEATURES_PER_MARKET))
    book_features(px, sz, history, trusted, out=f[..., _BOOK_FIRST:_BOOK_END])
    f[..., 0] = 1.0
    f[..., 1] = trusted
    f[..., 2] = is_open
    # Past, unknown (NaN) and −0.0 all become +0.0. Not np.fmax: its SIMD and scalar loops
    # disagree on the sign of fmax(−0.0, 0.0), so a per-history and a per-tick call could
    # differ in the sign of a zero.
    seconds = np.where(seconds_to_close > 0.0, seconds_to_close, 0.0)
    f[..., _C_TIME] = np.log1p(seconds) * (1.0 / TIME_TO_CLOSE_LOG_SCALE)
    f[..., _C_TIME + 1] = seconds * (1.0 / TIME_TO_CLOSE_NEAR_S)
    f *= np.asarray(present)[..., None]  # absent slots are all zeros
    if np.isnan(f).any():
        where = np.argwhere(np.isnan(f))[:5]
        # Slot-qualified names (m0.mid) when the batch has a slot axis, as in feature_names().
        bad = [
            f"m{w[-2]}.{MARKET_FEATURE_NAMES[w[-1]]}" if f.ndim > 1 else MARKET_FEATURE_NAMES[w[-1]]
            for w in where
        ]
        raise ValueError(f"observation has NaN features (non-finite inputs): {bad}")
    if out is None:
        out = np.empty(f.shape, dtype=np.float32)
    out[...] = f
    np.clip(out, -1.0, 1.0, out=out)
    return out


def build_observation_batch(batch: MarketBatch, portfolio: PortfolioState) -> np.ndarray:
    """The (545,) float32 observation of a :class:`MarketBatch` (a fresh array).

    The static part comes from :func:`~apps.simulation.tick_features.tick_static_features`
    (the compiled twin of :func:`static_features` for one tick, equal bit for bit), the
    position and portfolio part from :func:`apps.simulation.kernel.write_position_features`,
    which the env uses too.

    Args:
        batch: per-slot book, history, time and position arrays.
        portfolio: account-level values.
    """
    out = np.zeros(N_FEATURES, dtype=np.float32)
    static = out[: _M * FEATURES_PER_MARKET].reshape(_M, FEATURES_PER_MARKET)
    args = (
        batch.px,
        batch.sz,
        batch.history,
        batch.trusted,
        batch.present,
        batch.is_open,
        batch.seconds_to_close,
    )
    if tick_static_features(*args, _TICK_SCALES, static):
        static_features(*args, out=static)  # names the NaN features in its error
    kernel.write_position_features(
        out,
        batch.present,
        batch.yes_held_e2,
        batch.no_held_e2,
        batch.cost_e6,
        np.ascontiguousarray(batch.px[:, 0, 0]),
        np.ascontiguousarray(batch.px[:, 1, 0]),
        portfolio.max_position_e2,
        float(portfolio.initial_cash_e6),
        portfolio.cash_e6,
        portfolio.exposure_e6,
        portfolio.fees_paid_e4,
        float(portfolio.drawdown),
        float(portfolio.progress),
    )
    return out


def build_observation(
    markets: Sequence[MarketState | None], portfolio: PortfolioState
) -> np.ndarray:
    """The (545,) float32 observation (a fresh array) for up to ``N_MARKETS`` markets.

    Args:
        markets: slot order; None or a short list leaves slots absent (zero-padded).
        portfolio: account-level values.
    """
    return build_observation_batch(MarketBatch.from_states(markets), portfolio)
