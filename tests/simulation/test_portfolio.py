"""The oracle's portfolio accounting (tests/simulation/oracle): cash, positions, netting, P&L,
settlement, limits, drawdown."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apps.simulation.fees import NO_FEES
from tests.simulation import book_from
from tests.simulation.oracle.fills import Contract, Fill, Side, fill_order
from tests.simulation.oracle.portfolio import (
    LimitBreach,
    LimitError,
    MarketPosition,
    Portfolio,
    RiskLimits,
    settlement_price_e4,
)

DOLLAR_E6 = 1_000_000
BOOK = book_from({5_000: 10**8, 4_000: 10**8}, {5_000: 10**8, 4_500: 10**8})  # YES 0.50 / 0.50


def buy(contract: str, size_e2: int, book=BOOK, **kw) -> Fill:
    return fill_order(book, contract=contract, side="buy", size_e2=size_e2, **kw)


def sell(contract: str, size_e2: int, book=BOOK, **kw) -> Fill:
    return fill_order(book, contract=contract, side="sell", size_e2=size_e2, **kw)


def loose(**limits) -> RiskLimits:
    """Limits that stay out of the way unless a test sets one."""
    return RiskLimits(**{"max_position_e2": 10**9, "max_market_share": 1, **limits})


def rich(**limits) -> Portfolio:
    return Portfolio(cash_e6=1_000_000 * DOLLAR_E6, limits=loose(**limits))


def test_buying_100_yes_at_50_cents_costs_50_dollars_plus_the_1_75_fee() -> None:
    p = Portfolio(cash_e6=100 * DOLLAR_E6, limits=loose())
    pos = p.apply_fill("M", buy("yes", 10_000))
    assert p.cash_e6 == (100 - 50 - 1.75) * DOLLAR_E6
    assert (pos.yes_e2, pos.no_e2, pos.cost_e6, pos.fees_e4) == (10_000, 0, 50 * DOLLAR_E6, 17_500)
    assert pos.avg_entry_e4 == 5_000
    assert p.fees_paid_e4 == 17_500 and p.exposure_e6() == 50 * DOLLAR_E6


def test_selling_part_realizes_pnl_at_the_average_cost() -> None:
    p = rich()
    p.apply_fill("M", buy("yes", 1_000, book=book_from({}, {6_000: 10**6})))  # 10 @ 0.40
    p.apply_fill("M", buy("yes", 1_000, book=book_from({}, {4_000: 10**6})))  # 10 @ 0.60
    pos = p.position("M")
    assert pos.avg_entry_e4 == 5_000
    p.apply_fill("M", sell("yes", 500, book=book_from({7_000: 10**6}, {})))  # 5 @ 0.70
    pos = p.position("M")
    assert pos.yes_e2 == 1_500 and pos.cost_e6 == 7_500_000
    assert p.realized_e6 == 5 * (7_000 - 5_000) * 100  # 5 contracts × $0.20 = $1.00
    assert pos.avg_entry_e4 == 5_000


def test_buying_no_while_long_yes_nets_pairs_into_a_dollar_each() -> None:
    p = Portfolio(cash_e6=100 * DOLLAR_E6, limits=loose())
    p.apply_fill("M", buy("yes", 1_000, book=book_from({}, {6_000: 10**6}), fees=NO_FEES))
    cash = p.cash_e6
    p.apply_fill("M", buy("no", 400, book=book_from({4_500: 10**6}, {}), fees=NO_FEES))  # @0.55
    pos = p.position("M")
    assert (pos.yes_e2, pos.no_e2) == (600, 0)
    assert pos.cost_e6 == 6 * 400_000  # 6 YES left at their $0.40
    # Paid 4 × 0.55, received 4 × $1: realized 4 × (1 − 0.40 − 0.55) = $0.20.
    assert p.cash_e6 == cash - 2_200_000 + 4_000_000
    assert p.realized_e6 == 200_000


def test_settlement_pays_a_dollar_zero_or_the_scalar_value() -> None:
    assert settlement_price_e4("yes") == 10_000
    assert settlement_price_e4("no") == 0
    assert settlement_price_e4("scalar", 3_700) == 3_700
    with pytest.raises(ValueError):
        settlement_price_e4("scalar")
    for result, value, yes_pays in (
        ("yes", None, 10_000),
        ("no", None, 0),
        ("scalar", 2_500, 2_500),
    ):
        p = rich()
        p.apply_fill("Y", buy("yes", 1_000, fees=NO_FEES))
        p.apply_fill("N", buy("no", 1_000, fees=NO_FEES))
        cash = p.cash_e6
        paid = p.settle("Y", result, value) + p.settle("N", result, value)
        assert paid == 1_000 * yes_pays + 1_000 * (10_000 - yes_pays)
        assert p.cash_e6 == cash + paid
        assert p.exposure_e6() == 0
        assert p.realized_e6 == paid - 2 * 1_000 * 5_000


def test_a_settled_market_takes_no_more_fills_and_settles_once() -> None:
    p = rich()
    p.apply_fill("M", buy("yes", 100))
    p.settle("M", "yes")
    assert p.check_fill("M", buy("yes", 100)) == [LimitBreach.SETTLED]
    with pytest.raises(LimitError):
        p.apply_fill("M", buy("yes", 100), enforce=False)
    with pytest.raises(ValueError, match="already settled"):
        p.settle("M", "no")


def test_selling_what_is_not_held_is_refused_even_unenforced() -> None:
    p = rich()
    p.apply_fill("M", buy("yes", 100))
    assert p.check_fill("M", sell("yes", 200)) == [LimitBreach.NOT_HELD]
    assert p.check_fill("M", sell("no", 100)) == [LimitBreach.NOT_HELD]
    with pytest.raises(LimitError, match="not_held"):
        p.apply_fill("M", sell("yes", 200), enforce=False)


def test_cash_may_not_go_negative() -> None:
    p = Portfolio(cash_e6=50 * DOLLAR_E6, limits=loose())
    # $50 + $1.75 fee; with cash below zero the exposure also exceeds capital.
    assert p.check_fill("M", buy("yes", 10_000))[0] is LimitBreach.CASH
    assert p.check_fill("M", buy("yes", 9_000)) == []


def test_position_limit_blocks_growth_but_not_reduction() -> None:
    p = rich(max_position_e2=1_000)
    assert p.check_fill("M", buy("yes", 1_000)) == []
    assert p.check_fill("M", buy("yes", 1_100)) == [LimitBreach.POSITION]
    p.apply_fill("M", buy("yes", 1_500), enforce=False)  # over the limit, e.g. a limit change
    assert p.check_fill("M", buy("yes", 100)) == [LimitBreach.POSITION]
    assert p.check_fill("M", sell("yes", 100)) == []
    assert p.check_fill("M", buy("no", 100)) == []  # nets down to 14


def test_concentration_and_exposure_are_shares_of_capital() -> None:
    p = Portfolio(cash_e6=1_000 * DOLLAR_E6, limits=loose(max_market_share=0.1))
    # $1,000 capital: 10 % is $100 = 200 contracts at $0.50 (fees shrink capital a little).
    assert p.check_fill("A", buy("yes", 19_000, fees=NO_FEES)) == []
    assert p.check_fill("A", buy("yes", 20_100, fees=NO_FEES)) == [LimitBreach.CONCENTRATION]
    q = Portfolio(cash_e6=1_000 * DOLLAR_E6, limits=loose(max_exposure_share="0.3"))
    q.apply_fill("A", buy("yes", 40_000, fees=NO_FEES))  # $200
    assert q.check_fill("B", buy("yes", 20_000, fees=NO_FEES)) == []  # $300 of $1,000
    assert q.check_fill("B", buy("yes", 20_100, fees=NO_FEES)) == [LimitBreach.EXPOSURE]


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError):
        RiskLimits(max_position_e2=0)
    with pytest.raises(ValueError):
        RiskLimits(max_market_share=0)
    with pytest.raises(ValueError):
        RiskLimits(max_exposure_share=1.5)
    assert RiskLimits(max_market_share=0.25).max_market_share == Fraction(1, 4)
    with pytest.raises(ValueError):
        Portfolio(cash_e6=-1)


def test_equity_marks_at_mid_or_at_cost_and_drawdown_tracks_the_peak() -> None:
    p = Portfolio(cash_e6=100 * DOLLAR_E6, limits=loose())
    p.apply_fill("M", buy("yes", 1_000, fees=NO_FEES))  # 10 @ 0.50
    assert p.equity_e6({}) == 100 * DOLLAR_E6  # at cost
    assert p.equity_e6({"M": 2 * 6_000}) == 101 * DOLLAR_E6  # mid 0.60
    assert p.equity_e6({"M": 12_001}) == Fraction(2 * 101 * DOLLAR_E6 + 1_000, 2)  # half tick
    assert p.record_equity(p.equity_e6({"M": 2 * 6_000})) == 0.0
    assert p.record_equity(Fraction(909 * DOLLAR_E6, 10)) == pytest.approx(0.1)
    assert p.record_equity(101 * DOLLAR_E6) == 0.0
    assert p.max_drawdown == pytest.approx(0.1)


def test_a_no_position_is_marked_at_one_minus_the_yes_mid() -> None:
    pos = MarketPosition(no_e2=100, no_cost_e6=300_000)  # 1 NO bought at 0.30
    assert pos.unrealized_e6(2 * 6_000) == 100_000  # NO worth 0.40


steps = st.lists(
    st.tuples(
        st.sampled_from(["A", "B"]),
        st.sampled_from(list(Contract)),
        st.sampled_from(list(Side)),
        st.integers(min_value=1, max_value=5_000),
        st.dictionaries(st.integers(100, 9_900), st.integers(1, 3_000), min_size=1, max_size=4),
        st.dictionaries(st.integers(100, 9_900), st.integers(1, 3_000), min_size=1, max_size=4),
        st.sampled_from(["keep", "settle_yes", "settle_no"]),
    ),
    max_size=25,
)


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=500 * DOLLAR_E6), steps, st.integers(0, 20_000))
def test_the_books_always_balance(cash_e6, ops, mark) -> None:
    """equity − initial cash = realized + unrealized − trade fees − rounding fees, exactly,
    after any sequence."""
    p = Portfolio(cash_e6=cash_e6, limits=RiskLimits(max_position_e2=3_000))
    for market, contract, side, size, yes, no, event in ops:
        fill = fill_order(book_from(yes, no), contract=contract, side=side, size_e2=size)
        if not p.check_fill(market, fill):
            p.apply_fill(market, fill)
        if event != "keep" and not p.position(market).settled and len(p.positions) > 1:
            p.settle(market, event.removeprefix("settle_"))
        marks = {"A": min(mark, 20_000), "B": None}
        unrealized = sum(pos.unrealized_e6(marks.get(m)) for m, pos in p)
        fees_e6 = p.fees_paid_e4 * 100 + p.rounding_fees_e6  # trade fees + net rounding fees
        assert p.equity_e6(marks) - cash_e6 == p.realized_e6 + unrealized - fees_e6
        assert p.unrealized_e6(marks) == unrealized
        assert p.exposure_e6() == sum(pos.cost_e6 for _, pos in p)  # the cached total holds
        assert p.cash_e6 >= 0
        for _, pos in p:
            assert pos.yes_e2 >= 0 and pos.no_e2 >= 0
            assert pos.yes_e2 == 0 or pos.no_e2 == 0  # netted
            assert (pos.cost_e6 == 0) == (pos.held_e2 == 0)
            assert pos.held_e2 <= 3_000


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=10**12), min_size=1, max_size=30))
def test_record_equity_x2_matches_record_equity_exactly(equities_x2) -> None:
    exact = Portfolio(cash_e6=10**9)
    fast = Portfolio(cash_e6=10**9)
    for e in equities_x2:
        assert fast.record_equity_x2(e) == exact.record_equity(Fraction(e, 2))
        assert fast.peak_equity_e6 == exact.peak_equity_e6
        assert fast.max_drawdown == exact.max_drawdown
