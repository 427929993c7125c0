"""Recorded history rebuilds the books the exchange had, on a clock, without look-ahead."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from django.utils import timezone

from apps.marketdata.exchange import FaultConfig
from apps.marketdata.kalshi.client import ClientConfig, KalshiClient
from apps.marketdata.models import (
    OrderbookDelta,
    OrderbookSnapshot,
    PublicTrade,
    RecordingConnection,
    RecordingEvent,
)
from apps.simulation.history import HistoryBuilder
from apps.simulation.loader import load
from tests.marketdata.exchange_support import SIGNER, make_exchange, run
from tests.marketdata.test_client import MemorySink, wait_for

NS = 1_000_000_000


def dt(ns: int) -> datetime:
    return datetime.fromtimestamp(ns / 1e9, UTC)


class TableSink(MemorySink):
    """Stores what the client saw exactly as the recorder would, straight into the tables."""

    def rows(self):
        snaps = [
            OrderbookSnapshot(
                connection_id=c,
                market_ticker=m.market_ticker,
                sid=m.sid,
                seq=m.seq,
                yes_levels=[list(x) for x in m.yes],
                no_levels=[list(x) for x in m.no],
                received_at=dt(ns),
                source=src,
                as_of_sid=m.sid,
                as_of_seq=m.seq,
            )
            for c, m, src, ns in self.snapshot_rows
        ]
        deltas = [
            OrderbookDelta(
                connection_id=c,
                market_ticker=m.market_ticker,
                sid=m.sid,
                seq=m.seq,
                side=m.side,
                price_e4=m.price_e4,
                delta_e2=m.delta_e2,
                received_at=dt(ns),
            )
            for c, m, ns in self.delta_rows
        ]
        events = [
            RecordingEvent(
                connection_id=c,
                kind=k,
                market_ticker=f.get("market_ticker", ""),
                sid=f.get("sid"),
                expected_seq=f.get("expected_seq"),
                got_seq=f.get("got_seq"),
                at=dt(ns),
            )
            for c, k, f, ns in self.event_rows
        ]
        return snaps, deltas, events

    def __init__(self) -> None:
        super().__init__()
        self.snapshot_rows, self.delta_rows, self.event_rows = [], [], []

    def on_snapshot(self, connection_id, msg, received_ns, source) -> None:
        self.snapshot_rows.append((connection_id, msg, source, received_ns))

    def on_delta(self, connection_id, msg, received_ns) -> None:
        self.delta_rows.append((connection_id, msg, received_ns))

    def on_event(self, connection_id, kind, **fields) -> None:
        import time

        self.event_rows.append((connection_id, kind, fields, time.time_ns()))


async def record(exchange, sink, min_deltas: int) -> KalshiClient:
    async with exchange.running() as url:
        client = KalshiClient(
            ClientConfig(ws_url=url, markets=exchange.tickers(), reconnect_initial_s=0.05),
            signer=SIGNER,
            sink=sink,
        )
        task = asyncio.create_task(client.run())
        await wait_for(lambda: client.stats.deltas > min_deltas)
        await exchange.pause()
        await exchange.flush()
        await wait_for(lambda: all(client.is_trusted(m) for m in exchange.tickers()))
        # Quiet time before the disconnect, so the last data row and the disconnect marker
        # are ticks apart (a fault-injected reconnect may still land a snapshot in here).
        await asyncio.sleep(0.6)
        client.stop()
        await asyncio.wait_for(task, 10)
        return client


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("faults", [None, FaultConfig(seq_gap_every=300, drop_after_messages=900)])
def test_loaded_history_ends_with_the_exchange_books(faults) -> None:
    exchange = make_exchange(markets=3, rate=3000, faults=faults)
    sink = TableSink()
    client = run(record(exchange, sink, 2500), timeout_s=60)
    snaps, deltas, events = sink.rows()
    for connection_id in sink.connections:
        RecordingConnection.objects.create(
            id=connection_id, exchange="local", ws_url="ws://local", opened_at=timezone.now()
        )
    OrderbookSnapshot.objects.bulk_create(snaps)
    OrderbookDelta.objects.bulk_create(deltas, batch_size=2000)
    RecordingEvent.objects.bulk_create(events)
    first = min(ns for *_, ns in sink.snapshot_rows)
    last = max(ns for *_, ns in sink.delta_rows + sink.snapshot_rows)
    # The window ends where the client disconnected: from there on the books are untrusted.
    stop = max(ns for *_, ns in sink.event_rows)
    assert stop - last > 0.1 * NS
    markets = exchange.tickers()
    history = load(
        markets, dt(first), dt(stop), step_s=0.05, levels=50, use_cache=False, progress=False
    )
    assert history.trusted[-1].all(), (history.trusted[-5:], history.quality_report())
    for j, market in enumerate(markets):
        yes, no = exchange.book_levels(market)
        k_yes, k_no = min(len(yes), 50), min(len(no), 50)
        assert history.yes_px[-1, j, :k_yes].tolist() == [p for p, _ in reversed(yes)][:k_yes]
        assert history.yes_sz[-1, j, :k_yes].tolist() == [s for _, s in reversed(yes)][:k_yes]
        assert history.no_px[-1, j, :k_no].tolist() == [p for p, _ in reversed(no)][:k_no]
        assert history.no_sz[-1, j, :k_no].tolist() == [s for _, s in reversed(no)][:k_no]
    quality = history.quality_report()
    if faults is not None:
        assert sum(q["gaps"] + q["resets"] for q in quality.values()) > 0
        assert (~history.trusted).any(), "gaps must leave untrusted ticks"
    assert client.stats.deltas == len(deltas)


def test_a_tick_never_sees_an_event_received_after_it() -> None:
    start = 1_000 * NS
    builder = HistoryBuilder(["M"], start_ns=start, end_ns=start + 5 * NS, step_ns=NS, levels=2)
    builder.snapshot(
        start, "M", connection=b"c", as_of_sid=1, as_of_seq=1, yes=[(4000, 100)], no=[]
    )
    # A delta exactly on tick 2 belongs to tick 2; one a nanosecond later does not.
    builder.deltas([start + 2 * NS], [0], [b"c"], [1], [2], [True], [4000], [50])
    builder.deltas([start + 3 * NS + 1], [0], [b"c"], [1], [3], [True], [4100], [7])
    history = builder.finish()
    assert history.yes_sz[:, 0, 0].tolist() == [100, 100, 150, 150, 7]
    assert history.yes_sz[:, 0, 1].tolist() == [0, 0, 0, 0, 150]
    assert history.yes_px[:, 0, 0].tolist() == [4000, 4000, 4000, 4000, 4100]


def test_a_gap_marker_untrusts_the_book_until_the_next_snapshot() -> None:
    start = 0
    builder = HistoryBuilder(["M"], start_ns=start, end_ns=6 * NS, step_ns=NS, levels=1)
    builder.snapshot(0, "M", connection=b"c", as_of_sid=1, as_of_seq=1, yes=[(4000, 100)], no=[])
    builder.marker(int(1.5 * NS), kind="gap", connection=b"c", sid=1)
    builder.deltas([2 * NS], [0], [b"c"], [1], [9], [True], [4000], [5])  # ignored: untrusted
    builder.snapshot(
        int(3.5 * NS), "M", connection=b"c", as_of_sid=1, as_of_seq=10, yes=[(4200, 1)], no=[]
    )
    history = builder.finish()
    assert history.trusted[:, 0].tolist() == [True, True, False, False, True, True]
    assert history.yes_px[:, 0, 0].tolist() == [4000, 4000, 0, 0, 4200, 4200]
    assert history.quality["M"].gaps == 1
    assert history.quality["M"].deltas_skipped_untrusted == 1


def test_the_cache_returns_identical_arrays(tmp_path, settings) -> None:
    start = 0
    builder = HistoryBuilder(["A", "B"], start_ns=start, end_ns=3 * NS, step_ns=NS, levels=3)
    builder.snapshot(0, "B", connection=b"c", as_of_sid=1, as_of_seq=1, yes=[(10, 1)], no=[(20, 2)])
    history = builder.finish()
    path = tmp_path / "h.npz"
    history.save(path)
    again = type(history).load_npz(path)
    assert again.markets == ["A", "B"]
    for name in ("yes_px", "yes_sz", "no_px", "no_sz", "trusted", "updates", "times_ns"):
        assert np.array_equal(getattr(history, name), getattr(again, name)), name
    assert again.quality_report() == history.quality_report()
    assert timedelta(seconds=history.step_ns / NS) == timedelta(seconds=1)


@pytest.mark.django_db(transaction=True)
def test_a_connection_without_a_close_record_is_untrusted_from_its_last_row_on() -> None:
    """A recorder killed with kill -9 wrote no disconnect marker and no close record: its
    books are untrusted from its last stored row (any table) to a later connection's
    snapshot, not carried through the downtime."""
    base = 1_800_000_000 * NS
    killed, later = uuid.uuid4(), uuid.uuid4()

    def t(s: float) -> datetime:
        return dt(base + int(s * NS))

    RecordingConnection.objects.create(
        id=killed, exchange="local", ws_url="ws://x", opened_at=t(0), pid=1
    )
    RecordingConnection.objects.create(
        id=later, exchange="local", ws_url="ws://x", opened_at=t(4.9), pid=2
    )

    def snapshot(conn, market, s, seq, price):
        return OrderbookSnapshot(
            connection_id=conn, market_ticker=market, sid=1, seq=seq, yes_levels=[[price, 100]],
            no_levels=[], received_at=t(s), source="ws", as_of_sid=1, as_of_seq=seq,
        )  # fmt: skip

    def delta(conn, market, s, seq, price):
        return OrderbookDelta(
            connection_id=conn, market_ticker=market, sid=1, seq=seq, side="yes",
            price_e4=price, delta_e2=5, received_at=t(s),
        )  # fmt: skip

    OrderbookSnapshot.objects.bulk_create(
        [snapshot(killed, "A", 0, 1, 4000), snapshot(killed, "B", 0, 2, 6000),
         snapshot(later, "A", 5.0, 1, 4100), snapshot(later, "B", 5.2, 2, 6100),
         snapshot(killed, "C", 0.1, 3, 5000)]
    )  # fmt: skip
    OrderbookDelta.objects.bulk_create(
        [delta(killed, "A", 0.7, 3, 4000), delta(killed, "B", 1.0, 4, 6000),
         delta(killed, "A", 2.0, 5, 4000), delta(later, "A", 6.0, 3, 4100)]
    )  # fmt: skip
    # The killed connection's last stored row is a trade (market B's book was quiet).
    PublicTrade.objects.create(
        connection_id=killed, market_ticker="B", sid=2, seq=1, trade_id="x", yes_price_e4=6000,
        no_price_e4=4000, count_e2=100, taker_side="yes", received_at=t(2.2),
    )  # fmt: skip
    RecordingEvent.objects.create(connection_id=later, kind="disconnect", at=t(6.6))

    history = load(["A", "B"], t(0), t(8), step_s=0.5, use_cache=False, progress=False)
    # Ticks 0.0, 0.5, ..., 7.5: the killed connection is trusted to 2.2 s, the later one from
    # its snapshots (5.0 s for A, 5.2 s for B) to its own disconnect marker at 6.6 s.
    up = [True] * 5
    assert history.trusted[:, 0].tolist() == up + [False] * 5 + [True] * 4 + [False] * 2
    assert history.trusted[:, 1].tolist() == up + [False] * 6 + [True] * 3 + [False] * 2
    assert history.yes_sz[4, 0, 0] == 110 and history.yes_sz[12, 0, 0] == 105
    quality = history.quality_report()
    assert quality["A"]["resets"] == 2 and quality["B"]["resets"] == 2
    # A quiet market (a snapshot, no delta in the window) of the killed connection too.
    quiet = load(["C"], t(0), t(8), step_s=0.5, use_cache=False, progress=False)
    assert quiet.trusted[:, 0].tolist() == [False] + [True] * 4 + [False] * 11
