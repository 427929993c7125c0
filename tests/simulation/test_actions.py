"""Action ids (the product's table), and the oracle's masks that forbid exactly the impossible
and its execution through the same code (the kernel is checked against this oracle in
``test_kernel.py``)."""

from __future__ import annotations

import copy
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apps.simulation.actions import (
    ACTIONS_PER_MARKET,
    DEFAULT_SIZES_E2,
    ActionType,
    decode,
    encode,
    sizes_e2_from_contracts,
)
from apps.simulation.books import ArrayBook
from tests.simulation import book_from
from tests.simulation.oracle.actions import Refusal, action_mask, decide, execute
from tests.simulation.oracle.fills import Contract
from tests.simulation.oracle.portfolio import LimitBreach, Portfolio, RiskLimits

DOLLAR_E6 = 1_000_000
DEEP = book_from({3_000: 10**7}, {6_900: 10**7})  # YES 0.30 bid / 0.31 ask, 100k contracts each


def ids(action_type: ActionType) -> list[int]:
    return [encode(action_type, i) for i in range(5)]


def allowed_ids(mask: np.ndarray, action_type: ActionType) -> list[bool]:
    return mask[ids(action_type)].tolist()


def rich(**limits) -> Portfolio:
    limits = {"max_position_e2": 10**9, "max_market_share": 1, **limits}
    return Portfolio(cash_e6=10**6 * DOLLAR_E6, limits=RiskLimits(**limits))


def mask_of(book, portfolio, **kw) -> np.ndarray:
    return action_mask(book=book, portfolio=portfolio, market="M", **kw)


def run(action_type: ActionType, size_index: int, book, portfolio) -> None:
    decision = execute(encode(action_type, size_index), book=book, portfolio=portfolio, market="M")
    assert decision.trades, decision


# -- ids ------------------------------------------------------------------------------------


def test_thirty_ids_decode_to_six_types_by_five_sizes() -> None:
    assert ACTIONS_PER_MARKET == 30
    decoded = [decode(a) for a in range(30)]
    assert [t for t, _ in decoded] == [t for t in ActionType for _ in range(5)]
    for action_type in (ActionType.BUY_YES, ActionType.SELL_YES, ActionType.BUY_NO):
        assert [decode(a)[1] for a in ids(action_type)] == [100, 500, 1_000, 2_500, 5_000]
    # HOLD and FLATTEN ignore the size: all five ids mean the same thing.
    assert {decode(a) for a in ids(ActionType.HOLD)} == {(ActionType.HOLD, 0)}
    assert {decode(a) for a in ids(ActionType.FLATTEN)} == {(ActionType.FLATTEN, 0)}
    assert all(encode(*divmod(a, 5)) == a for a in range(30))


def test_sizes_are_configurable_and_bad_ids_are_refused() -> None:
    sizes = sizes_e2_from_contracts([2, 4, 6, 8, 100])
    assert decode(encode(ActionType.SELL_NO, 4), sizes) == (ActionType.SELL_NO, 10_000)
    for bad in (-1, 30):
        with pytest.raises(ValueError, match="outside"):
            decode(bad)
    with pytest.raises(ValueError):
        encode(ActionType.BUY_YES, 5)
    with pytest.raises(ValueError):
        sizes_e2_from_contracts([1, 2, 3])


# -- one case per rule ----------------------------------------------------------------------


def test_a_flat_account_on_a_deep_book_may_buy_anything_and_sell_nothing() -> None:
    mask = mask_of(DEEP, rich())
    assert mask.dtype == bool and mask.shape == (30,)
    assert allowed_ids(mask, ActionType.HOLD) == [True] * 5
    assert allowed_ids(mask, ActionType.BUY_YES) == [True] * 5
    assert allowed_ids(mask, ActionType.BUY_NO) == [True] * 5
    assert allowed_ids(mask, ActionType.SELL_YES) == [False] * 5
    assert allowed_ids(mask, ActionType.SELL_NO) == [False] * 5
    assert allowed_ids(mask, ActionType.FLATTEN) == [False] * 5  # nothing to flatten


def test_an_untrusted_or_closed_market_allows_only_hold() -> None:
    p = rich()
    run(ActionType.BUY_YES, 1, DEEP, p)
    for kw in ({"trusted": False}, {"is_open": False}):
        mask = mask_of(DEEP, p, **kw)
        assert mask.tolist() == [True] * 5 + [False] * 25, kw
    assert decide(7, book=DEEP, portfolio=p, market="M", trusted=False).refusal is (
        Refusal.UNTRUSTED
    )
    assert decide(7, book=DEEP, portfolio=p, market="M", is_open=False).refusal is Refusal.CLOSED


def test_a_settled_market_allows_only_hold() -> None:
    p = rich()
    run(ActionType.BUY_YES, 1, DEEP, p)
    p.settle("M", "no")
    assert mask_of(DEEP, p).tolist() == [True] * 5 + [False] * 25


def test_no_liquidity_on_the_walked_side_forbids_that_order() -> None:
    only_yes_bids = book_from({3_000: 10**6}, {})
    mask = mask_of(only_yes_bids, rich())
    assert allowed_ids(mask, ActionType.BUY_YES) == [False] * 5  # needs NO bids
    assert allowed_ids(mask, ActionType.BUY_NO) == [True] * 5  # takes YES bids
    p = rich()
    run(ActionType.BUY_YES, 0, DEEP, p)
    no_yes_bids = book_from({}, {6_900: 10**6})
    mask = mask_of(no_yes_bids, p)
    assert allowed_ids(mask, ActionType.SELL_YES) == [False] * 5
    assert allowed_ids(mask, ActionType.FLATTEN) == [False] * 5
    refusal = decide(25, book=no_yes_bids, portfolio=p, market="M").refusal
    assert refusal is Refusal.NO_LIQUIDITY


def test_a_thin_book_still_allows_a_partial_fill() -> None:
    thin = book_from({}, {6_900: 200})  # two contracts offered
    assert allowed_ids(mask_of(thin, rich()), ActionType.BUY_YES) == [True] * 5
    p = rich()
    decision = execute(encode(ActionType.BUY_YES, 4), book=thin, portfolio=p, market="M")
    assert decision.fill.filled_e2 == 200 and p.position("M").yes_e2 == 200


def test_selling_needs_at_least_the_size_held_and_flatten_closes_everything() -> None:
    p = rich()
    run(ActionType.BUY_YES, 1, DEEP, p)  # 5 YES
    run(ActionType.BUY_YES, 0, DEEP, p)
    run(ActionType.BUY_YES, 0, DEEP, p)  # 7 YES
    mask = mask_of(DEEP, p)
    assert allowed_ids(mask, ActionType.SELL_YES) == [True, True, False, False, False]
    assert allowed_ids(mask, ActionType.SELL_NO) == [False] * 5
    assert allowed_ids(mask, ActionType.FLATTEN) == [True] * 5
    assert decide(12, book=DEEP, portfolio=p, market="M").refusal is Refusal.NOT_HELD
    decision = execute(encode(ActionType.FLATTEN, 3), book=DEEP, portfolio=p, market="M")
    assert decision.order.contract is Contract.YES and decision.fill.filled_e2 == 700
    assert p.position("M").held_e2 == 0
    assert decide(25, book=DEEP, portfolio=p, market="M").refusal is Refusal.NO_POSITION


def test_buying_no_while_long_yes_is_allowed_past_the_position_limit() -> None:
    p = rich(max_position_e2=1_000)
    run(ActionType.BUY_YES, 2, DEEP, p)  # 10 YES, at the limit
    mask = mask_of(DEEP, p)
    assert allowed_ids(mask, ActionType.BUY_YES) == [False] * 5
    # Buying NO nets the YES down; 25 NO would leave 15 NO, over the limit of 10.
    assert allowed_ids(mask, ActionType.BUY_NO) == [True, True, True, False, False]


def test_the_position_limit_masks_the_sizes_that_would_break_it() -> None:
    mask = mask_of(DEEP, rich(max_position_e2=2_000))
    assert allowed_ids(mask, ActionType.BUY_YES) == [True, True, True, False, False]
    assert decide(8, book=DEEP, portfolio=rich(max_position_e2=2_000), market="M").refusal is (
        LimitBreach.POSITION
    )


def test_cash_masks_orders_whose_cost_and_fee_it_cannot_pay() -> None:
    # YES ask 0.31: 10 contracts cost $3.10 + $0.15 fee; 5 cost $1.55 + $0.08.
    p = Portfolio(cash_e6=3 * DOLLAR_E6, limits=RiskLimits(max_market_share=1))
    assert allowed_ids(mask_of(DEEP, p), ActionType.BUY_YES) == [True, True, False, False, False]
    assert decide(7, book=DEEP, portfolio=p, market="M").refusal is LimitBreach.CASH


def test_concentration_and_exposure_limits_mask_large_buys() -> None:
    # $100 capital, one market ≤ 20 %: at most ~$20 of YES at 0.31 (about 64 contracts).
    p = Portfolio(cash_e6=100 * DOLLAR_E6, limits=RiskLimits(max_market_share=Fraction(1, 5)))
    assert allowed_ids(mask_of(DEEP, p), ActionType.BUY_YES) == [True, True, True, True, True]
    run(ActionType.BUY_YES, 4, DEEP, p)  # 50 contracts, $15.50
    mask = mask_of(DEEP, p)
    assert allowed_ids(mask, ActionType.BUY_YES) == [True, True, True, False, False]
    assert decide(8, book=DEEP, portfolio=p, market="M").refusal is LimitBreach.CONCENTRATION
    q = Portfolio(cash_e6=100 * DOLLAR_E6, limits=RiskLimits(max_exposure_share="0.1"))
    q.apply_fill("OTHER", execute(9, book=DEEP, portfolio=rich(), market="X").fill, enforce=False)
    assert allowed_ids(mask_of(DEEP, q), ActionType.BUY_YES) == [False] * 5  # $15.50 > $10


def test_a_refused_action_changes_nothing() -> None:
    p = Portfolio(cash_e6=DOLLAR_E6)
    before = (p.cash_e6, dict(p.positions))
    decision = execute(encode(ActionType.BUY_YES, 4), book=DEEP, portfolio=p, market="M")
    assert not decision.allowed and decision.refusal is LimitBreach.CASH
    assert decision.fill is not None  # priced, for the log
    assert (p.cash_e6, dict(p.positions)) == before


# -- properties -----------------------------------------------------------------------------

small_ladders = st.dictionaries(
    st.integers(min_value=0, max_value=10_000), st.integers(1, 200_000), max_size=4
)
mostly_true = st.sampled_from([True, True, True, True, False])
# The book the mask is asked about: usually two-sided, sometimes one-sided or empty.
final_ladders = st.one_of(
    small_ladders.filter(bool),
    small_ladders.filter(bool),
    small_ladders.filter(bool),
    small_ladders,
)
shares = st.sampled_from([Fraction(1, 10), Fraction(1, 2), Fraction(1)])
sizes_configs = st.one_of(
    st.just(DEFAULT_SIZES_E2),
    st.lists(st.integers(1, 6_000), min_size=5, max_size=5).map(tuple),
)


def broken_rules(before: Portfolio, after: Portfolio, limits: RiskLimits) -> set[str]:
    """The risk rules, restated from the portfolio's readers: which did a trade in M break?"""
    broken = set()
    if after.cash_e6 < 0:
        broken.add("cash")
    held_before, held_after = before.position("M").held_e2, after.position("M").held_e2
    if held_after > limits.max_position_e2 and held_after > held_before:
        broken.add("position")
    capital = after.cash_e6 + after.exposure_e6()
    market_before, market_after = before.exposure_e6("M"), after.exposure_e6("M")
    if market_after > limits.max_market_share * capital and market_after > market_before:
        broken.add("concentration")
    total_before, total_after = before.exposure_e6(), after.exposure_e6()
    if total_after > limits.max_exposure_share * capital and total_after > total_before:
        broken.add("exposure")
    return broken


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(
    st.one_of(st.just(10_000 * DOLLAR_E6), st.integers(min_value=0, max_value=500 * DOLLAR_E6)),
    st.integers(min_value=1, max_value=8_000),
    shares,
    shares,
    sizes_configs,
    st.lists(st.tuples(small_ladders, small_ladders, st.integers(0, 29)), max_size=6),
    final_ladders,
    final_ladders,
    mostly_true,
    mostly_true,
)
def test_masks_allow_exactly_what_executes_within_the_rules(
    cash_e6,
    max_position_e2,
    market_share,
    exposure_share,
    sizes,
    history,
    yes,
    no,
    trusted,
    is_open,
) -> None:
    limits = RiskLimits(
        max_position_e2=max_position_e2,
        max_market_share=market_share,
        max_exposure_share=exposure_share,
    )
    p = Portfolio(cash_e6=cash_e6, limits=limits)
    other = book_from({5_000: 10**6}, {5_000: 10**6})
    p.apply_fill("OTHER", execute(5, book=other, portfolio=rich(), market="X").fill, enforce=False)
    for past_yes, past_no, action_id in history:  # reach a random but legal position
        execute(
            action_id, book=book_from(past_yes, past_no), portfolio=p, market="M", sizes_e2=sizes
        )
    book = book_from(yes, no)
    kw = {"portfolio": p, "market": "M", "trusted": trusted, "is_open": is_open, "sizes_e2": sizes}
    mask = action_mask(book=book, **kw)
    assert np.array_equal(mask, action_mask(book=ArrayBook.from_book(book), **kw))
    assert mask[:5].all()
    position = p.position("M")
    for action_id in range(5, 30):
        decision = decide(action_id, book=book, **kw)
        assert mask[action_id] == decision.allowed, decision
        after = copy.deepcopy(p)
        if mask[action_id]:
            executed = execute(action_id, book=book, **{**kw, "portfolio": after})
            assert executed.trades and executed.fill.filled_e2 > 0
            assert not broken_rules(p, after, limits), executed
            continue
        action_type, size_e2 = decode(action_id, sizes)
        contract = "yes" if action_type in (ActionType.BUY_YES, ActionType.SELL_YES) else "no"
        held = position.yes_e2 if contract == "yes" else position.no_e2
        walked = {  # the ladder each order would take
            ActionType.BUY_YES: no,
            ActionType.SELL_YES: yes,
            ActionType.BUY_NO: yes,
            ActionType.SELL_NO: no,
            ActionType.FLATTEN: yes if position.yes_e2 else no,
        }[action_type]
        if not trusted or not is_open:
            continue
        if action_type is ActionType.FLATTEN and position.held_e2 == 0:
            continue
        if action_type in (ActionType.SELL_YES, ActionType.SELL_NO) and size_e2 > held:
            continue
        if not walked:
            continue
        # Otherwise the order would fill but break a rule: book it regardless and see.
        after.apply_fill("M", decision.fill, enforce=False)
        assert broken_rules(p, after, limits), decision
