"""Kalshi fees per fill (kalshi-protocol.md §8, 2026 rules), in the compiled kernel.

Every worked example of §8 and Kalshi's fee-rounding page, a two-level order at whole-cent
prices where per-fill rounding differs from the old per-order rule, sub-cent prices,
fractional contracts and direct-member precision, each run as an order through
``kernel.execute_all`` (the product's rules) and through the oracle
(``tests/simulation/oracle/fees.py``). Maker fills: the simulator places taker orders only, so
the maker examples check the fee module's maker row and the oracle. Then the property: an
order's total debit is never below the sum of its fills' cost plus trade fees rounded up to
$0.0001 each, and never a cent or more above it.
"""

from __future__ import annotations

import math
from fractions import Fraction
from types import ModuleType

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apps.simulation import fees, kernel
from apps.simulation.actions import N_SIZES
from apps.simulation.fees import FeeSchedule, FeeType
from apps.simulation.layout import BOOK_LEVELS as K
from apps.simulation.portfolio import RiskLimits
from tests.simulation.oracle.fees import OrderFees, trade_fee
from tests.simulation.oracle.fills import Contract, Side, fill_from_levels

GENEROUS = RiskLimits(max_position_e2=10**6, max_market_share=1, max_exposure_share=1)
CASH_E6 = 10**13
INDEX = FeeSchedule(multiplier=Fraction(1, 2))
MAKERS_PAY = FeeSchedule(fee_type=FeeType.QUADRATIC_WITH_MAKER_FEES)


def kernel_order(
    levels: list[tuple[int, int]],
    *,
    side: str = "buy",
    schedule: FeeSchedule = fees.STANDARD_FEES,
    precision_e4: int = 100,
    rules: ModuleType = kernel,
) -> tuple[int, int, int]:
    """One YES order taking ``levels`` ((price_e4, size_e2) of the traded contract, best
    first) through ``kernel.execute_all``: (trade fees e4, net rounding fee e6, cash moved e6).

    A buy walks NO bids at 1 − price; a sell walks YES bids from a YES position that holds
    exactly the order (cost basis $0.50 a contract). ``rules``: the kernel or a mutant of it."""
    order = sum(size for _, size in levels)
    px = np.zeros((1, kernel.N_MARKETS, 2, K), dtype=np.int64)
    sz = np.zeros_like(px)
    ladder = 1 if side == "buy" else 0
    for k, (price, size) in enumerate(levels):
        px[0, 0, ladder, k] = 10_000 - price if side == "buy" else price
        sz[0, 0, ladder, k] = size
    trusted = np.ones((1, kernel.N_MARKETS), dtype=bool)
    pos = np.zeros((1, kernel.POS_COLUMNS), dtype=np.int64)
    acct = np.zeros(kernel.ACCT_SIZE, dtype=np.int64)
    acct[kernel.A_CASH] = CASH_E6
    if side == "sell":
        pos[0, kernel.P_YES] = order
        pos[0, kernel.P_YES_COST] = order * 5_000
        pos[0, kernel.P_TOUCHED] = 1
        acct[kernel.A_EXPOSURE] = order * 5_000
    index = kernel.FeeIndex([fees.FeeTimeline(initial=schedule)])
    arrays = kernel.trading_rules(
        fees=index,
        times_ns=np.zeros(1, dtype=np.int64),
        limits=GENEROUS,
        sizes_e2=[order] * N_SIZES,
        initial_cash_e6=CASH_E6,
        episode_steps=1,
        precision_e4=precision_e4,
    )
    action = (1 if side == "buy" else 2) * N_SIZES  # BUY_YES / SELL_YES, first size
    fills = np.zeros((1, kernel.FILL_COLUMNS), dtype=np.int64)
    rules.execute_all(px, sz, trusted, pos, acct, *arrays, 0, np.array([action]), fills)
    row = fills[0]
    assert row[kernel.F_REFUSAL] == kernel.TRADED and row[kernel.F_FILLED] == order, row
    assert acct[kernel.A_CASH] - CASH_E6 == row[kernel.F_CASH]
    # The oracle walks the same levels to the same integers.
    oracle = fill_from_levels(
        levels,
        contract=Contract.YES,
        side=Side(side),
        size_e2=order,
        fees=schedule,
        precision_e4=precision_e4,
    )
    got = (int(row[kernel.F_FEE]), int(row[kernel.F_ROUNDING]), int(row[kernel.F_CASH]))
    assert got == (oracle.fee_e4, oracle.rounding_e6, oracle.cash_delta_e6)
    return got


def fees_charged_e6(levels: list[tuple[int, int]], cash_e6: int, side: str = "buy") -> int:
    """What the order cost beyond its fills' money (trade fees + net rounding), in e6."""
    notional = sum(p * s for p, s in levels)
    return -cash_e6 - notional if side == "buy" else notional - cash_e6


# -- §8's worked examples ----------------------------------------------------------------------


def test_taker_100_at_050_pays_175() -> None:
    levels = [(5_000, 10_000)]
    fee, rounding, cash = kernel_order(levels)
    assert (fee, rounding) == (17_500, 0)  # 0.07 × 100 × 0.5 × 0.5 = $1.75 exactly
    assert cash == -(50_000_000 + 1_750_000)  # $50.00 + $1.75


def test_taker_10_at_037_trade_fee_01632_debited_017_at_cent_precision() -> None:
    levels = [(3_700, 1_000)]
    fee, rounding, cash = kernel_order(levels)
    assert fee == 1_632  # 0.16317 → $0.1632
    assert rounding == 6_800  # $3.8632 debited as $3.87
    assert fees_charged_e6(levels, cash) == 170_000  # $0.17
    # A direct member is debited to $0.0001: the trade fee, no rounding.
    assert kernel_order(levels, precision_e4=1) == (1_632, 0, -(3_700_000 + 163_200))


def test_index_series_25_at_021_pays_015() -> None:
    levels = [(2_100, 2_500)]
    fee, _, cash = kernel_order(levels, schedule=INDEX)
    assert fee == 1_452  # 0.035 × 25 × 0.21 × 0.79 = 0.1451625 → $0.1452
    assert fees_charged_e6(levels, cash) == 150_000  # $0.15
    assert INDEX.taker_rate == Fraction(35, 1_000)


def test_maker_100_at_050_pays_044_and_one_contract_pays_001() -> None:
    # The simulator never rests orders: the maker row of the fee module and the oracle.
    assert MAKERS_PAY.trade_fee_e4(5_000, 10_000, maker=True) == 4_375  # $0.4375
    assert fees.maker_fee_e4(5_000, 100) == 44  # 0.004375 → $0.0044
    assert MAKERS_PAY.trade_fee_e4(5_000, 10_000) == 17_500  # takers still pay 0.07
    assert FeeSchedule().trade_fee_e4(5_000, 10_000, maker=True) == 0  # quadratic: makers free
    half = Fraction(1, 2)
    for count, debit, trade in (
        (100, Fraction("50.44"), Fraction("0.4375")),
        (1, Fraction("0.51"), Fraction("0.0044")),
    ):
        order = OrderFees()
        charge = order.fill(MAKERS_PAY, price=half, count=Fraction(count), buy=True, maker=True)
        assert charge.trade_fee == trade
        assert -charge.balance_change == debit  # $0.44 / $0.01 of fees at cent precision


def test_kalshis_page_example_three_one_lot_fills_at_0055() -> None:
    """Three one-contract fills of one order at $0.055: each trade fee 0.00363825 → $0.0037,
    each balance change −$0.0587 → −$0.06 (rounding fee $0.0013), the accumulator reaches
    $0.0039: no refund; the order costs $0.18. The book shows levels, not resting orders, so
    the kernel sees one level as one fill: three fills at one price is the oracle's case."""
    order = OrderFees()
    price, one = Fraction(55, 1_000), Fraction(1)
    charges = [order.fill(fees.STANDARD_FEES, price=price, count=one, buy=True) for _ in range(3)]
    assert [c.trade_fee for c in charges] == [Fraction("0.0037")] * 3
    assert [c.rounding_fee for c in charges] == [Fraction("0.0013")] * 3
    assert sum(c.balance_change for c in charges) == Fraction("-0.18")
    assert order.accumulator == Fraction("0.0039")
    # The kernel's single fill at that price charges the same for one contract.
    assert kernel_order([(550, 100)]) == (37, 1_300, -60_000)


def test_a_refund_when_the_accumulator_reaches_a_cent() -> None:
    """Six one-lot fills at $0.055: rounding fees 6 × $0.0013 = $0.0078, then a seventh and
    eighth take it to $0.0104: one cent back, $0.0004 left."""
    order = OrderFees()
    price, one = Fraction(55, 1_000), Fraction(1)
    changes = [order.fill(fees.STANDARD_FEES, price=price, count=one, buy=True) for _ in range(8)]
    assert [c.rebate for c in changes] == [0] * 7 + [Fraction("0.01")]
    assert order.accumulator == Fraction("0.0004")
    assert -sum(c.balance_change for c in changes) == 8 * Fraction("0.0587") + Fraction("0.0004")


def test_a_two_level_order_at_whole_cents_pays_per_fill_not_per_order() -> None:
    """9 YES at $0.31 and 1 at $0.32: trade fees $0.1348 + $0.0153, debits $2.9248 → $2.93 and
    $0.3353 → $0.34, rounding $0.0052 + $0.0047 = $0.0099 (no refund): $3.27. The old rule
    (the order's exact fee $0.149989 rounded up to a cent, $0.15) said $3.26."""
    levels = [(3_100, 900), (3_200, 100)]
    fee, rounding, cash = kernel_order(levels)
    assert (fee, rounding, cash) == (1_501, 9_900, -3_270_000)
    old_fee_e4 = math.ceil(fees.exact_fee_e4(levels, fees.TAKER_RATE) / 100) * 100
    old_rule = 3_110_000 + 100 * old_fee_e4
    assert old_rule == 3_260_000


def test_rounding_fees_of_exactly_a_cent_are_refunded() -> None:
    """1 YES at $0.05 and 19 at $0.07: debits $0.0534 → $0.06 and $1.4166 → $1.42, rounding
    fees $0.0066 + $0.0034 = exactly $0.01, refunded: the order costs its exact $1.47 (with
    Kalshi's "exceeds" read literally it would cost $1.48, a full cent above)."""
    assert kernel_order([(500, 100), (700, 1_900)]) == (34 + 866, 0, -1_470_000)


def fee_examples(rules: ModuleType = kernel) -> None:
    """The examples above that pin each per-fill rule, on ``rules`` (the fee mutants of
    ``test_kernel_mutants.py`` must fail them)."""
    assert kernel_order([(3_700, 1_000)], rules=rules) == (1_632, 6_800, -3_870_000)
    assert kernel_order([(3_100, 900), (3_200, 100)], rules=rules) == (1_501, 9_900, -3_270_000)
    assert kernel_order([(500, 100), (700, 1_900)], rules=rules) == (900, 0, -1_470_000)
    assert kernel_order([(650, 295), (655, 1)], rules=rules) == (127, 4_895, -210_000)
    assert kernel_order([(2, 1)], side="sell", rules=rules) == (1, 9_902, -10_000)


def test_the_fee_examples_pin_the_kernel() -> None:
    fee_examples(kernel)


def test_sub_cent_prices_fractional_contracts_and_direct_members() -> None:
    # 2.95 contracts at $0.0650 and 0.01 at $0.0655: C × P has six decimals.
    levels = [(650, 295), (655, 1)]
    fee, rounding, cash = kernel_order(levels)
    # 0.07 × 2.95 × 0.065 × 0.935 = 0.012550… → $0.0126; 0.07 × 0.01 × 0.0655 × 0.9345 → $0.0001
    assert fee == 126 + 1
    # debits $0.191750 + $0.0126 = $0.204350 → $0.21 and $0.000655 + $0.0001 → $0.01
    assert rounding == (210_000 - 204_350) + (10_000 - 755) - 10_000  # one cent refunded
    assert cash == -(210_000 + 10_000 - 10_000)
    # A direct member: $0.204350 → $0.2044 and $0.000755 → $0.0008.
    fee, rounding, cash = kernel_order(levels, precision_e4=1)
    assert (fee, rounding, cash) == (127, 50 + 45, -(204_400 + 800))


def test_a_sale_whose_fee_exceeds_its_proceeds_is_floored_toward_minus_infinity() -> None:
    # 0.01 contract sold at $0.0002: proceeds $0.000002, fee $0.0001 → balance −$0.000098,
    # floored to −$0.01 (toward −∞, not toward zero).
    assert kernel_order([(2, 1)], side="sell") == (1, 10_000 - 98, -10_000)
    assert kernel_order([(2, 1)], side="sell", precision_e4=1) == (1, 2, -100)


def test_a_flat_series_charges_its_table_fee_per_contract() -> None:
    flat = FeeSchedule(fee_type=FeeType.FLAT, flat_fee_per_contract=Fraction(1, 100))
    # 3.5 contracts × $0.01 = $0.035 at any price; 0.01 contract × $0.01 = $0.0001.
    assert kernel_order([(9_000, 350)], schedule=flat)[0] == 350
    assert kernel_order([(100, 1)], schedule=flat)[0] == 1
    with pytest.raises(ValueError, match="flat_fee_per_contract"):
        FeeSchedule(fee_type=FeeType.FLAT)


def test_bad_settings_are_refused() -> None:
    assert FeeSchedule(multiplier=0.35).multiplier == Fraction(35, 100)
    with pytest.raises(ValueError, match="multiplier"):
        FeeSchedule(multiplier=-1)
    with pytest.raises(ValueError, match="precision"):
        fees.check_account_precision(10)


# -- the bound, for any order -------------------------------------------------------------------

levels_strategy = st.lists(
    st.tuples(st.integers(1, 9_999), st.integers(1, 20_000)), min_size=1, max_size=K
).map(lambda lv: sorted({p: s for p, s in lv}.items()))
schedules = st.sampled_from(
    (
        fees.STANDARD_FEES,
        INDEX,
        FeeSchedule(multiplier=Fraction(3, 7)),
        MAKERS_PAY,
        FeeSchedule(fee_type=FeeType.FLAT, flat_fee_per_contract=Fraction(7, 1_000)),
        fees.NO_FEES,
    )
)


@settings(max_examples=400, deadline=None)
@given(
    levels=levels_strategy,
    side=st.sampled_from(("buy", "sell")),
    schedule=schedules,
    precision_e4=st.sampled_from((100, 1)),
)
def test_an_orders_debit_is_within_a_cent_above_its_cost_plus_trade_fees(
    levels, side, schedule, precision_e4
) -> None:
    """Σ (cost + trade fee rounded up to $0.0001) ≤ debit < that + $0.01, for every order."""
    if side == "buy":
        levels = sorted(levels)  # a buy takes the cheapest first
    else:
        levels = sorted(levels, reverse=True)  # a sale the highest bid first
    fee, rounding, cash = kernel_order(
        levels, side=side, schedule=schedule, precision_e4=precision_e4
    )
    sign = 1 if side == "buy" else -1
    floor_e6 = sum(
        sign * price * size + 100 * schedule.trade_fee_e4(price, size) for price, size in levels
    )
    debit = -cash
    assert floor_e6 <= debit < floor_e6 + fees.CENT_E6
    assert debit == floor_e6 + rounding and fee == sum(
        schedule.trade_fee_e4(p, s) for p, s in levels
    )
    # The oracle's trade fee (exact rationals) agrees with the module's integer one.
    for price, size in levels:
        exact = trade_fee(schedule, price=Fraction(price, 10_000), count=Fraction(size, 100))
        assert exact * 10_000 == schedule.trade_fee_e4(price, size)
