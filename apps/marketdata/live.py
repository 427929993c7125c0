"""Throttled top-of-book publishing to the channel layer (group ``book.<ticker>``)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from channels.layers import get_channel_layer

from apps.marketdata.kalshi.book import OrderBook

log = logging.getLogger(__name__)
DEPTH_LEVELS = 5


def book_group(ticker: str) -> str:
    return f"book.{ticker}"


def top_of_book(book: OrderBook, *, trusted: bool, depth: int = DEPTH_LEVELS) -> dict[str, Any]:
    """A JSON-ready picture of one book (prices e4, sizes e2), as the live page shows it."""
    bid, ask = book.best_yes_bid(), book.best_yes_ask()
    return {
        "market_ticker": book.market_ticker,
        "trusted": trusted,
        "yes_bid_e4": bid[0] if bid else None,
        "yes_bid_size_e2": bid[1] if bid else None,
        "yes_ask_e4": ask[0] if ask else None,
        "yes_ask_size_e2": ask[1] if ask else None,
        "spread_e4": book.spread_e4(),
        "yes_depth": book.depth("yes", depth),
        "no_depth": book.depth("no", depth),
        "ts": time.time(),
    }


class BookPublisher:
    """Sends a book's top to its group only when the book changed since the last send."""

    def __init__(self) -> None:
        self.layer = get_channel_layer()
        self._sent_updates: dict[str, int] = {}
        self.published = 0
        self.failures = 0

    async def publish_changed(
        self, books: Mapping[str, OrderBook], *, trusted: Callable[[str], bool]
    ) -> int:
        if self.layer is None:
            return 0
        sent = 0
        for ticker, book in books.items():
            if self._sent_updates.get(ticker) == book.updates:
                continue
            self._sent_updates[ticker] = book.updates
            message = {"type": "book.update", "book": top_of_book(book, trusted=trusted(ticker))}
            try:
                await self.layer.group_send(book_group(ticker), message)
            except Exception as exc:  # the live page must never hurt the recorder
                self.failures += 1
                log.warning("could not publish %s: %s", ticker, exc)
                continue
            sent += 1
        self.published += sent
        return sent
