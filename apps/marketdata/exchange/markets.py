"""Markets, their tick grids and their authoritative books, as the local exchange holds them.

A book side is a plain ``dict`` ``price_e4 -> size_e2``. Both sides are *bids* (Kalshi sends
no asks): ``yes`` holds bids to buy YES, ``no`` bids to buy NO, priced in NO dollars. A NO bid
at ``q`` is a YES ask at ``1 - q``, so the book is crossed when ``best_yes + best_no >= $1``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from apps.marketdata.kalshi.units import PRICE_SCALE, e4_to_dollars

from .errors import MarketError

SIDES = ("yes", "no")

# Namespace for market ids derived from tickers (replayed data that carries no market_id):
# the same ticker always gets the same UUID, across runs and processes.
_MARKET_ID_NAMESPACE = uuid.UUID("6f1d3c2a-9b0e-4c55-8a7e-2d6b1f0c9e41")


@dataclass(frozen=True)
class PriceRange:
    """Prices in ``[start_e4, end_e4]`` move in steps of ``step_e4`` (Kalshi ``price_ranges``)."""

    start_e4: int
    end_e4: int
    step_e4: int

    def as_json(self) -> dict[str, str]:
        return {
            "start": e4_to_dollars(self.start_e4),
            "end": e4_to_dollars(self.end_e4),
            "step": e4_to_dollars(self.step_e4),
        }


# The documented structures (kalshi-protocol.md §4) plus the observed multivariate one.
PRICE_LEVEL_STRUCTURES: dict[str, tuple[PriceRange, ...]] = {
    "linear_cent": (PriceRange(0, PRICE_SCALE, 100),),
    "deci_cent": (PriceRange(0, PRICE_SCALE, 10),),
    "tapered_deci_cent": (
        PriceRange(0, 1_000, 10),
        PriceRange(1_000, 9_000, 100),
        PriceRange(9_000, PRICE_SCALE, 10),
    ),
    "center_deci_edge_centi_cent": (
        PriceRange(0, 100, 1),
        PriceRange(100, 9_900, 10),
        PriceRange(9_900, PRICE_SCALE, 1),
    ),
}


# Market ``status`` values in REST responses (kalshi-protocol.md §9).
MARKET_STATUSES = (
    "initialized",
    "inactive",
    "active",
    "closed",
    "determined",
    "disputed",
    "amended",
    "finalized",
)


@dataclass
class Series:
    """A series and its fee settings (``GET /series/{ticker}``, kalshi-protocol.md §8).

    ``fee_multiplier`` is kept as the decimal text Kalshi's JSON number is written from
    (``"1"``, ``"0.5"``), so a multiplier is never a binary fraction on the wire.
    """

    ticker: str
    fee_type: str = "quadratic"
    fee_multiplier: str = "1"
    title: str = ""
    frequency: str = "daily"
    category: str = "Synthetic"

    def __post_init__(self) -> None:
        if self.fee_type not in FEE_TYPES:
            raise MarketError(f"series {self.ticker}: unknown fee_type {self.fee_type!r}")
        if not self.title:
            self.title = f"Local exchange series {self.ticker}"


@dataclass(frozen=True)
class FeeChange:
    """A scheduled change of a series' fee settings (``GET /series/fee_changes``)."""

    id: str
    series_ticker: str
    fee_type: str
    fee_multiplier: str
    scheduled_ts: str  # RFC 3339


FEE_TYPES = ("quadratic", "quadratic_with_maker_fees", "flat")


def market_id_for(ticker: str) -> str:
    """A stable UUID for a ticker that has no recorded ``market_id``."""
    return str(uuid.uuid5(_MARKET_ID_NAMESPACE, ticker))


@dataclass(eq=False)
class Market:
    """One binary market: its static description (REST fields) and its live book.

    ``fractional`` says whether resting sizes may be fractions of a contract (any ``size_e2``)
    or whole contracts only (multiples of 100).
    """

    ticker: str
    event_ticker: str
    series_ticker: str
    price_level_structure: str = "linear_cent"
    fractional: bool = False
    market_id: str = ""
    title: str = ""
    open_time: str = "2026-01-01T00:00:00Z"
    close_time: str = "2026-12-31T23:59:00Z"
    # Where the market is in its life (kalshi-protocol.md §9): the REST ``status`` field,
    # ``result`` ("" until determined) and the scalar settlement value once determined.
    status: str = "active"
    can_close_early: bool = True
    result: str = ""
    settlement_value_e4: int | None = None
    settlement_timer_seconds: int = 1
    yes: dict[int, int] = field(default_factory=dict)
    no: dict[int, int] = field(default_factory=dict)
    # Trade statistics, for REST and the ticker channel.
    volume_e2: int = 0
    volume_value_e6: int = 0  # sum of count_e2 * yes_price_e4 (dollars * 1e6)
    last_price_e4: int = 0
    last_trade_size_e2: int = 0
    # The top of book last announced on the ticker channel.
    last_ticker_top: tuple[int, int, int, int] | None = None

    def __post_init__(self) -> None:
        if self.price_level_structure not in PRICE_LEVEL_STRUCTURES:
            raise MarketError(
                f"market {self.ticker}: unknown price_level_structure "
                f"{self.price_level_structure!r}; known: {sorted(PRICE_LEVEL_STRUCTURES)}"
            )
        if not self.ticker:
            raise MarketError("a market needs a ticker")
        if not self.market_id:
            self.market_id = market_id_for(self.ticker)
        if not self.title:
            self.title = f"Local exchange market {self.ticker}"
        if self.status not in MARKET_STATUSES:
            raise MarketError(f"market {self.ticker}: unknown status {self.status!r}")
        # Tickers are written into frames many times a second: encode once.
        self.ticker_json = json.dumps(self.ticker)
        self.price_ranges = PRICE_LEVEL_STRUCTURES[self.price_level_structure]
        for side in SIDES:
            for price_e4, size_e2 in self.side(side).items():
                self._check_level(side, price_e4, size_e2)

    def _check_level(self, side: str, price_e4: int, size_e2: int) -> None:
        if not 0 < price_e4 < PRICE_SCALE:
            raise MarketError(f"market {self.ticker}: {side} price {price_e4} is outside (0, 1)")
        if size_e2 <= 0:
            raise MarketError(f"market {self.ticker}: {side} level {price_e4} has size {size_e2}")

    def side(self, side: str) -> dict[int, int]:
        if side == "yes":
            return self.yes
        if side == "no":
            return self.no
        raise MarketError(f"book side must be 'yes' or 'no', got {side!r}")

    # ---- book -----------------------------------------------------------------------------

    def apply_delta(self, side: str, price_e4: int, delta_e2: int) -> None:
        """Kalshi's delta rule: new = old + delta; a level at or below zero disappears."""
        levels = self.side(side)
        new = levels.get(price_e4, 0) + delta_e2
        if new > 0:
            levels[price_e4] = new
        else:
            levels.pop(price_e4, None)

    def best_yes(self) -> int:
        """Best YES bid in price_e4, 0 when the side is empty."""
        return max(self.yes) if self.yes else 0

    def best_no(self) -> int:
        """Best NO bid in NO price_e4, 0 when the side is empty."""
        return max(self.no) if self.no else 0

    def levels(self, side: str) -> list[tuple[int, int]]:
        """Ascending ``(price_e4, size_e2)``, best bid last (the wire order)."""
        return sorted(self.side(side).items())

    def top(self) -> tuple[int, int, int, int]:
        """(best yes bid, its size, best no bid, its size); zeros for an empty side."""
        by, bn = self.best_yes(), self.best_no()
        return by, self.yes.get(by, 0), bn, self.no.get(bn, 0)

    def record_trade(self, yes_price_e4: int, count_e2: int) -> None:
        self.volume_e2 += count_e2
        self.volume_value_e6 += count_e2 * yes_price_e4
        self.last_price_e4 = yes_price_e4
        self.last_trade_size_e2 = count_e2

    # ---- tick grid ------------------------------------------------------------------------

    def is_on_grid(self, price_e4: int) -> bool:
        if not 0 < price_e4 < PRICE_SCALE:
            return False
        return any(
            r.start_e4 <= price_e4 <= r.end_e4 and (price_e4 - r.start_e4) % r.step_e4 == 0
            for r in self.price_ranges
        )

    def floor_to_grid(self, price_e4: int) -> int:
        """The highest grid price <= ``price_e4`` (0 when there is none above zero)."""
        if price_e4 >= PRICE_SCALE:
            price_e4 = PRICE_SCALE - 1
        for r in self.price_ranges:
            if r.start_e4 <= price_e4 <= r.end_e4:
                snapped = r.start_e4 + (price_e4 - r.start_e4) // r.step_e4 * r.step_e4
                return max(snapped, 0)
        return 0

    def tick_below(self, price_e4: int) -> int:
        """The size of the grid step just below ``price_e4``."""
        for r in self.price_ranges:
            if r.start_e4 < price_e4 <= r.end_e4:
                return r.step_e4
        return self.price_ranges[0].step_e4

    def steps_down(self, price_e4: int, steps: int) -> int:
        """``price_e4`` moved ``steps`` grid ticks down (may reach 0 = off the grid)."""
        price = self.floor_to_grid(price_e4)
        for _ in range(steps):
            if price <= 0:
                return 0
            price -= self.tick_below(price)
        return max(price, 0)

    def min_size_e2(self) -> int:
        return 1 if self.fractional else 100


def book_from_levels(
    levels: Iterable[tuple[int, int]] | Mapping[int, int] | None, *, what: str
) -> dict[int, int]:
    """A book side from ``[(price_e4, size_e2), ...]``; rejects duplicates and bad values."""
    if levels is None:
        return {}
    items = levels.items() if isinstance(levels, Mapping) else levels
    book: dict[int, int] = {}
    for level in items:
        try:
            price_e4, size_e2 = level
        except (TypeError, ValueError):
            raise MarketError(
                f"{what}: level {level!r} is not a (price_e4, size_e2) pair"
            ) from None
        if type(price_e4) is not int or type(size_e2) is not int:
            raise MarketError(f"{what}: level {level!r} must hold two integers")
        if price_e4 in book:
            raise MarketError(f"{what}: price {price_e4} appears twice")
        if size_e2 > 0:
            book[price_e4] = size_e2
    return book
