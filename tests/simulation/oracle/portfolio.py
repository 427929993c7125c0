"""The oracle's account: cash, positions, fees, P&L, settlement and risk limits, mutable.

Readable reference for ``apps.simulation.kernel`` (tests only: the product keeps accounts in
the kernel's arrays and reads them through ``apps.simulation.portfolio.Portfolio``).

Units, all exact integers:

* cash, cost basis and P&L in **$0.000001** (``_e6``). A fill's money is
  ``price_e4 × size_e2`` (a $0.0001 price times 0.01 contract), which is a whole number of
  micro-dollars but not always of $0.0001 (0.0650 × 2.95 = $0.191750); keeping cash in ``_e6``
  means no rounding anywhere.
* trade fees in $0.0001 (``_e4``, each fill's rounded up to $0.0001) and net rounding fees in
  $0.000001 (``rounding_fees_e6``), as :mod:`tests.simulation.oracle.fees` charges them;
* positions in 0.01 contract (``_e2``);
* marks as **twice** the YES mid in $0.0001 (``mark_e4x2`` = best YES bid + implied YES ask,
  what :meth:`OrderBook.mid_e4x2` returns), so a half-tick mid stays an integer.

A market position holds YES or NO contracts, never both: Kalshi nets a YES and a NO of the same
market into $1 (buying NO at q while long YES is economically selling YES at 1 − q), so after
every fill matched pairs are redeemed for $1 each. We never short: selling needs holdings.

Cost basis is the average cost of the contracts held. Selling part of a position removes
``cost × sold / held`` (rounded down to a micro-dollar, the remainder stays with the contracts
still held, so no money is created or lost). The accounting identity

    equity − initial cash = realized P&L + unrealized P&L − trade fees − rounding fees

holds exactly at every step (tested).

**Exposure** of a market is the cost basis of its open contracts: what is lost if they expire
worthless. **Capital** is cash + total exposure (equity valued at cost, independent of marks).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from fractions import Fraction

from apps.simulation.layout import PRICE_SCALE
from apps.simulation.portfolio import RiskLimits, SettlementResult, settlement_price_e4
from tests.simulation.oracle.fills import Contract, Fill, Side

__all__ = [
    "LimitBreach",
    "LimitError",
    "MarketPosition",
    "Portfolio",
    "RiskLimits",
    "SettlementResult",
    "settlement_price_e4",
]

ONE_DOLLAR_E4 = PRICE_SCALE
_E6_PER_E4 = 100  # $0.0001 = 100 × $0.000001


class LimitBreach(StrEnum):
    """Why a fill may not be applied (names are stable: they are logged and tested)."""

    SETTLED = "settled"  # the market has settled; nothing trades any more
    NOT_HELD = "not_held"  # selling more than is held (we never short)
    CASH = "cash"  # cash would go negative
    POSITION = "position"  # contracts held in the market above max_position_e2
    CONCENTRATION = "concentration"  # the market's exposure above max_market_share × capital
    EXPOSURE = "exposure"  # total exposure above max_exposure_share × capital


class LimitError(ValueError):
    """A fill that would break a rule; ``breaches`` lists which."""

    def __init__(self, market: str, breaches: list[LimitBreach]) -> None:
        self.market = market
        self.breaches = breaches
        super().__init__(f"{market}: fill breaks {', '.join(b.value for b in breaches)}")


@dataclass(slots=True)
class MarketPosition:
    """One market's holdings and P&L (see the module docstring for units)."""

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


def _after_fill(pos: MarketPosition, fill: Fill) -> tuple[MarketPosition, int]:
    """The position after a fill and the cash change (e6); ``pos`` is not modified."""
    new = MarketPosition(
        yes_e2=pos.yes_e2,
        no_e2=pos.no_e2,
        yes_cost_e6=pos.yes_cost_e6,
        no_cost_e6=pos.no_cost_e6,
        fees_e4=pos.fees_e4 + fill.fee_e4,
        realized_e6=pos.realized_e6,
        settled=pos.settled,
        rounding_fees_e6=pos.rounding_fees_e6 + fill.rounding_e6,
    )
    size = fill.filled_e2
    cash = fill.cash_delta_e6
    is_yes = fill.contract is Contract.YES
    if fill.side is Side.BUY:
        if is_yes:
            new.yes_e2 += size
            new.yes_cost_e6 += fill.notional_e6
        else:
            new.no_e2 += size
            new.no_cost_e6 += fill.notional_e6
        pairs = min(new.yes_e2, new.no_e2)
        if pairs:
            # Kalshi nets YES against NO: each matched pair is redeemed for $1.
            yes_out = new.yes_cost_e6 * pairs // new.yes_e2
            no_out = new.no_cost_e6 * pairs // new.no_e2
            payout = pairs * ONE_DOLLAR_E4
            new.yes_e2 -= pairs
            new.no_e2 -= pairs
            new.yes_cost_e6 -= yes_out
            new.no_cost_e6 -= no_out
            new.realized_e6 += payout - yes_out - no_out
            cash += payout
    else:
        held = new.yes_e2 if is_yes else new.no_e2
        cost = new.yes_cost_e6 if is_yes else new.no_cost_e6
        removed = cost * size // held if held else 0
        if is_yes:
            new.yes_e2 -= size
            new.yes_cost_e6 -= removed
        else:
            new.no_e2 -= size
            new.no_cost_e6 -= removed
        new.realized_e6 += fill.notional_e6 - removed
    return new, cash


class Portfolio:
    """One account: cash, per-market positions, fees, P&L, drawdown, limits."""

    def __init__(self, *, cash_e6: int, limits: RiskLimits | None = None) -> None:
        """Args:
        cash_e6: starting cash in $0.000001 (e.g. 1_000 dollars = 1_000_000_000).
        limits: risk limits (defaults to :class:`RiskLimits`).
        """
        if cash_e6 < 0:
            raise ValueError(f"starting cash must be ≥ 0, got {cash_e6}")
        self.initial_cash_e6 = cash_e6
        self.cash_e6 = cash_e6
        self.limits = limits or RiskLimits()
        self.positions: dict[str, MarketPosition] = {}
        # Σ cost basis, kept up to date by apply_fill and settle (the only writers of
        # positions): the env asks for it several times per market per step.
        self._exposure_e6 = 0
        self.fees_paid_e4 = 0
        self.rounding_fees_e6 = 0
        self.realized_e6 = 0
        self.peak_equity_e6: Fraction = Fraction(cash_e6)
        self.drawdown = 0.0  # fraction of the peak lost, at the last record_equity()
        self.max_drawdown = 0.0

    @classmethod
    def restore(
        cls,
        *,
        initial_cash_e6: int,
        cash_e6: int,
        limits: RiskLimits | None,
        positions: Mapping[str, MarketPosition],
        fees_paid_e4: int,
        realized_e6: int,
        peak_equity_e6: Fraction,
        drawdown: float,
        max_drawdown: float,
    ) -> Portfolio:
        """An account rebuilt from its parts (the env keeps them in arrays)."""
        portfolio = cls(cash_e6=initial_cash_e6, limits=limits)
        portfolio.cash_e6 = cash_e6
        portfolio.positions = dict(positions)
        portfolio._exposure_e6 = sum(pos.cost_e6 for pos in positions.values())
        portfolio.fees_paid_e4 = fees_paid_e4
        portfolio.rounding_fees_e6 = sum(pos.rounding_fees_e6 for pos in positions.values())
        portfolio.realized_e6 = realized_e6
        portfolio.peak_equity_e6 = peak_equity_e6
        portfolio.drawdown = drawdown
        portfolio.max_drawdown = max_drawdown
        return portfolio

    # -- reading ---------------------------------------------------------------------------

    def position(self, market: str) -> MarketPosition:
        """The market's position (an empty one if it never traded; not stored)."""
        return self.positions.get(market) or MarketPosition()

    def __iter__(self) -> Iterator[tuple[str, MarketPosition]]:
        return iter(self.positions.items())

    def exposure_e6(self, market: str | None = None) -> int:
        """Cost basis of open contracts in one market, or in all, in $0.000001."""
        if market is not None:
            pos = self.positions.get(market)
            return pos.cost_e6 if pos else 0
        return self._exposure_e6

    @property
    def capital_e6(self) -> int:
        """Cash + total exposure (equity valued at cost), in $0.000001."""
        return self.cash_e6 + self.exposure_e6()

    def equity_e6(self, marks_e4x2: Mapping[str, int | None]) -> Fraction:
        """Cash + holdings at the marks, in $0.000001 (exact).

        Args:
            marks_e4x2: market -> twice its YES mid in $0.0001; a missing market or None marks
                that market at cost.
        """
        return Fraction(self.equity_e6x2(marks_e4x2), 2)

    def equity_e6x2(self, marks_e4x2: Mapping[str, int | None]) -> int:
        """Twice :meth:`equity_e6`, as an integer (the env's hot path avoids Fractions)."""
        total_x2 = 2 * self.cash_e6
        for market, pos in self.positions.items():
            total_x2 += pos.value_e6x2(marks_e4x2.get(market))
        return total_x2

    def unrealized_e6(self, marks_e4x2: Mapping[str, int | None]) -> Fraction:
        """Σ value at the marks − cost basis, in $0.000001."""
        return self.equity_e6(marks_e4x2) - self.capital_e6

    # -- limits ----------------------------------------------------------------------------

    def check_fill(self, market: str, fill: Fill) -> list[LimitBreach]:
        """Which rules applying ``fill`` to ``market`` would break ([] = it may be applied)."""
        return self.check_fill_given(self.position(market), fill, self.exposure_e6())

    def check_fill_given(
        self, pos: MarketPosition, fill: Fill, total_before: int
    ) -> list[LimitBreach]:
        """:meth:`check_fill` with the market's position and the total exposure (in
        $0.000001) already looked up, for callers that price many fills on the same state."""
        if pos.settled:
            return [LimitBreach.SETTLED]
        if fill.side is Side.SELL:
            held = pos.yes_e2 if fill.contract is Contract.YES else pos.no_e2
            if fill.filled_e2 > held:
                return [LimitBreach.NOT_HELD]
        new, cash_delta = _after_fill(pos, fill)
        breaches = []
        cash_after = self.cash_e6 + cash_delta
        if cash_after < 0:
            breaches.append(LimitBreach.CASH)
        total_after = total_before - pos.cost_e6 + new.cost_e6
        capital_after = cash_after + total_after
        limits = self.limits
        # A limit only blocks a fill that makes its own measure worse, so a position that is
        # over a limit (capital fell after losses) can always be reduced.
        if new.held_e2 > limits.max_position_e2 and new.held_e2 > pos.held_e2:
            breaches.append(LimitBreach.POSITION)
        share = limits.max_market_share
        if (
            new.cost_e6 * share.denominator > share.numerator * capital_after
            and new.cost_e6 > pos.cost_e6
        ):
            breaches.append(LimitBreach.CONCENTRATION)
        share = limits.max_exposure_share
        if (
            total_after * share.denominator > share.numerator * capital_after
            and total_after > total_before
        ):
            breaches.append(LimitBreach.EXPOSURE)
        return breaches

    # -- changing --------------------------------------------------------------------------

    def apply_fill(self, market: str, fill: Fill, *, enforce: bool = True) -> MarketPosition:
        """Book a fill: cash, holdings, cost basis, fees, realized P&L, YES/NO netting.

        Args:
            market: the market ticker.
            fill: the result of :func:`tests.simulation.oracle.fills.fill_order`.
            enforce: refuse (``LimitError``) a fill that :meth:`check_fill` rejects. Holdings
                and settlement are enforced even when False.

        Returns:
            The market's position after the fill.
        """
        breaches = self.check_fill(market, fill)
        hard = [b for b in breaches if b in (LimitBreach.SETTLED, LimitBreach.NOT_HELD)]
        if hard or (enforce and breaches):
            raise LimitError(market, hard or breaches)
        return self.apply_checked_fill(market, fill)

    def apply_checked_fill(self, market: str, fill: Fill) -> MarketPosition:
        """Book a fill that :meth:`check_fill` just passed against this very state (the
        env's hot path: ``actions.execute`` checks before it books, so checking twice would
        only cost time). Anything else must call :meth:`apply_fill`."""
        if fill.filled_e2 == 0:
            return self.position(market)
        pos = self.positions.get(market) or MarketPosition()
        new, cash_delta = _after_fill(pos, fill)
        self.positions[market] = new
        self._exposure_e6 += new.cost_e6 - pos.cost_e6
        self.cash_e6 += cash_delta
        self.fees_paid_e4 += fill.fee_e4
        self.rounding_fees_e6 += fill.rounding_e6
        self.realized_e6 += new.realized_e6 - pos.realized_e6
        return new

    def settle(
        self, market: str, result: SettlementResult | str, value_e4: int | None = None
    ) -> int:
        """Pay out a settled market and close its position; returns the payout in $0.000001.

        Args:
            market: the market ticker.
            result: ``yes``, ``no`` or ``scalar``.
            value_e4: for ``scalar``, the YES settlement value in $0.0001.
        """
        yes_pays_e4 = settlement_price_e4(result, value_e4)
        pos = self.positions.get(market) or MarketPosition()
        if pos.settled:
            raise ValueError(f"{market} is already settled")
        payout = pos.yes_e2 * yes_pays_e4 + pos.no_e2 * (ONE_DOLLAR_E4 - yes_pays_e4)
        pos.realized_e6 += payout - pos.cost_e6
        self.realized_e6 += payout - pos.cost_e6
        self.cash_e6 += payout
        self._exposure_e6 -= pos.cost_e6
        pos.yes_e2 = pos.no_e2 = pos.yes_cost_e6 = pos.no_cost_e6 = 0
        pos.settled = True
        self.positions[market] = pos
        return payout

    def record_equity_x2(self, equity_e6x2: int) -> float:
        """:meth:`record_equity` for twice the equity as an integer: the same peak, drawdown
        and result, in integer arithmetic (int / int division rounds like Fraction's float)."""
        peak = self.peak_equity_e6
        n, d = peak.numerator, peak.denominator
        if equity_e6x2 * d > 2 * n:
            self.peak_equity_e6 = Fraction(equity_e6x2, 2)
            n, d = self.peak_equity_e6.numerator, self.peak_equity_e6.denominator
        # (peak − equity) / peak with peak = n/d and equity = e/2 is (2n − e·d) / (2n).
        self.drawdown = (2 * n - equity_e6x2 * d) / (2 * n) if n > 0 else 0.0
        self.max_drawdown = max(self.max_drawdown, self.drawdown)
        return self.drawdown

    def record_equity(self, equity_e6: Fraction | int) -> float:
        """Track the equity peak; returns the current drawdown (fraction of the peak lost).

        Args:
            equity_e6: current equity in $0.000001 (e.g. :meth:`equity_e6`).
        """
        if equity_e6 > self.peak_equity_e6:
            self.peak_equity_e6 = Fraction(equity_e6)
        peak = self.peak_equity_e6
        self.drawdown = float((peak - equity_e6) / peak) if peak > 0 else 0.0
        self.max_drawdown = max(self.max_drawdown, self.drawdown)
        return self.drawdown
