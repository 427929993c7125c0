"""Tests of the pure simulation core; shared book and portfolio builders live here."""

from __future__ import annotations

from hypothesis import strategies as st

from apps.marketdata.kalshi.book import OrderBook

# Whole-book strategies: bid ladders as {price_e4: size_e2}. Prices cover sub-cent ticks and
# the $0 / $1 edges; sizes go from 0.01 contract to 10 million contracts.
prices_e4 = st.integers(min_value=0, max_value=10_000)
sizes_e2 = st.integers(min_value=1, max_value=10**9)
ladders = st.dictionaries(prices_e4, sizes_e2, max_size=14)


def book_from(yes: dict[int, int], no: dict[int, int], ticker: str = "KX-TEST") -> OrderBook:
    """An OrderBook holding exactly these bid ladders."""
    book = OrderBook(ticker)
    book.apply_snapshot(sorted(yes.items()), sorted(no.items()))
    return book
