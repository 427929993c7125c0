"""Connections left open by a dead recorder: which ones are dead, where their data ends, and
the close record + marker the start-up sweep writes (never for a live recorder)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from django.db import connections
from django.utils import timezone

from apps.marketdata.models import (
    OrderbookDelta,
    OrderbookSnapshot,
    PublicTrade,
    RecordingConnection,
    RecordingEvent,
)
from apps.marketdata.orphans import (
    find_orphans,
    gone_reason,
    last_stored_at,
    local_process_gone,
    sweep,
)
from apps.marketdata.writer import RecordWriter, WriterConfig
from apps.workers.models import WorkerStatus

pytestmark = [pytest.mark.django_db(transaction=True)]
HOST = socket.gethostname()
T0 = datetime(2026, 10, 8, 2, 47, 3, 348_000, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def connection(*, host: str = HOST, pid: int | None, opened_at: datetime, **kw) -> uuid.UUID:
    return RecordingConnection.objects.create(
        exchange="local", ws_url="ws://x/", markets=["A"], host=host, pid=pid,
        opened_at=opened_at, **kw,
    ).id  # fmt: skip


def delta(conn: uuid.UUID, sid: int, seq: int, received_at: datetime) -> OrderbookDelta:
    return OrderbookDelta(
        connection_id=conn, market_ticker="A", sid=sid, seq=seq, side="yes", price_e4=100,
        delta_e2=100, received_at=received_at,
    )  # fmt: skip


def heartbeat(pid: int, *, host: str, started_at: datetime, updated_at: datetime, **kw) -> None:
    WorkerStatus.objects.create(
        name=f"ingest:{host}:{pid}", kind="ingest", host=host, pid=pid, started_at=started_at,
        updated_at=updated_at, **kw,
    )  # fmt: skip


@pytest.fixture
def writer(tmp_path: Path) -> Iterator[RecordWriter]:
    with RecordWriter(WriterConfig(spill_dir=tmp_path / "spill", flush_interval_s=0.05)) as w:
        yield w


def test_the_last_stored_row_is_the_newest_row_of_any_table_and_sid() -> None:
    conn = connection(pid=None, opened_at=at(0))
    other = connection(pid=None, opened_at=at(0))
    assert last_stored_at(conn) is None
    # Several sids, inserted out of time order (a replayed spill); another connection later.
    OrderbookDelta.objects.bulk_create(
        [delta(conn, 2, 5, at(7)), delta(conn, 1, 9, at(4)), delta(conn, 2, 1, at(1)),
         delta(conn, 5, 3, at(6)), delta(other, 1, 1, at(50))]
    )  # fmt: skip
    assert last_stored_at(conn) == at(7)
    OrderbookSnapshot.objects.create(
        connection_id=conn, market_ticker="A", sid=0, seq=3, received_at=at(8), source="periodic",
        as_of_sid=2, as_of_seq=5,
    )  # fmt: skip
    assert last_stored_at(conn) == at(8)
    PublicTrade.objects.create(
        connection_id=conn, market_ticker="A", sid=7, seq=2, trade_id="t", yes_price_e4=1,
        no_price_e4=9999, count_e2=1, taker_side="yes", received_at=at(9),
    )  # fmt: skip
    assert last_stored_at(conn) == at(9)
    RecordingEvent.objects.create(connection_id=conn, kind="gap", at=at(9.5))
    assert last_stored_at(conn) == at(9.5)
    assert last_stored_at(other) == at(50)


def test_a_local_pid_is_gone_when_it_exited_is_a_zombie_or_was_reused() -> None:
    me = os.getpid()
    assert local_process_gone(me, timezone.now()) is None, "this very process is alive"
    assert "not running" in local_process_gone(dead_pid(), at(0))
    # Our pid, but the connection opened before this process started: a reused pid.
    assert "started after" in local_process_gone(me, at(0))
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        deadline = time.monotonic() + 10
        reason = None
        while reason is None and time.monotonic() < deadline:
            reason = local_process_gone(zombie.pid, timezone.now() + timedelta(hours=1))
            time.sleep(0.02)
        assert reason is not None and "exited" in reason  # not reaped yet: a zombie
    finally:
        zombie.wait()


def test_another_hosts_recorder_is_gone_only_past_the_horizon_without_heartbeat_or_rows() -> None:
    now = timezone.now()
    horizon = 60.0

    def reason(conn: uuid.UUID) -> str | None:
        return gone_reason(
            RecordingConnection.objects.get(id=conn), now=now, horizon_s=horizon, this_host=HOST
        )

    old = now - timedelta(minutes=10)
    # Heartbeat fresh: alive, however old its rows.
    fresh = connection(host="other", pid=11, opened_at=old)
    heartbeat(11, host="other", started_at=old, updated_at=now - timedelta(seconds=5))
    assert reason(fresh) is None
    # Heartbeat stale but a row within the horizon: alive.
    busy = connection(host="other", pid=12, opened_at=old)
    heartbeat(12, host="other", started_at=old, updated_at=old)
    delta(busy, 1, 1, now - timedelta(seconds=10)).save()
    assert reason(busy) is None
    # Neither: gone.
    quiet = connection(host="other", pid=13, opened_at=old)
    heartbeat(13, host="other", started_at=old, updated_at=old + timedelta(seconds=1))
    delta(quiet, 1, 1, old).save()
    assert "for more than 60s" in reason(quiet)
    # A heartbeat from a later process with the same host and pid says nothing about it.
    reused = connection(host="other", pid=14, opened_at=old)
    heartbeat(14, host="other", started_at=old + timedelta(seconds=1), updated_at=now)
    assert reason(reused) is not None
    # Its process reported that it stopped: gone at once.
    stopped = connection(host="other", pid=15, opened_at=now - timedelta(seconds=1))
    heartbeat(15, host="other", started_at=old, updated_at=now, stopped_at=now)
    assert "stopped" in reason(stopped)
    # Just opened, no heartbeat yet: alive.
    assert reason(connection(host="other", pid=16, opened_at=now)) is None
    # On this host, a live pid is never closed, however long it has been silent.
    mine = connection(pid=os.getpid(), opened_at=timezone.now())
    assert (
        gone_reason(
            RecordingConnection.objects.get(id=mine),
            now=now + timedelta(days=1),
            horizon_s=horizon,
            this_host=HOST,
        )
        is None
    )


def test_the_sweep_closes_dead_connections_at_their_last_row_and_spares_live_ones(
    writer: RecordWriter,
) -> None:
    now = timezone.now()
    crashed = connection(pid=dead_pid(), opened_at=now - timedelta(seconds=30))
    OrderbookDelta.objects.bulk_create(
        [delta(crashed, 1, 1, now - timedelta(seconds=20)),
         delta(crashed, 1, 2, now - timedelta(seconds=12))]
    )  # fmt: skip
    RecordingEvent.objects.create(
        connection_id=crashed, kind="connected", at=now - timedelta(seconds=29)
    )
    live = connection(pid=os.getpid(), opened_at=now)
    delta(live, 1, 1, now - timedelta(hours=1)).save()
    closed_cleanly = connection(
        pid=dead_pid(), opened_at=now - timedelta(hours=1), closed_at=now, close_reason="stopped"
    )
    # Another host: stale for longer than the horizon, but its heartbeat comes back during
    # the confirmation wait (a recorder that rode out a database outage): it stays open.
    revived = connection(host="other", pid=21, opened_at=now - timedelta(hours=1))
    heartbeat(
        21, host="other", started_at=now - timedelta(hours=2), updated_at=now - timedelta(hours=1)
    )
    # Another host, stale, and still stale at the second look: closed.
    lost = connection(host="other", pid=22, opened_at=now - timedelta(hours=1))

    lines: list[str] = []

    def revive() -> None:
        time.sleep(0.3)
        WorkerStatus.objects.filter(pid=21).update(updated_at=timezone.now())
        connections.close_all()  # this thread's connection

    reviver = threading.Thread(target=revive)
    reviver.start()
    closed = sweep(writer, horizon_s=600, confirm_s=1.0, say=lines.append)
    reviver.join()
    assert writer.flush(timeout_s=10)
    assert {o.connection.id for o in closed} == {crashed, lost}
    row = RecordingConnection.objects.get(id=crashed)
    assert row.closed_at == now - timedelta(seconds=12)
    assert "not running" in row.close_reason
    marker = RecordingEvent.objects.get(connection_id=crashed, kind="disconnect")
    assert (marker.at, marker.market_ticker, marker.sid) == (now - timedelta(seconds=12), "", None)
    lost_row = RecordingConnection.objects.get(id=lost)
    assert lost_row.closed_at == lost_row.opened_at  # no rows at all: it ends where it opened
    for conn in (live, revived):
        assert RecordingConnection.objects.get(id=conn).closed_at is None
        assert not RecordingEvent.objects.filter(connection_id=conn).exists()
    assert RecordingConnection.objects.get(id=closed_cleanly).close_reason == "stopped"
    assert len(lines) == 2 and str(crashed) in "".join(lines)
    # Idempotent: a second sweep (another recorder starting) finds nothing left.
    assert find_orphans(horizon_s=600) == []
