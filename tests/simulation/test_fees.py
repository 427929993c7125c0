"""Kalshi fees: the worked examples of kalshi-protocol.md §8 and properties of the formula."""

from __future__ import annotations

from decimal import ROUND_CEILING, Decimal
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apps.simulation import fees
from apps.simulation.fees import FeeSchedule, FeeType


def test_example_1_taker_buys_100_at_50_cents_pays_1_75() -> None:
    assert fees.taker_fee_e4(5_000, 10_000) == 17_500


def test_example_2_taker_buys_10_at_37_cents_pays_17_cents() -> None:
    assert fees.taker_fee_e4(3_700, 1_000) == 1_700
    # 0.07 × 10 × 0.37 × 0.63 = 0.16317 dollars, before rounding
    assert fees.exact_fee_e4([(3_700, 1_000)], fees.TAKER_RATE) == Fraction("1631.7")


def test_example_3_index_series_taker_25_at_21_cents_pays_15_cents() -> None:
    assert fees.taker_fee_e4(2_100, 2_500, multiplier="0.5") == 1_500
    index = FeeSchedule(fee_type=FeeType.QUADRATIC, multiplier=Fraction(1, 2))
    assert index.taker_rate == Fraction(35, 1_000)
    assert index.order_fee_e4([(2_100, 2_500)]) == 1_500


def test_maker_fee_is_44_cents_for_100_contracts_at_50_cents() -> None:
    assert fees.maker_fee_e4(5_000, 10_000) == 4_400
    makers_pay = FeeSchedule(fee_type="quadratic_with_maker_fees")
    assert makers_pay.order_fee_e4([(5_000, 10_000)], maker=True) == 4_400


def test_one_contract_at_50_cents_costs_2_cents_as_taker_and_1_cent_as_maker() -> None:
    # §8 says "a single contract at 0.50 as maker still costs $0.02". The formula it states
    # gives 0.0175 × 1 × 0.25 = $0.004375 -> $0.01; $0.02 is the taker fee (0.0175 -> 0.02).
    # Fee tables in §8's own sources agree: maker $0.01, taker $0.02. We follow the formula.
    assert fees.taker_fee_e4(5_000, 100) == 200
    assert fees.maker_fee_e4(5_000, 100) == 100
    makers_pay = FeeSchedule(fee_type="quadratic_with_maker_fees")
    assert makers_pay.order_fee_e4([(5_000, 100)], maker=True) == 100
    assert makers_pay.order_fee_e4([(5_000, 10_000)]) == 17_500  # takers still pay 0.07


def test_makers_are_free_on_a_quadratic_series_and_nobody_pays_on_none() -> None:
    assert FeeSchedule().order_fee_e4([(5_000, 10_000)], maker=True) == 0
    nothing = FeeSchedule(fee_type=FeeType.NONE)
    assert nothing.order_fee_e4([(5_000, 10_000)]) == 0
    assert nothing.order_fee_e4([(5_000, 10_000)], maker=True) == 0


def test_the_multiplier_leaves_the_maker_rate_alone_unless_asked() -> None:
    half = FeeSchedule(fee_type="quadratic_with_maker_fees", multiplier="0.5")
    assert half.maker_rate == fees.MAKER_RATE
    scaled = FeeSchedule(
        fee_type="quadratic_with_maker_fees", multiplier="0.5", maker_uses_multiplier=True
    )
    assert scaled.maker_rate == fees.MAKER_RATE / 2


def test_an_order_is_rounded_once_not_per_fill() -> None:
    # Ten 1-contract fills at $0.50: per fill 0.0175 -> $0.02 ($0.20 in all); per order
    # 0.175 -> $0.18.
    ten_fills = [(5_000, 100)] * 10
    assert fees.order_fee_e4(ten_fills, fees.TAKER_RATE) == 1_800
    assert sum(fees.taker_fee_e4(p, s) for p, s in ten_fills) == 2_000


def test_no_fee_at_the_price_edges_or_for_nothing() -> None:
    assert fees.taker_fee_e4(0, 10_000) == 0
    assert fees.taker_fee_e4(10_000, 10_000) == 0
    assert fees.taker_fee_e4(5_000, 0) == 0
    assert fees.order_fee_e4([], fees.TAKER_RATE) == 0


def test_a_float_multiplier_means_its_decimal_and_bad_settings_are_refused() -> None:
    assert FeeSchedule(multiplier=0.35).multiplier == Fraction(35, 100)
    with pytest.raises(ValueError, match="multiplier"):
        FeeSchedule(multiplier=-1)
    with pytest.raises(ValueError):
        FeeSchedule(fee_type="flat")  # Kalshi's flat table is not simulated


def reference_fee_dollars(fills: list[tuple[int, int]], rate: Fraction) -> Decimal:
    """The formula in decimal dollars, straight from §8, as an independent oracle."""
    exact = Decimal(0)
    for price_e4, size_e2 in fills:
        contracts = Decimal(size_e2) / 100
        price = Decimal(price_e4) / 10_000
        exact += contracts * price * (1 - price)
    exact *= Decimal(rate.numerator) / Decimal(rate.denominator)
    return exact.quantize(Decimal("0.01"), rounding=ROUND_CEILING)


fill_lists = st.lists(
    st.tuples(st.integers(0, 10_000), st.integers(0, 10**8)), min_size=1, max_size=8
)
multipliers = st.one_of(
    st.sampled_from([Fraction(0), Fraction(1, 2), Fraction(1)]),
    st.fractions(min_value=0, max_value=2, max_denominator=1_000),
)


@settings(max_examples=400, deadline=None)
@given(fill_lists, multipliers)
def test_the_fee_is_the_exact_formula_rounded_up_to_a_cent(fills, multiplier) -> None:
    schedule = FeeSchedule(multiplier=multiplier)
    fee = schedule.order_fee_e4(fills)
    exact = fees.exact_fee_e4(fills, schedule.taker_rate)
    assert fee % 100 == 0
    assert exact <= fee < exact + 100
    # The decimal oracle has 28 digits, plenty for these sizes.
    assert Decimal(fee) / 10_000 == reference_fee_dollars(fills, schedule.taker_rate)
    if multiplier == 0:
        assert fee == 0


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 10_000), st.integers(0, 10**8), st.integers(0, 10**8), multipliers)
def test_the_fee_never_falls_when_the_size_grows(price_e4, a, b, multiplier) -> None:
    small, large = sorted((a, b))
    rate = fees.TAKER_RATE * multiplier
    assert fees.order_fee_e4([(price_e4, small)], rate) <= fees.order_fee_e4(
        [(price_e4, large)], rate
    )


@settings(max_examples=200, deadline=None)
@given(fill_lists, st.tuples(st.integers(0, 10_000), st.integers(0, 10**8)))
def test_another_fill_never_lowers_the_order_fee(fills, extra) -> None:
    before = fees.order_fee_e4(fills, fees.TAKER_RATE)
    assert fees.order_fee_e4([*fills, extra], fees.TAKER_RATE) >= before
