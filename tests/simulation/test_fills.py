"""The oracle's taker fills walk the shown book and nothing else, identically on an OrderBook and
on arrays; the book-array layout (apps.simulation.books) they read."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apps.simulation import fees
from apps.simulation.books import (
    BOOK_LEVELS,
    ArrayBook,
    BookArrayError,
    book_to_arrays,
    validate_book_arrays,
)
from tests.simulation import book_from, ladders
from tests.simulation.oracle.fills import Contract, Side, fill_order

# The §4 snapshot, top levels only: YES bids 0.29/0.30, NO bids 0.68/0.69 -> YES ask 0.31.
YES = {2_900: 7_910_183, 3_000: 10_970_666}
NO = {6_800: 11_198_651, 6_900: 13_650_849}


def test_buying_yes_takes_the_best_no_bid_at_one_minus_its_price() -> None:
    fill = fill_order(book_from(YES, NO), contract="yes", side="buy", size_e2=1_000)
    assert fill.fills == ((3_100, 1_000),)
    assert fill.filled_e2 == 1_000
    assert fill.notional_e6 == 3_100 * 1_000  # $3.10 for 10 contracts
    assert fill.avg_price_e4 == 3_100
    # 0.07·10·0.31·0.69 = 0.14973 → $0.1498 (rounded up to $0.0001)
    assert fill.fee_e4 == fees.taker_fee_e4(3_100, 1_000) == 1_498
    # $3.2498 is debited as $3.25 at cent precision: $0.0002 of rounding fee.
    assert fill.rounding_e6 == 200
    assert fill.cash_delta_e6 == -3_250_000


def test_each_order_walks_its_own_ladder_at_its_own_price() -> None:
    book = book_from(YES, NO)
    cases = {
        ("yes", "buy"): 3_100,  # 1 − best NO bid 0.69
        ("yes", "sell"): 3_000,  # best YES bid
        ("no", "buy"): 7_000,  # 1 − best YES bid 0.30
        ("no", "sell"): 6_900,  # best NO bid
    }
    for (contract, side), price in cases.items():
        fill = fill_order(book, contract=contract, side=side, size_e2=100)
        assert fill.fills == ((price, 100),), (contract, side)
        assert fill.contract is Contract(contract) and fill.side is Side(side)


def test_a_large_order_walks_several_levels_best_first_and_fills_partially() -> None:
    book = book_from({3_000: 200, 2_950: 300}, {})
    fill = fill_order(book, contract="yes", side="sell", size_e2=1_000)
    assert fill.fills == ((3_000, 200), (2_950, 300))
    assert fill.filled_e2 == 500 and fill.requested_e2 == 1_000
    assert fill.notional_e6 == 3_000 * 200 + 2_950 * 300
    assert fill.avg_price_e4 == Fraction(3_000 * 200 + 2_950 * 300, 500)
    assert fill.fee_e4 == sum(fees.taker_fee_e4(p, s) for p, s in fill.fills)
    assert fill.cash_delta_e6 == fill.notional_e6 - fill.fee_e4 * 100 - fill.rounding_e6


def test_a_limit_price_stops_the_walk() -> None:
    book = book_from({}, {6_900: 100, 6_800: 100, 6_500: 100})
    # YES asks are 0.31, 0.32, 0.35: a limit of 0.32 takes two levels.
    fill = fill_order(book, contract="yes", side="buy", size_e2=300, limit_price_e4=3_200)
    assert fill.fills == ((3_100, 100), (3_200, 100))
    sell = fill_order(
        book_from({3_000: 100, 2_000: 100}, {}),
        contract="yes",
        side="sell",
        size_e2=200,
        limit_price_e4=2_500,
    )
    assert sell.fills == ((3_000, 100),)


def test_an_empty_side_fills_nothing_and_costs_nothing() -> None:
    fill = fill_order(book_from(YES, {}), contract="yes", side="buy", size_e2=500)
    assert fill.filled_e2 == 0 and fill.fills == () and fill.fee_e4 == 0
    assert fill.avg_price_e4 is None and fill.cash_delta_e6 == 0


def test_only_max_levels_are_visible() -> None:
    deep = {3_000 - i * 10: 100 for i in range(15)}
    book = book_from(deep, {})
    assert fill_order(book, contract="yes", side="sell", size_e2=10**6).filled_e2 == (
        BOOK_LEVELS * 100
    )
    assert (
        fill_order(book, contract="yes", side="sell", size_e2=10**6, max_levels=3).filled_e2 == 300
    )


def test_a_fill_charges_the_series_fee_schedule() -> None:
    book = book_from(YES, NO)
    half = fees.FeeSchedule(multiplier="0.5")
    assert (
        fill_order(book, contract="yes", side="buy", size_e2=10_000, fees=fees.NO_FEES).fee_e4 == 0
    )
    assert fill_order(book, contract="yes", side="buy", size_e2=10_000, fees=half).fee_e4 == (
        fees.taker_fee_e4(3_100, 10_000, multiplier="0.5")
    )


def test_a_non_positive_size_is_refused() -> None:
    with pytest.raises(ValueError, match="positive"):
        fill_order(book_from(YES, NO), contract="yes", side="buy", size_e2=0)


def test_array_books_reject_what_is_not_a_ladder() -> None:
    good = [np.array([3_000, 2_900, 0]), np.array([5, 5, 0])]
    ok = (good[0], good[1], good[0].copy(), good[1].copy())
    validate_book_arrays(*ok)
    bad_cases = {
        "descending": (np.array([2_900, 3_000, 0]), good[1]),
        "empty slot": (np.array([3_000, 0, 2_900]), np.array([5, 0, 5])),
        "carries a price": (np.array([3_000, 2_900, 100]), good[1]),
        "negative": (good[0], np.array([5, -5, 0])),
        "outside": (np.array([10_001, 2_900, 0]), good[1]),
        "integer": (good[0].astype(float), good[1]),
    }
    for message, (px, sz) in bad_cases.items():
        with pytest.raises(BookArrayError, match=message):
            ArrayBook(px, sz, good[0], good[1])


def walkable(side_levels: dict[int, int], complement: bool, max_levels: int):
    """What the order may take: best max_levels bids, priced in the traded contract."""
    best = sorted(side_levels.items(), reverse=True)[:max_levels]
    return [(10_000 - p if complement else p, s) for p, s in best]


orders = st.tuples(
    st.sampled_from(["yes", "no"]),
    st.sampled_from(["buy", "sell"]),
    st.integers(min_value=1, max_value=10**10),
    st.one_of(st.none(), st.integers(min_value=0, max_value=10_000)),
    st.integers(min_value=1, max_value=BOOK_LEVELS),
)


@settings(max_examples=500, deadline=None)
@given(ladders, ladders, orders)
def test_fills_never_exceed_shown_depth_nor_improve_on_shown_prices(yes, no, order) -> None:
    contract, side, size_e2, limit, max_levels = order
    book = book_from(yes, no)
    fill = fill_order(
        book,
        contract=contract,
        side=side,
        size_e2=size_e2,
        limit_price_e4=limit,
        max_levels=max_levels,
    )
    buy = side == "buy"
    # Buying YES / selling NO use the NO ladder; the other two the YES ladder.
    ladder = no if (contract == "yes") == buy else yes
    shown = walkable(ladder, complement=buy, max_levels=max_levels)
    allowed = [(p, s) for p, s in shown if limit is None or (p <= limit if buy else p >= limit)]
    # Every fill is a shown level, taken in book order, never larger than shown.
    assert len(fill.fills) <= len(allowed)
    for (price, size), (shown_price, shown_size) in zip(fill.fills, allowed, strict=False):
        assert price == shown_price
        assert 0 < size <= shown_size
    # Whole levels are taken before the next one is touched; only the last may be partial.
    for (_, size), (_, shown_size) in zip(fill.fills[:-1], allowed, strict=False):
        assert size == shown_size
    assert (
        fill.filled_e2 == sum(s for _, s in fill.fills) == min(size_e2, sum(s for _, s in allowed))
    )
    if limit is not None and fill.fills:
        assert all((p <= limit) if buy else (p >= limit) for p, _ in fill.fills)
    assert fill.notional_e6 == sum(p * s for p, s in fill.fills)
    assert fill.fee_e4 == sum(fees.taker_fee_e4(p, s) for p, s in fill.fills)
    assert 0 <= fill.rounding_e6 < fees.CENT_E6
    if fill.filled_e2:
        best = allowed[0][0]
        assert (fill.avg_price_e4 >= best) if buy else (fill.avg_price_e4 <= best)


@settings(max_examples=300, deadline=None)
@given(ladders, ladders, orders)
def test_an_order_book_and_its_arrays_give_the_same_fill(yes, no, order) -> None:
    contract, side, size_e2, limit, _ = order
    book = book_from(yes, no)
    yes_px, yes_sz, no_px, no_sz = book_to_arrays(book)
    arrays = ArrayBook(yes_px, yes_sz, no_px, no_sz)  # validated
    for view in (arrays, ArrayBook.from_book(book)):
        for side_name in ("yes", "no"):
            assert view.depth(side_name, BOOK_LEVELS) == book.depth(side_name, BOOK_LEVELS)
        kwargs = {"contract": contract, "side": side, "size_e2": size_e2, "limit_price_e4": limit}
        assert fill_order(view, **kwargs) == fill_order(book, **kwargs)


@settings(max_examples=100, deadline=None)
@given(ladders, ladders)
def test_book_arrays_are_padded_ladders_of_the_best_levels(yes, no) -> None:
    yes_px, yes_sz, no_px, no_sz = book_to_arrays(book_from(yes, no))
    validate_book_arrays(yes_px, yes_sz, no_px, no_sz)
    for px, sz, ladder in ((yes_px, yes_sz, yes), (no_px, no_sz, no)):
        best = sorted(ladder.items(), reverse=True)[:BOOK_LEVELS]
        n = len(best)
        assert list(zip(px[:n].tolist(), sz[:n].tolist(), strict=True)) == best
        assert not px[n:].any() and not sz[n:].any()


def test_int32_price_arrays_from_the_history_loader_fill_the_same() -> None:
    book = book_from(YES, NO)
    yes_px, yes_sz, no_px, no_sz = book_to_arrays(book)
    narrow = ArrayBook(yes_px.astype(np.int32), yes_sz, no_px.astype(np.int32), no_sz)
    for contract in ("yes", "no"):
        for side in ("buy", "sell"):
            kwargs = {"contract": contract, "side": side, "size_e2": 3 * 10**7}
            assert fill_order(narrow, **kwargs) == fill_order(book, **kwargs)
