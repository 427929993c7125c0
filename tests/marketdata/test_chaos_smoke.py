"""The chaos benchmark's checker (``benchmarks/chaos_check.py``) on a hand-built recording.

Five connections, one market each, each losing the delta with seq 4 (sent by the exchange,
never stored):

* A: nothing marks the loss, the next delta continues the book: outside (a violation);
* B: a gap marker on the sid, then a resync snapshot: inside an untrusted window;
* C: the connection's data ends before the loss and a disconnect marker sits at its last
  stored row (what a recorder must leave after kill -9): inside;
* D: the same tail loss without a marker (a kill -9 no restarted recorder has swept yet): the
  loader itself ends a connection without a close record at its last stored row: inside;
* E: as C, from a recorder that fell a second behind reading its socket after seq 2: its
  marker comes a second after the lost frames were sent, yet at its last stored row, and the
  loader's book (primed, seq 2 applied) was never trusted past what was received: inside.

Plus a trade sent on sid 2**32 + 9 and stored as sid 9 (a wrapped value) and a valid trade
stored exactly.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from django.db import connection

from apps.marketdata.models import (
    OrderbookDelta,
    OrderbookSnapshot,
    PublicTrade,
    RecordingConnection,
    RecordingEvent,
)
from benchmarks import chaos_check

pytestmark = [pytest.mark.postgres, pytest.mark.django_db]

MS = 1_000_000  # ns


def _at(ns: int) -> datetime:
    return datetime.fromtimestamp(ns // 1000 / 1e6, tz=UTC)


def _truth(rows: list[tuple]) -> None:
    cols = ", ".join(chaos_check.TRUTH_COLUMNS)
    marks = ", ".join(["%s"] * len(chaos_check.TRUTH_COLUMNS))
    with connection.cursor() as cur:
        chaos_check.ensure_truth_table(cur)
        cur.executemany(f"INSERT INTO {chaos_check.TRUTH_TABLE} ({cols}) VALUES ({marks})", rows)


def _recording(
    pconn: int, market: str, t0: int, *, stored_upto: int, lag_ms: int = 0
) -> tuple[uuid.UUID, list]:
    """Snapshot seq 1 and deltas seq 2..6 sent every 100 ms, received 20 us later, and from seq 3
    on ``lag_ms`` later still (seq 4 never stored; nothing after ``stored_upto`` stored).
    Returns the connection id and the truth rows."""
    conn = RecordingConnection.objects.create(
        exchange="local", ws_url="ws://x", markets=[market], opened_at=_at(t0)
    ).id
    sid = 1
    truth = [(pconn, "snapshot", sid, 1, market, "", 2, 2000, "", t0, "valid")]
    OrderbookSnapshot.objects.create(
        connection_id=conn, market_ticker=market, sid=sid, seq=1,
        yes_levels=[[4000, 1000]], no_levels=[[5000, 1000]], received_at=_at(t0 + 20_000),
        source="ws", as_of_sid=sid, as_of_seq=1,
    )  # fmt: skip
    for seq in range(2, 7):
        sent = t0 + (seq - 1) * 100 * MS
        # Each delta's size differs per connection so that content identifies the connection.
        delta = 100 * seq + pconn
        lag = (lag_ms * MS if seq >= 3 else 0) + 20_000
        truth.append((pconn, "delta", sid, seq, market, "yes", 4000, delta, "", sent, "valid"))
        if seq != 4 and seq <= stored_upto:
            OrderbookDelta.objects.create(
                connection_id=conn, market_ticker=market, sid=sid, seq=seq, side="yes",
                price_e4=4000, delta_e2=delta, received_at=_at(sent + lag),
            )  # fmt: skip
    return conn, truth


def test_checker_counts_losses_inside_and_outside_untrusted_windows() -> None:
    t0 = (int(datetime.now(UTC).timestamp()) - 60) * 1_000_000_000
    conn_a, truth_a = _recording(0, "MKT-A", t0, stored_upto=6)
    conn_b, truth_b = _recording(1, "MKT-B", t0, stored_upto=6)
    conn_c, truth_c = _recording(2, "MKT-C", t0, stored_upto=3)
    conn_d, truth_d = _recording(3, "MKT-D", t0, stored_upto=3)
    conn_e, truth_e = _recording(4, "MKT-E", t0, stored_upto=3, lag_ms=1000)
    # B: the gap is seen when seq 5 arrives; the resync snapshot (seq 7) comes 200 ms later.
    RecordingEvent.objects.create(
        connection_id=conn_b, kind="gap", sid=1, expected_seq=4, got_seq=5,
        at=_at(t0 + 400 * MS + 30_000),
    )  # fmt: skip
    OrderbookSnapshot.objects.create(
        connection_id=conn_b, market_ticker="MKT-B", sid=1, seq=7, yes_levels=[[4000, 500]],
        no_levels=[[5000, 1000]], received_at=_at(t0 + 600 * MS), source="resync",
        as_of_sid=1, as_of_seq=7,
    )  # fmt: skip
    truth_b.append((1, "snapshot", 1, 7, "MKT-B", "", 2, 1500, "", t0 + 600 * MS - 20_000, "valid"))
    # A goes on recording (a clean stop much later): nothing around its lost delta untrusts it.
    RecordingEvent.objects.create(
        connection_id=conn_a, kind="disconnect", detail="stopped", at=_at(t0 + 5_000 * MS)
    )
    # C: closed at its last stored row (seq 3, 200 ms), as a restarted recorder must do.
    RecordingEvent.objects.create(
        connection_id=conn_c, kind="disconnect", detail="no close record", at=_at(t0 + 200 * MS)
    )
    RecordingEvent.objects.create(
        connection_id=conn_e, kind="disconnect", detail="reset", at=_at(t0 + 1200 * MS + 20_000)
    )
    # Trades on A: one exact, one whose sid 2**32 + 9 was stored wrapped as 9.
    wide = 2**32 + 9
    trade_rows = [
        (0, "trade", 2, 1, "MKT-A", "yes", 4100, 300, "t-1", t0 + 150 * MS, "valid"),
        (0, "trade", wide, 1, "MKT-A", "no", 4200, 700, "t-2", t0 + 250 * MS, "wide_sid"),
    ]
    for _, _, sid, seq, market, side, price, count, trade_id, sent, _ in trade_rows:
        PublicTrade.objects.create(
            connection_id=conn_a, market_ticker=market, sid=sid % 2**32, seq=seq,
            trade_id=trade_id, yes_price_e4=price, no_price_e4=10_000 - price, count_e2=count,
            taker_side=side, received_at=_at(sent + 20_000),
        )  # fmt: skip
    _truth(truth_a + truth_b + truth_c + truth_d + truth_e + trade_rows)

    with connection.cursor() as cur:
        result = chaos_check.compare(cur)
    assert result.connections_mapped == 5 and result.connections_unmapped == 0
    assert result.frames_accepted == 5 * 6 + 1 + 1  # snapshots + deltas, B's resync, a trade
    lost = sorted((f.market, f.seq, f.kind) for f in result.lost)
    # C and D also lose seq 5 and 6 (sent after their data ended).
    assert lost == [
        ("MKT-A", 4, "delta"),
        ("MKT-B", 4, "delta"),
        *[("MKT-C", s, "delta") for s in (4, 5, 6)],
        *[("MKT-D", s, "delta") for s in (4, 5, 6)],
        *[("MKT-E", s, "delta") for s in (4, 5, 6)],
    ]
    assert result.rows_stored == result.frames_accepted - len(lost)
    assert result.duplicates == 0
    assert result.wrapped_rows == 1
    assert result.wrapped_examples[0]["sid"] == 9
    assert result.other_frames == {"wide_sid": [1, 0]}
    assert {f.connection_id for f in result.lost} == {conn_a, conn_b, conn_c, conn_d, conn_e}
    # E's frames were due when its last stored row was received, a second after they were sent.
    due_e = {f.due_ns - f.sent_ns for f in result.lost if f.market == "MKT-E"}
    assert all(500 * MS < d <= 1000 * MS for d in due_e)

    markets = ["MKT-A", "MKT-B", "MKT-C", "MKT-D", "MKT-E"]
    coverage = chaos_check.classify_losses(result.lost, markets=markets, slack_s=0.25)
    outside = sorted((f.market, f.seq) for f in coverage.outside_frames)
    assert outside == [("MKT-A", 4)]
    assert coverage.inside == 10 and coverage.outside == 1
    assert coverage.outside_by_kind == {"delta": 1}
    # Each untrusted a trusted book once: B's gap, C's and E's disconnect markers, A's clean
    # stop, and the ends of B's and D's data (connections without a close record).
    assert coverage.untrusted_windows == 6


def test_a_stored_row_that_differs_from_what_was_sent_is_a_wrapped_value() -> None:
    """Same identity, other content (e.g. an int4-wrapped price or size): counted, and the sent
    frame is lost, never silently matched."""
    t0 = (int(datetime.now(UTC).timestamp()) - 30) * 1_000_000_000
    conn, truth = _recording(0, "MKT-W", t0, stored_upto=6)
    OrderbookDelta.objects.filter(connection_id=conn, seq=5).update(delta_e2=-(2**31) + 7)
    _truth(truth)
    with connection.cursor() as cur:
        result = chaos_check.compare(cur)
    assert result.wrapped_rows == 1
    assert sorted(f.seq for f in result.lost) == [4, 5]
    assert result.duplicates == 0
