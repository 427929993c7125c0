"""Kalshi trading fees, computed exactly (kalshi-protocol.md §8).

Formulas, with ``C`` contracts, ``P`` the price in dollars and ``m`` the series' fee multiplier:

* taker: ``roundup_to_cent(0.07 × m × C × P × (1 − P))``
* maker (only on ``quadratic_with_maker_fees`` series):
  ``roundup_to_cent(0.0175 × C × P × (1 − P))``

An order that fills at several prices pays ``roundup_to_cent(Σ rate × Cᵢ × Pᵢ × (1 − Pᵢ))``: Kalshi
rounds each fill up to $0.0001 and refunds over-collection per order in whole cents, so the
order's total converges to that single rounding.

Everything is integer arithmetic on ``price_e4`` ($0.0001) and ``size_e2`` (0.01 contract):

    fee_e4 = rate × Σ size_e2 × price_e4 × (10_000 − price_e4) / 10⁶

so the only division is the final ceiling to a whole cent (100 in ``price_e4`` units). Fees are
returned in ``price_e4`` units and are always a multiple of 100.

Whether ``m`` also scales the maker rate is unverified (§8); :class:`FeeSchedule` leaves the
maker rate unscaled unless ``maker_uses_multiplier`` is set.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from fractions import Fraction

from apps.marketdata.kalshi.units import CENT_E4, PRICE_SCALE

TAKER_RATE = Fraction(7, 100)
MAKER_RATE = Fraction(175, 10_000)
_ZERO = Fraction(0)

# fee_e4 = rate × Σ size_e2 × price_e4 × (10_000 − price_e4) / _TERM_DIVISOR
# (size_e2 / 100 contracts × price_e4 / 10⁴ × (10⁴ − price_e4) / 10⁴ dollars × 10⁴ e4 per dollar).
_TERM_DIVISOR = 1_000_000


class FeeType(StrEnum):
    """The series ``fee_type`` values we simulate (``flat`` is not covered by §8)."""

    QUADRATIC = "quadratic"  # takers pay, makers free
    QUADRATIC_WITH_MAKER_FEES = "quadratic_with_maker_fees"  # both pay
    NONE = "none"  # no trading fee (for experiments and fee-free series)


def as_fraction(value: Fraction | int | str | Decimal | float) -> Fraction:
    """An exact rate or multiplier. A float is read through its shortest decimal form, so
    ``0.35`` means 35/100, not the binary double nearest to it."""
    if isinstance(value, float):
        return Fraction(repr(value))
    return Fraction(value)


def fee_term(price_e4: int, size_e2: int) -> int:
    """``size_e2 × price_e4 × (10_000 − price_e4)``: one fill's share of the fee, before the rate.

    Args:
        price_e4: fill price in $0.0001 (0..10_000).
        size_e2: filled size in 0.01 contract (≥ 0).
    """
    return size_e2 * price_e4 * (PRICE_SCALE - price_e4)


def exact_fee_e4(fills: Iterable[tuple[int, int]], rate: Fraction) -> Fraction:
    """The unrounded fee of an order, in $0.0001 (for tests and reports).

    Args:
        fills: (price_e4, size_e2) pairs of one order.
        rate: the fee rate in dollars per contract-P(1−P), e.g. ``TAKER_RATE × m``.
    """
    total = sum(fee_term(price_e4, size_e2) for price_e4, size_e2 in fills)
    return rate * total / _TERM_DIVISOR


def roundup_to_cent_e4(terms: int, rate: Fraction) -> int:
    """``ceil(rate × terms / 10⁶ / 100) × 100``: a fee term sum rounded up to a whole cent.

    Args:
        terms: Σ :func:`fee_term` over the order's fills (integer).
        rate: the fee rate (exact).

    Returns:
        The fee in $0.0001 (a multiple of 100).
    """
    if terms <= 0 or rate.numerator <= 0:  # numerator test: a Fraction comparison is slow
        return 0
    numerator = rate.numerator * terms
    denominator = rate.denominator * _TERM_DIVISOR * CENT_E4
    return -(-numerator // denominator) * CENT_E4


def order_fee_e4(fills: Iterable[tuple[int, int]], rate: Fraction) -> int:
    """Fee of one order at ``rate``: ``roundup_to_cent(Σ rate × Cᵢ × Pᵢ × (1 − Pᵢ))`` in $0.0001.

    Args:
        fills: (price_e4, size_e2) pairs of one order.
        rate: the fee rate (exact), e.g. ``TAKER_RATE`` or ``MAKER_RATE``.
    """
    terms = 0
    for price_e4, size_e2 in fills:
        terms += fee_term(price_e4, size_e2)
    return roundup_to_cent_e4(terms, rate)


@dataclass(frozen=True, slots=True)
class FeeSchedule:
    """A series' fee settings.

    Attributes:
        fee_type: ``quadratic`` (takers pay), ``quadratic_with_maker_fees`` (both pay) or
            ``none``.
        multiplier: the series ``fee_multiplier`` ``m`` (1 normally, 0.5 on index series,
            0 = no taker fee). Converted to an exact :class:`~fractions.Fraction`.
        maker_uses_multiplier: also scale the maker rate by ``m`` (unverified on Kalshi, off by
            default).
    """

    fee_type: FeeType = FeeType.QUADRATIC
    multiplier: Fraction = field(default=Fraction(1))
    maker_uses_multiplier: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "fee_type", FeeType(self.fee_type))
        multiplier = as_fraction(self.multiplier)
        if multiplier < 0:
            raise ValueError(f"fee multiplier must be ≥ 0, got {multiplier}")
        object.__setattr__(self, "multiplier", multiplier)

    @property
    def taker_rate(self) -> Fraction:
        """Dollars per contract × P(1−P) charged to a taker."""
        if self.fee_type is FeeType.NONE:
            return _ZERO
        if self.multiplier == 1:
            return TAKER_RATE  # the common case; fills ask for it on every order
        return TAKER_RATE * self.multiplier

    @property
    def maker_rate(self) -> Fraction:
        """Dollars per contract × P(1−P) charged to a maker (0 unless the series charges makers)."""
        if self.fee_type is not FeeType.QUADRATIC_WITH_MAKER_FEES:
            return _ZERO
        return MAKER_RATE * (self.multiplier if self.maker_uses_multiplier else 1)

    def rate(self, *, maker: bool) -> Fraction:
        return self.maker_rate if maker else self.taker_rate

    def order_fee_e4(self, fills: Iterable[tuple[int, int]], *, maker: bool = False) -> int:
        """Fee of one order in $0.0001 (a multiple of 100).

        Args:
            fills: (price_e4, size_e2) pairs of the order's fills.
            maker: True when the order rested and was hit (maker), False when it took liquidity.
        """
        return order_fee_e4(fills, self.rate(maker=maker))


STANDARD_FEES = FeeSchedule()
NO_FEES = FeeSchedule(fee_type=FeeType.NONE)


def taker_fee_e4(price_e4: int, size_e2: int, *, multiplier: Fraction | int | str = 1) -> int:
    """Taker fee of a single fill, in $0.0001.

    Args:
        price_e4: price in $0.0001.
        size_e2: size in 0.01 contract.
        multiplier: the series fee multiplier ``m``.
    """
    return order_fee_e4([(price_e4, size_e2)], TAKER_RATE * as_fraction(multiplier))


def maker_fee_e4(price_e4: int, size_e2: int) -> int:
    """Maker fee of a single fill on a ``quadratic_with_maker_fees`` series, in $0.0001.

    Args:
        price_e4: price in $0.0001.
        size_e2: size in 0.01 contract.
    """
    return order_fee_e4([(price_e4, size_e2)], MAKER_RATE)
