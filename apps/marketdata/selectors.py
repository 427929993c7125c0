"""Reading recorded market data back."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from apps.marketdata.kalshi.book import OrderBook
from apps.marketdata.kalshi.units import PRICE_SCALE
from apps.marketdata.models import OrderbookDelta, OrderbookSnapshot, RecordingEvent


@dataclass
class RebuiltBook:
    book: OrderBook
    connection_id: uuid.UUID | None
    trusted: bool
    deltas_applied: int
    reason: str = ""


def rebuild_latest_book(
    *, market_ticker: str, connection_id: uuid.UUID | None = None
) -> RebuiltBook:
    """The market's last recorded book: its newest snapshot plus the deltas recorded after it.

    A gap marker on the snapshot's sid after the snapshot makes the result untrusted (the
    deltas after the gap are not applied: something between them was lost).
    """
    snapshots = OrderbookSnapshot.objects.filter(market_ticker=market_ticker)
    if connection_id is not None:
        snapshots = snapshots.filter(connection_id=connection_id)
    snapshot = snapshots.exclude(as_of_sid=None).order_by("-received_at", "-id").first()
    book = OrderBook(market_ticker)
    if snapshot is None:
        return RebuiltBook(book, connection_id, False, 0, "no snapshot recorded")
    book.apply_snapshot(
        [tuple(level) for level in snapshot.yes_levels],
        [tuple(level) for level in snapshot.no_levels],
    )
    gap = (
        RecordingEvent.objects.filter(
            connection_id=snapshot.connection_id,
            kind="gap",
            sid=snapshot.as_of_sid,
            got_seq__gt=snapshot.as_of_seq,
        )
        .order_by("got_seq")
        .first()
    )
    deltas = OrderbookDelta.objects.filter(
        connection_id=snapshot.connection_id,
        market_ticker=market_ticker,
        sid=snapshot.as_of_sid,
        seq__gt=snapshot.as_of_seq,
    )
    if gap is not None and gap.expected_seq is not None:
        deltas = deltas.filter(seq__lt=gap.expected_seq)
    applied = 0
    for side, price_e4, delta_e2 in deltas.order_by("seq").values_list(
        "side", "price_e4", "delta_e2"
    ):
        book.apply_delta(side, price_e4, delta_e2)
        applied += 1
    reason = "" if gap is None else f"gap after seq {gap.expected_seq}"
    return RebuiltBook(book, snapshot.connection_id, gap is None, applied, reason)


@dataclass(frozen=True)
class LadderRow:
    """One price level of a book seen from YES: resting YES bids at ``yes_price_e4`` and
    resting NO bids at ``no_price_e4`` (= $1 - the YES price: a YES ask there)."""

    yes_price_e4: int
    yes_bid_e2: int | None
    no_price_e4: int
    no_bid_e2: int | None
    best_bid: bool = False
    best_ask: bool = False


@dataclass(frozen=True)
class Ladder:
    rows: list[LadderRow]
    best_bid_e4: int | None
    best_ask_e4: int | None

    @property
    def spread_e4(self) -> int | None:
        if self.best_bid_e4 is None or self.best_ask_e4 is None:
            return None
        return self.best_ask_e4 - self.best_bid_e4


def _levels(raw: object) -> dict[int, int]:
    levels: dict[int, int] = {}
    for level in raw if isinstance(raw, list) else []:
        if isinstance(level, list | tuple) and len(level) == 2:
            price, size = level
            if isinstance(price, int) and isinstance(size, int):
                levels[price] = levels.get(price, 0) + size
    return levels


def snapshot_ladder(snapshot: OrderbookSnapshot) -> Ladder:
    """The snapshot's book as one ladder by YES price, highest first: NO bids (YES asks)
    above, YES bids below, as a trader reads a book."""
    yes = _levels(snapshot.yes_levels)
    no_as_yes = {PRICE_SCALE - price: size for price, size in _levels(snapshot.no_levels).items()}
    best_bid = max(yes) if yes else None
    best_ask = min(no_as_yes) if no_as_yes else None
    rows = [
        LadderRow(
            yes_price_e4=price,
            yes_bid_e2=yes.get(price),
            no_price_e4=PRICE_SCALE - price,
            no_bid_e2=no_as_yes.get(price),
            best_bid=price == best_bid,
            best_ask=price == best_ask,
        )
        for price in sorted(set(yes) | set(no_as_yes), reverse=True)
    ]
    return Ladder(rows, best_bid, best_ask)
