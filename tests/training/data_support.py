"""Recorded books for validation tests: the fewest rows that make a market "recorded" over a
span — a snapshot before it starts (the book is trusted from the start), one at its end (the
recording reached it) and a delta at each end (the recorded span the defaults read)."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from django.utils import timezone

from apps.marketdata.models import OrderbookDelta, OrderbookSnapshot, RecordingConnection


def record_books(markets: list[str], start: datetime, end: datetime) -> None:
    connection = RecordingConnection.objects.create(
        id=uuid.uuid4(), exchange="local", ws_url="ws://local", opened_at=timezone.now()
    )
    rows, deltas = [], []
    for j, market in enumerate(markets):
        for k, when in enumerate((start, end)):
            deltas.append(
                OrderbookDelta(
                    connection=connection,
                    market_ticker=market,
                    sid=j + 1,
                    seq=10 + k,
                    side="yes",
                    price_e4=4000,
                    delta_e2=100 * (1 - 2 * k),
                    received_at=when,
                )
            )
        for k, when in enumerate((start - timedelta(seconds=1), end)):
            rows.append(
                OrderbookSnapshot(
                    connection=connection,
                    market_ticker=market,
                    sid=j + 1,
                    seq=k + 1,
                    yes_levels=[[4000, 1000]],
                    no_levels=[[5000, 1000]],
                    received_at=when,
                    source="ws",
                    as_of_sid=j + 1,
                    as_of_seq=k + 1,
                )
            )
    OrderbookSnapshot.objects.bulk_create(rows)
    OrderbookDelta.objects.bulk_create(deltas)
