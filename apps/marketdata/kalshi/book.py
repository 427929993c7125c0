"""In-memory order book for one Kalshi market, in the product's fixed-point units.

Kalshi publishes two bid ladders: YES bids and NO bids. A NO bid at q is a YES ask at
$1 - q, so asks are implied, never stored. Prices are ``price_e4`` (10_000 = $1.00) and sizes
``size_e2`` (100 = one contract); see :mod:`apps.marketdata.kalshi.units`.

The book is plain Python with no Django import: the recorder, the simulator and the paper
trader all use it. Readers get copy-free views (``yes_levels``/``no_levels`` are live,
read-only mappings); callers that keep data across awaits should copy what they need.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from itertools import islice
from typing import Literal

from sortedcontainers import SortedDict

from apps.marketdata.kalshi.units import PRICE_SCALE

Side = Literal["yes", "no"]
Level = tuple[int, int]  # (price_e4, size_e2)


class BookError(ValueError):
    """An update that cannot be applied to the book as it stands (the book is left unchanged)."""


class OrderBook:
    """YES and NO bid ladders for one market, sorted by price (best bid = highest price)."""

    __slots__ = ("_no", "_yes", "market_ticker", "updates")

    def __init__(self, market_ticker: str) -> None:
        self.market_ticker = market_ticker
        self._yes: SortedDict = SortedDict()
        self._no: SortedDict = SortedDict()
        self.updates = 0  # snapshots + deltas applied; observers use it to detect change

    # -- writing ---------------------------------------------------------------------------

    def apply_snapshot(self, yes: Iterable[Level], no: Iterable[Level]) -> None:
        """Replace both ladders. Levels are (price_e4, size_e2); sizes must be positive."""
        new_yes = self._ladder(yes, "yes")
        new_no = self._ladder(no, "no")
        self._yes = new_yes
        self._no = new_no
        self.updates += 1

    def _ladder(self, levels: Iterable[Level], side: Side) -> SortedDict:
        ladder = SortedDict()
        for price_e4, size_e2 in levels:
            if not 0 <= price_e4 <= PRICE_SCALE:
                raise BookError(f"{self.market_ticker}: {side} price {price_e4} outside [0, 10000]")
            if size_e2 <= 0:
                raise BookError(f"{self.market_ticker}: {side} level {price_e4} has size {size_e2}")
            if price_e4 in ladder:
                raise BookError(f"{self.market_ticker}: {side} level {price_e4} appears twice")
            ladder[price_e4] = size_e2
        return ladder

    def apply_delta(self, side: str, price_e4: int, delta_e2: int) -> int:
        """Change the resting size at one price; returns the new size (0 = level removed).

        A level that reaches zero disappears. A change that would make a size negative is an
        error (the book is out of sync with the exchange), never a clamp.
        """
        if side == "yes":
            ladder = self._yes
        elif side == "no":
            ladder = self._no
        else:
            raise BookError(f"{self.market_ticker}: side {side!r} is not 'yes' or 'no'")
        new_size = ladder.get(price_e4, 0) + delta_e2
        if new_size > 0:
            ladder[price_e4] = new_size
        elif new_size == 0:
            if price_e4 in ladder:
                del ladder[price_e4]
        else:
            raise BookError(
                f"{self.market_ticker}: {side} level {price_e4} would go to {new_size} "
                f"(delta {delta_e2})"
            )
        self.updates += 1
        return new_size

    def clear(self) -> None:
        """Drop both ladders (a new book epoch starts; wait for the next snapshot)."""
        self._yes = SortedDict()
        self._no = SortedDict()
        self.updates += 1

    # -- reading -----------------------------------------------------------------------------

    @property
    def yes_levels(self) -> Mapping[int, int]:
        """Live read-only view, price_e4 -> size_e2, ascending (best bid last)."""
        return self._yes

    @property
    def no_levels(self) -> Mapping[int, int]:
        """Live read-only view of NO bids in NO prices, ascending (best bid last)."""
        return self._no

    def best_yes_bid(self) -> Level | None:
        return self._yes.peekitem(-1) if self._yes else None

    def best_no_bid(self) -> Level | None:
        return self._no.peekitem(-1) if self._no else None

    def best_yes_ask(self) -> Level | None:
        """Implied from the best NO bid: (10000 - no price, its size)."""
        if not self._no:
            return None
        price, size = self._no.peekitem(-1)
        return PRICE_SCALE - price, size

    def best_no_ask(self) -> Level | None:
        """Implied from the best YES bid: (10000 - yes price, its size)."""
        if not self._yes:
            return None
        price, size = self._yes.peekitem(-1)
        return PRICE_SCALE - price, size

    def spread_e4(self) -> int | None:
        """YES ask - YES bid, or None when either side is empty. Negative means crossed."""
        if not self._yes or not self._no:
            return None
        return PRICE_SCALE - self._no.peekitem(-1)[0] - self._yes.peekitem(-1)[0]

    def mid_e4x2(self) -> int | None:
        """Twice the YES mid price in e4 (an integer, so no rounding): bid + ask."""
        if not self._yes or not self._no:
            return None
        return self._yes.peekitem(-1)[0] + PRICE_SCALE - self._no.peekitem(-1)[0]

    def mid(self) -> float | None:
        """YES mid in dollars, for display and features only."""
        doubled = self.mid_e4x2()
        return None if doubled is None else doubled / (2 * PRICE_SCALE)

    def crosses(self, side: str, price_e4: int) -> bool:
        """Would a ``side`` bid at ``price_e4`` meet the best bid of the other side?

        For a book that was not crossed, this is exactly whether adding size at that price
        crossed it (the cheap check for a replay loop).
        """
        other = self._no if side == "yes" else self._yes
        return bool(other) and price_e4 + other.keys()[-1] >= PRICE_SCALE

    def is_crossed(self) -> bool:
        """True when the best YES bid meets or passes the implied YES ask."""
        spread = self.spread_e4()
        return spread is not None and spread <= 0

    def depth(self, side: str, n: int) -> list[Level]:
        """The best ``n`` bid levels of ``side``, best first, as (price_e4, size_e2)."""
        ladder = self._yes if side == "yes" else self._no
        if side not in ("yes", "no"):
            raise BookError(f"side {side!r} is not 'yes' or 'no'")
        # Reverse iteration of a SortedDict walks its sublists directly (no index math).
        return [(price, ladder[price]) for price in islice(reversed(ladder), max(n, 0))]

    def total_size(self, side: str) -> int:
        """Sum of resting size_e2 on one side."""
        if side not in ("yes", "no"):
            raise BookError(f"side {side!r} is not 'yes' or 'no'")
        return sum((self._yes if side == "yes" else self._no).values())

    def snapshot_levels(self) -> tuple[list[Level], list[Level]]:
        """A copy of both ladders, ascending, for persistence (the recorder's own snapshots)."""
        return list(self._yes.items()), list(self._no.items())

    def __repr__(self) -> str:
        return (
            f"OrderBook({self.market_ticker!r}, yes={len(self._yes)} levels, "
            f"no={len(self._no)} levels, bid={self.best_yes_bid()}, ask={self.best_yes_ask()})"
        )
