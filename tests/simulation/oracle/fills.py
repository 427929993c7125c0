"""The oracle's taker fills: a market order walks the opposite side of the book as it stands.

Readable reference for ``apps.simulation.kernel`` (tests only: the product runs the kernel).

Kalshi publishes bids only (kalshi-protocol.md §4). A NO bid at q is a YES ask at $1 − q, so:

=============  ====================  ===========================
order          walks                 price paid / received
=============  ====================  ===========================
buy YES        NO bids, best first   10_000 − NO bid price
sell YES       YES bids, best first  YES bid price
buy NO         YES bids, best first  10_000 − YES bid price
sell NO        NO bids, best first   NO bid price
=============  ====================  ===========================

Prices are ``price_e4`` ($0.0001) of the contract traded (a YES price for YES orders, a NO price
for NO orders); sizes are ``size_e2`` (0.01 contract). A fill takes whole levels until the
requested size is reached and a part of the last level; it stops early at the end of the
visible depth or at the optional limit price. It never uses a price or a size the book did not
show.

:func:`fill_order` reads a book only through ``BookView.depth`` (an OrderBook or an
``ArrayBook`` of the env's arrays), at most ``max_levels`` (default ``BOOK_LEVELS``) levels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from fractions import Fraction

from apps.simulation.books import BOOK_LEVELS, BookView, Level
from apps.simulation.fees import STANDARD_FEES, FeeSchedule
from apps.simulation.layout import PRICE_SCALE, SIZE_SCALE
from tests.simulation.oracle.fees import OrderFees


class Contract(StrEnum):
    YES = "yes"
    NO = "no"


class Side(StrEnum):
    BUY = "buy"
    SELL = "sell"


@dataclass(frozen=True, slots=True)
class Fill:
    """The result of one taker order (possibly partial, possibly empty).

    Attributes:
        contract: YES or NO.
        side: BUY or SELL.
        requested_e2: size asked for, in 0.01 contract.
        filled_e2: size filled, in 0.01 contract (0 ≤ filled ≤ requested).
        fills: (price_e4, size_e2) per level taken, best first, in the traded contract's price.
        notional_e6: Σ price_e4 × size_e2, the exact money exchanged before fees, in $0.000001
            ($0.0001 × 0.01 contract).
        fee_e4: Σ the fills' trade fees, in $0.0001 (:mod:`tests.simulation.oracle.fees`).
        rounding_e6: the order's net rounding fee (its accumulator at the end, after the cent
            refunds), in $0.000001.
    """

    contract: Contract
    side: Side
    requested_e2: int
    filled_e2: int
    fills: tuple[Level, ...]
    notional_e6: int
    fee_e4: int
    rounding_e6: int = 0

    @property
    def avg_price_e4(self) -> Fraction | None:
        """Size-weighted average price in $0.0001, exact; None when nothing filled."""
        if self.filled_e2 == 0:
            return None
        return Fraction(self.notional_e6, self.filled_e2)

    @property
    def cash_delta_e6(self) -> int:
        """Cash change in $0.000001: −(notional + fees) for a buy, notional − fees for a sell,
        fees being the trade fees and the net rounding fee."""
        fee_e6 = self.fee_e4 * 100 + self.rounding_e6
        if self.side is Side.BUY:
            return -self.notional_e6 - fee_e6
        return self.notional_e6 - fee_e6


def _walked_side(contract: Contract, side: Side) -> tuple[str, bool]:
    """Which bid ladder an order takes, and whether its prices are complemented (1 − q)."""
    if side is Side.BUY:
        # Buying YES sells to NO bidders (a NO bid at q is a YES ask at 1 − q) and vice versa.
        return ("no" if contract is Contract.YES else "yes"), True
    return ("yes" if contract is Contract.YES else "no"), False


def taking_levels(
    book: BookView, contract: Contract, side: Side, max_levels: int = BOOK_LEVELS
) -> list[Level]:
    """The levels an order would take, best first, priced in the traded contract.

    Args:
        book: any :class:`~apps.simulation.books.BookView`.
        contract: YES or NO.
        side: BUY or SELL.
        max_levels: how many bid levels of the walked side are visible.
    """
    ladder, complement = _walked_side(Contract(contract), Side(side))
    levels = book.depth(ladder, max_levels)
    if complement:
        return [(PRICE_SCALE - price_e4, size_e2) for price_e4, size_e2 in levels]
    return levels


def fill_from_levels(
    levels: Sequence[Level],
    *,
    contract: Contract,
    side: Side,
    size_e2: int,
    limit_price_e4: int | None = None,
    fees: FeeSchedule = STANDARD_FEES,
    precision_e4: int = 100,
) -> Fill:
    """Walk prepared levels (from :func:`taking_levels`) for one order; each level taken is
    one fill, charged by :class:`~tests.simulation.oracle.fees.OrderFees`.

    Args:
        levels: (price_e4, size_e2) the order may take, best first, in the traded contract.
        contract: YES or NO.
        side: BUY or SELL.
        size_e2: requested size in 0.01 contract (> 0).
        limit_price_e4: worst acceptable price in $0.0001 (max for a buy, min for a sell).
        fees: the series' fee schedule (a market order always pays the taker rate).
        precision_e4: the account precision in $0.0001 (100 = $0.01, 1 = $0.0001).
    """
    if size_e2 <= 0:
        raise ValueError(f"order size must be positive, got {size_e2}")
    # The mask evaluates ~20 orders per market per step: skip enum lookups when possible.
    side = side if type(side) is Side else Side(side)
    contract = contract if type(contract) is Contract else Contract(contract)
    remaining = size_e2
    taken: list[Level] = []
    notional = 0
    order_fees = OrderFees(precision=Fraction(precision_e4, PRICE_SCALE))
    trade_fees = Fraction(0)
    for price_e4, level_e2 in levels:
        if limit_price_e4 is not None and (
            price_e4 > limit_price_e4 if side is Side.BUY else price_e4 < limit_price_e4
        ):
            break  # levels are best first, so every later level is worse too
        take = level_e2 if level_e2 < remaining else remaining
        taken.append((price_e4, take))
        notional += price_e4 * take
        charge = order_fees.fill(
            fees,
            price=Fraction(price_e4, PRICE_SCALE),
            count=Fraction(take, SIZE_SCALE),
            buy=side is Side.BUY,
        )
        trade_fees += charge.trade_fee
        remaining -= take
        if remaining == 0:
            break
    return Fill(
        contract=contract,
        side=side,
        requested_e2=size_e2,
        filled_e2=size_e2 - remaining,
        fills=tuple(taken),
        notional_e6=notional,
        fee_e4=_whole(trade_fees * 10_000),
        rounding_e6=_whole(order_fees.accumulator * 1_000_000),
    )


def _whole(amount: Fraction) -> int:
    assert amount.denominator == 1, amount  # fees are whole $0.0001, rounding whole $0.000001
    return amount.numerator


def fill_order(
    book: BookView,
    *,
    contract: Contract,
    side: Side,
    size_e2: int,
    limit_price_e4: int | None = None,
    fees: FeeSchedule = STANDARD_FEES,
    max_levels: int = BOOK_LEVELS,
    precision_e4: int = 100,
) -> Fill:
    """Fill a taker order against the book as it stands (the book is not changed).

    Args:
        book: an OrderBook, an ArrayBook or any :class:`~apps.simulation.books.BookView`.
        contract: YES or NO.
        side: BUY or SELL.
        size_e2: requested size in 0.01 contract (> 0).
        limit_price_e4: worst acceptable price in $0.0001 (max for a buy, min for a sell).
        fees: the series' fee schedule.
        max_levels: bid levels visible on the walked side (the env stores ``BOOK_LEVELS``).
        precision_e4: the account precision in $0.0001.
    """
    contract = Contract(contract)
    side = Side(side)
    return fill_from_levels(
        taking_levels(book, contract, side, max_levels),
        contract=contract,
        side=side,
        size_e2=size_e2,
        limit_price_e4=limit_price_e4,
        fees=fees,
        precision_e4=precision_e4,
    )
