"""One simulated account, read-only: a view over the kernel's ``pos`` / ``acct`` arrays.

The rules that change an account (fills, netting, fees, limits, settlement) are the compiled
:mod:`apps.simulation.kernel`; the env and the paper trader keep their account in its int64
arrays (layout in :mod:`apps.simulation.layout`) and hand out a :class:`Portfolio` to read it.

Units, all exact integers:

* cash, cost basis and P&L in **$0.000001** (``_e6``). A fill's money is
  ``price_e4 × size_e2`` (a $0.0001 price times 0.01 contract), which is a whole number of
  micro-dollars but not always of $0.0001 (0.0650 × 2.95 = $0.191750); keeping cash in ``_e6``
  means no rounding but Kalshi's own (fees).
* trade fees in $0.0001 (``fees_e4``: each fill's fee is rounded up to $0.0001) and net
  rounding fees in $0.000001 (``rounding_fees_e6``: what rounding each fill's balance change
  to the account precision kept after the per-order cent refunds; :mod:`apps.simulation.fees`);
* positions in 0.01 contract (``_e2``);
* marks as **twice** the YES mid in $0.0001 (``mark_e4x2`` = best YES bid + implied YES ask,
  what :meth:`OrderBook.mid_e4x2` returns), so a half-tick mid stays an integer.

A market position holds YES or NO contracts, never both: Kalshi nets a YES and a NO of the same
market into $1, so after every fill matched pairs are redeemed for $1 each. We never short.
Cost basis is the average cost of the contracts held; the accounting identity

    equity − initial cash = realized P&L + unrealized P&L − trade fees − rounding fees

holds exactly at every step (tested).

**Exposure** of a market is the cost basis of its open contracts: what is lost if they expire
worthless. **Capital** is cash + total exposure (equity valued at cost, independent of marks).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from fractions import Fraction

import numpy as np

from apps.simulation.fees import as_fraction
from apps.simulation.layout import (
    A_CASH,
    A_EXPOSURE,
    A_FEES,
    A_REALIZED,
    A_ROUNDING,
    ACCT_SIZE,
    P_FEES,
    P_NO,
    P_NO_COST,
    P_REALIZED,
    P_ROUNDING,
    P_SETTLED,
    P_TOUCHED,
    P_YES,
    P_YES_COST,
    POS_COLUMNS,
    PRICE_SCALE,
)

ONE_DOLLAR_E4 = PRICE_SCALE


class SettlementResult(StrEnum):
    YES = "yes"
    NO = "no"
    SCALAR = "scalar"


@dataclass(frozen=True, slots=True)
class RiskLimits:
    """Risk limits (Kalshi's own per-market limits are not published in the API: configure).

    A buy that would leave a limit broken is refused unless it lowers that measure (a sell
    or a netting buy is never blocked by a limit, only by cash).

    Attributes:
        max_position_e2: contracts held in one market (YES or NO), in 0.01 contract.
        max_market_share: one market's exposure ≤ this × capital (concentration), in (0, 1].
        max_exposure_share: total exposure ≤ this × capital, in (0, 1] (1 = cash is the limit).
    """

    max_position_e2: int = 10_000  # 100 contracts
    max_market_share: Fraction = field(default=Fraction(1, 2))
    max_exposure_share: Fraction = field(default=Fraction(1))

    def __post_init__(self) -> None:
        if self.max_position_e2 <= 0:
            raise ValueError(f"max_position_e2 must be positive, got {self.max_position_e2}")
        for name in ("max_market_share", "max_exposure_share"):
            value = as_fraction(getattr(self, name))
            if not 0 < value <= 1:
                raise ValueError(f"{name} must be in (0, 1], got {value}")
            object.__setattr__(self, name, value)


def settlement_price_e4(result: SettlementResult | str, value_e4: int | None = None) -> int:
    """What one YES contract pays at settlement, in $0.0001 (a NO pays 10_000 − that).

    Args:
        result: ``yes`` ($1), ``no`` ($0) or ``scalar`` (``value_e4``).
        value_e4: ``settlement_value_dollars`` in $0.0001, required for ``scalar``.
    """
    result = SettlementResult(result)
    if result is SettlementResult.YES:
        return ONE_DOLLAR_E4
    if result is SettlementResult.NO:
        return 0
    if value_e4 is None or not 0 <= value_e4 <= ONE_DOLLAR_E4:
        raise ValueError(f"a scalar settlement needs a value in [0, 10000], got {value_e4}")
    return value_e4


@dataclass(frozen=True, slots=True)
class MarketPosition:
    """One market's holdings and P&L, as read from a ``pos`` row (units in the module
    docstring)."""

    yes_e2: int = 0
    no_e2: int = 0
    yes_cost_e6: int = 0
    no_cost_e6: int = 0
    fees_e4: int = 0
    realized_e6: int = 0
    settled: bool = False
    rounding_fees_e6: int = 0

    @property
    def held_e2(self) -> int:
        """Contracts held (YES or NO; never both after netting), in 0.01 contract."""
        return self.yes_e2 + self.no_e2

    @property
    def net_e2(self) -> int:
        """YES held − NO held, in 0.01 contract (positive = long YES)."""
        return self.yes_e2 - self.no_e2

    @property
    def cost_e6(self) -> int:
        """Cost basis of the contracts held (the market's exposure), in $0.000001."""
        return self.yes_cost_e6 + self.no_cost_e6

    @property
    def avg_entry_e4(self) -> Fraction | None:
        """Average price paid for the contracts held, in $0.0001 of the held contract."""
        held = self.held_e2
        return Fraction(self.cost_e6, held) if held else None

    def value_e6x2(self, mark_e4x2: int | None) -> int:
        """Twice the value of the holdings in $0.000001, at a YES mid given as ``mark_e4x2``
        (None marks at cost)."""
        if mark_e4x2 is None:
            return 2 * self.cost_e6
        return self.yes_e2 * mark_e4x2 + self.no_e2 * (2 * ONE_DOLLAR_E4 - mark_e4x2)

    def unrealized_e6(self, mark_e4x2: int | None) -> Fraction:
        """Value at the mark − cost basis, in $0.000001."""
        return Fraction(self.value_e6x2(mark_e4x2) - 2 * self.cost_e6, 2)


class EquityPeak:
    """The equity peak and drawdown of an account (what ``record`` saw), in exact integers.

    Equity comes as twice its value in $0.000001 (``kernel.equity_x2``); the drawdown is
    ``(peak − equity) / peak``, one correctly rounded int / int division.
    """

    __slots__ = ("drawdown", "max_drawdown", "peak_x2")

    def __init__(self, initial_cash_e6: int) -> None:
        self.reset(initial_cash_e6)

    def reset(self, initial_cash_e6: int) -> None:
        self.peak_x2 = 2 * initial_cash_e6
        self.drawdown = 0.0  # fraction of the peak lost, at the last record()
        self.max_drawdown = 0.0

    def record(self, equity_x2: int) -> float:
        """Track the peak; returns the current drawdown."""
        if equity_x2 > self.peak_x2:
            self.peak_x2 = equity_x2
        peak = self.peak_x2
        self.drawdown = (peak - equity_x2) / peak if peak > 0 else 0.0
        if self.drawdown > self.max_drawdown:
            self.max_drawdown = self.drawdown
        return self.drawdown


def new_account(n_markets: int, cash_e6: int) -> tuple[np.ndarray, np.ndarray]:
    """Fresh ``(pos, acct)`` arrays: no positions, ``cash_e6`` in cash."""
    if cash_e6 < 0:
        raise ValueError(f"starting cash must be ≥ 0, got {cash_e6}")
    pos = np.zeros((n_markets, POS_COLUMNS), dtype=np.int64)
    acct = np.zeros(ACCT_SIZE, dtype=np.int64)
    acct[A_CASH] = cash_e6
    return pos, acct


class Portfolio:
    """A read-only view of one account: cash, per-market positions, fees, P&L, drawdown.

    It reads the arrays it is given as they are now (a view of a live account changes as the
    account does); nothing here changes them.
    """

    __slots__ = ("_acct", "_index", "_peak", "_pos", "initial_cash_e6", "limits", "markets")

    def __init__(
        self,
        *,
        markets: Sequence[str],
        pos: np.ndarray,
        acct: np.ndarray,
        initial_cash_e6: int,
        limits: RiskLimits,
        peak: EquityPeak | None = None,
    ) -> None:
        """Args:
        markets: the market of each ``pos`` row.
        pos, acct: the kernel's account arrays (``layout.P_*`` columns, ``layout.A_*``).
        initial_cash_e6: the starting cash in $0.000001.
        limits: the account's risk limits.
        peak: the equity peak tracker (None: no equity recorded, drawdown 0).
        """
        self.markets = list(markets)
        self._index = {market: j for j, market in enumerate(self.markets)}
        self._pos = pos
        self._acct = acct
        self.initial_cash_e6 = initial_cash_e6
        self.limits = limits
        self._peak = peak if peak is not None else EquityPeak(initial_cash_e6)

    @classmethod
    def of(
        cls,
        *,
        cash_e6: int,
        positions: Mapping[str, MarketPosition] | None = None,
        initial_cash_e6: int | None = None,
        limits: RiskLimits | None = None,
    ) -> Portfolio:
        """A view over fresh arrays holding ``positions`` and ``cash_e6`` (for reports and
        tests that need an account without trading one)."""
        positions = dict(positions or {})
        markets = list(positions)
        pos, acct = new_account(len(markets), cash_e6)
        for j, p in enumerate(positions.values()):
            pos[j] = (
                p.yes_e2, p.no_e2, p.yes_cost_e6, p.no_cost_e6, p.fees_e4, p.realized_e6,
                int(p.settled), 1, p.rounding_fees_e6,
            )  # fmt: skip
        acct[A_EXPOSURE] = pos[:, P_YES_COST].sum() + pos[:, P_NO_COST].sum()
        acct[A_FEES] = pos[:, P_FEES].sum()
        acct[A_ROUNDING] = pos[:, P_ROUNDING].sum()
        acct[A_REALIZED] = pos[:, P_REALIZED].sum()
        initial = cash_e6 if initial_cash_e6 is None else initial_cash_e6
        return cls(
            markets=markets,
            pos=pos,
            acct=acct,
            initial_cash_e6=initial,
            limits=limits or RiskLimits(),
        )

    # -- account ---------------------------------------------------------------------------

    @property
    def cash_e6(self) -> int:
        return int(self._acct[A_CASH])

    @property
    def fees_paid_e4(self) -> int:
        """Trade fees paid, in $0.0001."""
        return int(self._acct[A_FEES])

    @property
    def rounding_fees_e6(self) -> int:
        """Net rounding fees paid (after the per-order cent refunds), in $0.000001."""
        return int(self._acct[A_ROUNDING])

    @property
    def realized_e6(self) -> int:
        return int(self._acct[A_REALIZED])

    @property
    def drawdown(self) -> float:
        """Fraction of the equity peak lost at the last recorded equity."""
        return self._peak.drawdown

    @property
    def max_drawdown(self) -> float:
        return self._peak.max_drawdown

    @property
    def peak_equity_e6(self) -> Fraction:
        return Fraction(self._peak.peak_x2, 2)

    @property
    def capital_e6(self) -> int:
        """Cash + total exposure (equity valued at cost), in $0.000001."""
        return self.cash_e6 + self.exposure_e6()

    def exposure_e6(self, market: str | None = None) -> int:
        """Cost basis of open contracts in one market, or in all, in $0.000001."""
        if market is None:
            return int(self._acct[A_EXPOSURE])
        j = self._index.get(market)
        if j is None:
            return 0
        return int(self._pos[j, P_YES_COST] + self._pos[j, P_NO_COST])

    # -- positions -------------------------------------------------------------------------

    def position(self, market: str) -> MarketPosition:
        """The market's position (an empty one if it never traded)."""
        j = self._index.get(market)
        if j is None:
            return MarketPosition()
        return _position(self._pos[j].tolist())

    @property
    def positions(self) -> dict[str, MarketPosition]:
        """Every market with a position record (it traded or settled)."""
        return dict(iter(self))

    def __iter__(self) -> Iterator[tuple[str, MarketPosition]]:
        for market, row in zip(self.markets, self._pos.tolist(), strict=True):
            if row[P_TOUCHED]:
                yield market, _position(row)

    def held_e2(self) -> np.ndarray:
        """(n_markets,) contracts held per market (row order), a fresh array."""
        return self._pos[:, P_YES] + self._pos[:, P_NO]

    # -- marked to market ------------------------------------------------------------------

    def equity_e6x2(self, marks_e4x2: Mapping[str, int | None]) -> int:
        """Twice the equity (cash + holdings at the marks) in $0.000001, as an integer.

        Args:
            marks_e4x2: market -> twice its YES mid in $0.0001; a missing market or None marks
                that market at cost.
        """
        total_x2 = 2 * self.cash_e6
        for market, pos in self:
            total_x2 += pos.value_e6x2(marks_e4x2.get(market))
        return total_x2

    def equity_e6(self, marks_e4x2: Mapping[str, int | None]) -> Fraction:
        """Cash + holdings at the marks, in $0.000001 (exact)."""
        return Fraction(self.equity_e6x2(marks_e4x2), 2)

    def unrealized_e6(self, marks_e4x2: Mapping[str, int | None]) -> Fraction:
        """Σ value at the marks − cost basis, in $0.000001."""
        return self.equity_e6(marks_e4x2) - self.capital_e6


def _position(row: list[int]) -> MarketPosition:
    return MarketPosition(
        yes_e2=row[P_YES],
        no_e2=row[P_NO],
        yes_cost_e6=row[P_YES_COST],
        no_cost_e6=row[P_NO_COST],
        fees_e4=row[P_FEES],
        realized_e6=row[P_REALIZED],
        settled=bool(row[P_SETTLED]),
        rounding_fees_e6=row[P_ROUNDING],
    )
