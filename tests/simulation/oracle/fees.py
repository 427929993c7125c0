"""The oracle of Kalshi's per-fill fee rounding (kalshi-protocol.md §8, 2026 rules).

Exact rational arithmetic in dollars and contracts, one step per sentence of Kalshi's
fee-rounding page, so a reader can check it line by line; the compiled kernel's integer
version (``apps.simulation.kernel._decide``) is tested against it.

For each fill of an order:

1. the trade fee is ``rate × m × C × P × (1 − P)`` (a flat series: ``m × F × C``) rounded up to
   $0.0001;
2. the fill's balance change ``revenue − trade fee`` (revenue is negative for a buyer) is
   floored toward −∞ to the account's precision ($0.01, or $0.0001 for direct members); what
   the floor took is the fill's rounding fee;
3. a per-order accumulator sums the rounding fees (taker and maker fills alike); each time it
   reaches $0.01 a whole cent is refunded and the accumulator drops by $0.01 (Kalshi's page
   says "exceeds"; refunding at exactly $0.01 keeps the order's total within a cent of its
   unrounded cost, the bound the property test checks).

Fractions, not Decimals: a fee multiplier may be any rational (3/7 in the tests), and a
Decimal cannot hold 0.07 × 3/7 exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction

from apps.simulation.fees import FeeSchedule, FeeType

CENTICENT = Fraction(1, 10_000)
CENT = Fraction(1, 100)
TAKER_RATE = Fraction(7, 100)
MAKER_RATE = Fraction(175, 10_000)


def round_up(amount: Fraction, step: Fraction) -> Fraction:
    return math.ceil(amount / step) * step


def floor_to(amount: Fraction, step: Fraction) -> Fraction:
    return math.floor(amount / step) * step


def trade_fee(
    schedule: FeeSchedule, *, price: Fraction, count: Fraction, maker: bool = False
) -> Fraction:
    """Step 1: one fill's trade fee in dollars, rounded up to $0.0001."""
    m = schedule.multiplier
    kind = schedule.fee_type
    if kind is FeeType.NONE:
        raw = Fraction(0)
    elif kind is FeeType.FLAT:
        pays = not maker or schedule.flat_makers_pay
        raw = m * schedule.flat_fee_per_contract * count if pays else Fraction(0)
    elif maker:
        pays = kind is FeeType.QUADRATIC_WITH_MAKER_FEES
        scale = m if schedule.maker_uses_multiplier else 1
        raw = MAKER_RATE * scale * count * price * (1 - price) if pays else Fraction(0)
    else:
        raw = TAKER_RATE * m * count * price * (1 - price)
    return round_up(raw, CENTICENT)


@dataclass(frozen=True)
class FillCharge:
    trade_fee: Fraction
    rounding_fee: Fraction
    rebate: Fraction
    balance_change: Fraction  # what the account's cash moves by, after the rebate


@dataclass
class OrderFees:
    """The fee state of one order across its fills (taker and maker fills alike)."""

    precision: Fraction = CENT
    accumulator: Fraction = field(default=Fraction(0))

    def fill(
        self,
        schedule: FeeSchedule,
        *,
        price: Fraction,
        count: Fraction,
        buy: bool,
        maker: bool = False,
    ) -> FillCharge:
        fee = trade_fee(schedule, price=price, count=count, maker=maker)
        revenue = -price * count if buy else price * count
        change = revenue - fee
        floored = floor_to(change, self.precision)
        rounding_fee = change - floored
        self.accumulator += rounding_fee
        rebate = Fraction(0)
        while self.accumulator >= CENT:
            rebate += CENT
            self.accumulator -= CENT
        return FillCharge(fee, rounding_fee, rebate, floored + rebate)
