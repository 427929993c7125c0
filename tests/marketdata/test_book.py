"""The order book against a naive reference model, plus its read API."""

from __future__ import annotations

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from apps.marketdata.kalshi.book import BookError, OrderBook

prices = st.integers(min_value=1, max_value=9_999)
sizes = st.integers(min_value=1, max_value=10_000_000)
ladder = st.dictionaries(prices, sizes, max_size=30)


class NaiveBook:
    """The obviously-correct model: two dicts and sorting on every read."""

    def __init__(self) -> None:
        self.sides: dict[str, dict[int, int]] = {"yes": {}, "no": {}}

    def snapshot(self, yes: dict[int, int], no: dict[int, int]) -> None:
        self.sides = {"yes": dict(yes), "no": dict(no)}

    def delta(self, side: str, price: int, delta: int) -> bool:
        new = self.sides[side].get(price, 0) + delta
        if new < 0:
            return False
        if new == 0:
            self.sides[side].pop(price, None)
        else:
            self.sides[side][price] = new
        return True

    def best(self, side: str) -> tuple[int, int] | None:
        levels = self.sides[side]
        if not levels:
            return None
        price = max(levels)
        return price, levels[price]


events = st.lists(
    st.one_of(
        st.tuples(st.just("snapshot"), ladder, ladder),
        st.tuples(
            st.just("delta"),
            st.sampled_from(["yes", "no"]),
            prices,
            st.integers(min_value=-2_000, max_value=2_000),
        ),
    ),
    max_size=60,
)


@settings(max_examples=400, deadline=None)
@given(events)
def test_it_matches_a_naive_book_under_random_snapshots_and_deltas(ops) -> None:
    book, naive = OrderBook("KX-TEST"), NaiveBook()
    for op in ops:
        if op[0] == "snapshot":
            _, yes, no = op
            book.apply_snapshot(sorted(yes.items()), sorted(no.items()))
            naive.snapshot(yes, no)
        else:
            _, side, price, delta = op
            if naive.delta(side, price, delta):
                book.apply_delta(side, price, delta)
            else:
                before = book.snapshot_levels()
                with pytest.raises(BookError):
                    book.apply_delta(side, price, delta)
                assert book.snapshot_levels() == before, "a rejected delta must not change the book"
        for side in ("yes", "no"):
            assert dict(book.yes_levels if side == "yes" else book.no_levels) == naive.sides[side]
            assert book.depth(side, 5) == sorted(naive.sides[side].items(), reverse=True)[:5]
            assert book.total_size(side) == sum(naive.sides[side].values())
        yes_best, no_best = naive.best("yes"), naive.best("no")
        assert book.best_yes_bid() == yes_best
        assert book.best_no_bid() == no_best
        assert book.best_yes_ask() == (
            None if no_best is None else (10_000 - no_best[0], no_best[1])
        )
        assert book.best_no_ask() == (
            None if yes_best is None else (10_000 - yes_best[0], yes_best[1])
        )
        if yes_best and no_best:
            assert book.spread_e4() == 10_000 - no_best[0] - yes_best[0]
            assert book.is_crossed() == (yes_best[0] + no_best[0] >= 10_000)


def test_it_derives_asks_spread_and_mid_like_the_protocol_example() -> None:
    # kalshi-protocol.md §4: YES bid 0.30, NO bid 0.69 -> YES ask 0.31, NO ask 0.70, spread 1c.
    book = OrderBook("KXMLBGAME-26OCT072000TBNYY-NYY")
    book.apply_snapshot(
        yes=[(100, 121003664), (200, 27620892), (2900, 7910183), (3000, 10970666)],
        no=[(100, 182323316), (6800, 11198651), (6900, 13650849)],
    )
    assert book.best_yes_bid() == (3000, 10970666)
    assert book.best_yes_ask() == (3100, 13650849)
    assert book.best_no_ask() == (7000, 10970666)
    assert book.spread_e4() == 100
    assert book.mid() == pytest.approx(0.305)
    assert book.mid_e4x2() == 6100
    assert not book.is_crossed()


def test_a_level_that_reaches_zero_disappears() -> None:
    book = OrderBook("M")
    book.apply_snapshot([(1700, 13900)], [])
    assert book.apply_delta("yes", 1700, -13900) == 0
    assert book.best_yes_bid() is None
    assert 1700 not in book.yes_levels


def test_a_negative_size_is_an_error_not_a_clamp() -> None:
    book = OrderBook("M")
    book.apply_snapshot([(1700, 100)], [])
    with pytest.raises(BookError, match="would go to -1"):
        book.apply_delta("yes", 1700, -101)
    assert book.best_yes_bid() == (1700, 100)


def test_it_rejects_bad_snapshots_and_keeps_the_old_book() -> None:
    book = OrderBook("M")
    book.apply_snapshot([(1700, 100)], [(8000, 5)])
    for yes, no in (([(1700, 0)], []), ([(10_001, 5)], []), ([(5, 1), (5, 2)], [])):
        with pytest.raises(BookError):
            book.apply_snapshot(yes, no)
    assert book.snapshot_levels() == ([(1700, 100)], [(8000, 5)])


def test_an_unknown_side_is_rejected() -> None:
    with pytest.raises(BookError):
        OrderBook("M").apply_delta("maybe", 100, 1)


def test_a_crossed_book_is_detected() -> None:
    book = OrderBook("M")
    book.apply_snapshot([(5000, 100)], [(5000, 100)])
    assert book.is_crossed()


@settings(max_examples=300, deadline=None)
@given(ladder, ladder, st.sampled_from(["yes", "no"]), prices, sizes)
def test_crosses_predicts_whether_adding_size_crosses_an_uncrossed_book(
    yes, no, side, price, size
) -> None:
    book = OrderBook("M")
    book.apply_snapshot(sorted(yes.items()), sorted(no.items()))
    assume(not book.is_crossed())
    predicted = book.crosses(side, price)
    book.apply_delta(side, price, size)
    assert predicted == book.is_crossed()
