"""kill -9 leaves history honest: the next recorder closes the dead connection with a marker
at its last stored row, and the loaded history does not trust the books through the downtime.

The real ``manage.py ingest_orderbook`` runs in a subprocess against the local exchange; it is
SIGKILLed mid-stream (the rows of its last flush interval are lost, as documented), then a
second recorder starts on the same host and spill directory.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from django.db import connection

from apps.marketdata.exchange import ExchangeThread
from apps.marketdata.models import (
    OrderbookDelta,
    OrderbookSnapshot,
    RecordingConnection,
    RecordingEvent,
)
from apps.simulation.loader import load
from tests.marketdata.recorder_support import Recorder, database_url
from tests.marketdata.test_ingest import dev_key_exchange

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]
DOWNTIME_S = 1.5
STEP_S = 0.1


def last_row_at(conn) -> datetime:
    """The newest stored row of a connection, by plain aggregates over every table (the
    sweep's own disconnect marker left out)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT max(t) FROM ("
            " SELECT max(received_at) t FROM rl_orderbook_deltas WHERE connection_id = %(c)s"
            " UNION ALL SELECT max(received_at) FROM rl_orderbook_snapshots"
            "  WHERE connection_id = %(c)s"
            " UNION ALL SELECT max(received_at) FROM rl_public_trades WHERE connection_id = %(c)s"
            " UNION ALL SELECT max(at) FROM rl_recording_events"
            "  WHERE connection_id = %(c)s AND kind <> 'disconnect') rows",
            {"c": conn},
        )
        return cursor.fetchone()[0]


def test_a_killed_recorders_connection_is_closed_by_the_next_and_history_untrusts_the_gap(
    settings,
) -> None:
    var_dir = Path(settings.VAR_DIR)
    exchange = dev_key_exchange(settings, markets=5, rate=3000)
    args = ("--flush-interval", "0.25", "--snapshot-interval", "1", "--progress-interval", "1")
    recorders: list[Recorder] = []
    try:
        with ExchangeThread(exchange) as url:
            first = Recorder(var_dir, url, database_url(), *args)
            recorders.append(first)
            first.wait_for(lambda: OrderbookDelta.objects.count() >= 2500, 90, "2500 stored deltas")
            first.kill()
            time.sleep(DOWNTIME_S)
            second = Recorder(var_dir, url, database_url(), *args)
            recorders.append(second)

            def settled() -> bool:
                closed = RecordingConnection.objects.filter(pid=first.pid).exclude(closed_at=None)
                mine = RecordingConnection.objects.filter(pid=second.pid).first()
                return (
                    closed.exists()
                    and mine is not None
                    and OrderbookDelta.objects.filter(connection_id=mine.id).count() >= 1000
                )

            second.wait_for(settled, 90, "the dead connection closed and new data stored")
            assert second.stop() == 0, second.output[-3000:]
    finally:
        for recorder in recorders:
            recorder.ensure_dead()

    dead = RecordingConnection.objects.get(pid=first.pid)
    alive = RecordingConnection.objects.get(pid=second.pid)
    last = last_row_at(dead.id)
    # Closed at its last stored row, with a disconnect marker at that very instant.
    assert dead.closed_at == last, (dead.closed_at, last)
    assert f"pid {first.pid}" in dead.close_reason
    marker = RecordingEvent.objects.get(connection_id=dead.id, kind="disconnect")
    assert (marker.at, marker.market_ticker, marker.sid) == (last, "", None)
    assert f"closed connection {dead.id}" in second.output
    # Both connections recorded their connected marker; the second closed itself cleanly.
    for conn in (dead, alive):
        assert RecordingEvent.objects.filter(connection_id=conn.id, kind="connected").count() == 1
    assert alive.closed_at is not None and alive.close_reason == "stopped"

    # History over the crash: trusted before the last stored row of the killed recorder,
    # untrusted from there until the second recorder's snapshot of each market.
    markets = exchange.tickers()
    start = OrderbookSnapshot.objects.filter(connection_id=dead.id).order_by("received_at")[0]
    end = last_row_at(alive.id)
    history = load(markets, start.received_at, end, step_s=STEP_S, use_cache=False, progress=False)
    times = history.times_ns
    last_ns = int(last.timestamp() * 1e9)
    assert (times >= last_ns).sum() > DOWNTIME_S / STEP_S
    for j, market in enumerate(markets):
        resumed = (
            OrderbookSnapshot.objects.filter(connection_id=alive.id, market_ticker=market)
            .exclude(source="periodic")
            .order_by("received_at")[0]
            .received_at
        )
        resumed_ns = int(resumed.timestamp() * 1e9)
        assert resumed - last > timedelta(seconds=DOWNTIME_S)
        downtime = (times >= last_ns) & (times < resumed_ns)
        assert not history.trusted[downtime, j].any(), (market, history.quality_report())
        before = times < last_ns - int(0.5e9)
        assert history.trusted[before, j][-3:].all(), market  # the recording was trusted
        assert history.trusted[times >= resumed_ns + int(0.2e9), j][:3].all(), market
    assert np.count_nonzero(~history.trusted) > 0
