"""Reading recorded market data back."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from apps.marketdata.book import OrderBook
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
