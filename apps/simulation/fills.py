"""Taker fills: a market order walks the opposite side of the book as it stands.

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

Both the live :class:`~apps.marketdata.book.OrderBook` (paper trader) and :class:`ArrayBook`
(the env's numpy arrays of the top ``BOOK_LEVELS`` levels) satisfy :class:`BookView`:
``depth(side, n)`` returns the best ``n`` bids of a side as (price_e4, size_e2), best first.
:func:`fill_order` reads nothing else, so both paths produce identical fills as long as they
look at the same number of levels (``max_levels``, default ``BOOK_LEVELS``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from fractions import Fraction
from typing import Protocol

import numpy as np

from apps.marketdata.kalshi.units import PRICE_SCALE
from apps.simulation.fees import STANDARD_FEES, FeeSchedule, fee_term, roundup_to_cent_e4

BOOK_LEVELS = 10  # levels per side the env stores, the fills walk and the features read

Level = tuple[int, int]  # (price_e4, size_e2)


class Contract(StrEnum):
    YES = "yes"
    NO = "no"


class Side(StrEnum):
    BUY = "buy"
    SELL = "sell"


class BookView(Protocol):
    """What a fill needs from a book: the best ``n`` bids of one side, best first."""

    def depth(self, side: str, n: int) -> list[Level]: ...


class BookArrayError(ValueError):
    """Book arrays that do not describe a valid bid ladder."""


def validate_book_arrays(
    yes_px: np.ndarray, yes_sz: np.ndarray, no_px: np.ndarray, no_sz: np.ndarray
) -> None:
    """Check top-K ladders (any leading shape, last axis = levels, best first).

    A ladder is a prefix of real levels (size > 0, prices strictly descending within
    [0, 10_000]) followed by empty slots (size 0, price 0).

    Args:
        yes_px, no_px: bid prices in $0.0001.
        yes_sz, no_sz: bid sizes in 0.01 contract.

    Raises:
        BookArrayError: naming the first rule broken.
    """
    for name, px, sz in (("yes", yes_px, yes_sz), ("no", no_px, no_sz)):
        px = np.asarray(px)
        sz = np.asarray(sz)
        if px.shape != sz.shape or px.ndim < 1:
            raise BookArrayError(f"{name}: price shape {px.shape} != size shape {sz.shape}")
        if not (np.issubdtype(px.dtype, np.integer) and np.issubdtype(sz.dtype, np.integer)):
            raise BookArrayError(f"{name}: prices and sizes must be integer arrays")
        if (sz < 0).any():
            raise BookArrayError(f"{name}: negative size")
        if ((px < 0) | (px > PRICE_SCALE)).any():
            raise BookArrayError(f"{name}: price outside [0, {PRICE_SCALE}]")
        filled = sz > 0
        # Real levels must form a prefix: once a slot is empty, every later slot is empty.
        if (filled[..., 1:] & ~filled[..., :-1]).any():
            raise BookArrayError(f"{name}: a level follows an empty slot")
        if (px[~filled] != 0).any():
            raise BookArrayError(f"{name}: an empty slot carries a price")
        both = filled[..., 1:]
        if (both & (px[..., 1:] >= px[..., :-1])).any():
            raise BookArrayError(f"{name}: prices are not strictly descending (best first)")


def book_to_arrays(book: BookView, k: int = BOOK_LEVELS) -> tuple[np.ndarray, ...]:
    """The best ``k`` levels of each side as four int64 arrays (yes_px, yes_sz, no_px, no_sz).

    Empty slots are (price 0, size 0). Prices in $0.0001, sizes in 0.01 contract.
    """
    out = []
    for side in ("yes", "no"):
        px = np.zeros(k, dtype=np.int64)
        sz = np.zeros(k, dtype=np.int64)
        for i, (price_e4, size_e2) in enumerate(book.depth(side, k)):
            px[i] = price_e4
            sz[i] = size_e2
        out += [px, sz]
    return tuple(out)


class ArrayBook:
    """A :class:`BookView` over top-K bid arrays (best first, empty slots have size 0).

    Holds references, not copies: the env can point it at rows of its history arrays.
    """

    __slots__ = ("no_px", "no_sz", "yes_px", "yes_sz")

    def __init__(
        self,
        yes_px: np.ndarray,
        yes_sz: np.ndarray,
        no_px: np.ndarray,
        no_sz: np.ndarray,
        *,
        validate: bool = True,
    ) -> None:
        """Args:
        yes_px, no_px: (K,) bid prices in $0.0001, best first.
        yes_sz, no_sz: (K,) bid sizes in 0.01 contract; 0 marks an empty slot.
        validate: check the ladder rules (skip only for arrays validated at load time).
        """
        if validate:
            validate_book_arrays(yes_px, yes_sz, no_px, no_sz)
        self.yes_px = yes_px
        self.yes_sz = yes_sz
        self.no_px = no_px
        self.no_sz = no_sz

    @classmethod
    def from_book(cls, book: BookView, k: int = BOOK_LEVELS) -> ArrayBook:
        """Copy the best ``k`` levels of any book view (e.g. an OrderBook)."""
        return cls(*book_to_arrays(book, k), validate=False)

    def depth(self, side: str, n: int) -> list[Level]:
        """The best ``n`` bids of ``side`` as (price_e4, size_e2), best first."""
        if side == "yes":
            px, sz = self.yes_px, self.yes_sz
        elif side == "no":
            px, sz = self.no_px, self.no_sz
        else:
            raise ValueError(f"side {side!r} is not 'yes' or 'no'")
        levels = []
        for price_e4, size_e2 in zip(px[:n].tolist(), sz[:n].tolist(), strict=True):
            if size_e2 <= 0:
                break
            levels.append((price_e4, size_e2))
        return levels


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
        fee_e4: the order's fee in $0.0001 (a multiple of 100).
    """

    contract: Contract
    side: Side
    requested_e2: int
    filled_e2: int
    fills: tuple[Level, ...]
    notional_e6: int
    fee_e4: int

    @property
    def avg_price_e4(self) -> Fraction | None:
        """Size-weighted average price in $0.0001, exact; None when nothing filled."""
        if self.filled_e2 == 0:
            return None
        return Fraction(self.notional_e6, self.filled_e2)

    @property
    def cash_delta_e6(self) -> int:
        """Cash change in $0.000001: −(notional + fee) for a buy, notional − fee for a sell."""
        fee_e6 = self.fee_e4 * 100
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
        book: any :class:`BookView`.
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
) -> Fill:
    """Walk prepared levels (from :func:`taking_levels`) for one order.

    Args:
        levels: (price_e4, size_e2) the order may take, best first, in the traded contract.
        contract: YES or NO.
        side: BUY or SELL.
        size_e2: requested size in 0.01 contract (> 0).
        limit_price_e4: worst acceptable price in $0.0001 (max for a buy, min for a sell).
        fees: the series' fee schedule (a market order always pays the taker rate).
    """
    if size_e2 <= 0:
        raise ValueError(f"order size must be positive, got {size_e2}")
    # The mask evaluates ~20 orders per market per step: skip enum lookups when possible.
    side = side if type(side) is Side else Side(side)
    contract = contract if type(contract) is Contract else Contract(contract)
    remaining = size_e2
    taken: list[Level] = []
    notional = 0
    terms = 0
    for price_e4, level_e2 in levels:
        if limit_price_e4 is not None and (
            price_e4 > limit_price_e4 if side is Side.BUY else price_e4 < limit_price_e4
        ):
            break  # levels are best first, so every later level is worse too
        take = level_e2 if level_e2 < remaining else remaining
        taken.append((price_e4, take))
        notional += price_e4 * take
        terms += fee_term(price_e4, take)
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
        fee_e4=roundup_to_cent_e4(terms, fees.taker_rate),
    )


def fill_order(
    book: BookView,
    *,
    contract: Contract,
    side: Side,
    size_e2: int,
    limit_price_e4: int | None = None,
    fees: FeeSchedule = STANDARD_FEES,
    max_levels: int = BOOK_LEVELS,
) -> Fill:
    """Fill a taker order against the book as it stands (the book is not changed).

    Args:
        book: an OrderBook, an ArrayBook or any :class:`BookView`.
        contract: YES or NO.
        side: BUY or SELL.
        size_e2: requested size in 0.01 contract (> 0).
        limit_price_e4: worst acceptable price in $0.0001 (max for a buy, min for a sell).
        fees: the series' fee schedule.
        max_levels: bid levels visible on the walked side (the env stores ``BOOK_LEVELS``).
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
    )
