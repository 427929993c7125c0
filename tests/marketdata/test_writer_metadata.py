"""Recording metadata through the writer: connection records and heartbeats are upserts that
go through the same queue and spill as market data (so a database outage loses none)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from django.db import connection

from apps.marketdata.models import RecordingConnection
from apps.marketdata.writer import (
    CONNECTION,
    CONNECTION_CLOSE,
    DELTA,
    WORKER_STATUS,
    ConnectionRow,
    DeltaRow,
    RecordWriter,
    WorkerStatusRow,
    WriterConfig,
)
from apps.workers.models import WorkerStatus
from apps.workers.services import report_worker_status
from tests.tcp_proxy import TcpProxy

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]
T0 = datetime(2026, 10, 8, 2, 47, 3, 348_000, tzinfo=UTC)
HB0 = datetime.now(UTC) + timedelta(hours=1)  # heartbeats newer than any row a test made
METHODS = pytest.mark.parametrize("method", ["copy", "bulk_create"])


@pytest.fixture
def make_writer(tmp_path: Path) -> Iterator[Callable[..., RecordWriter]]:
    made: list[RecordWriter] = []

    def make(**overrides: object) -> RecordWriter:
        values: dict = {"spill_dir": tmp_path / "spill", "flush_interval_s": 0.05}
        values.update(overrides)
        writer = RecordWriter(WriterConfig(**values)).start()
        made.append(writer)
        return writer

    yield make
    for writer in made:
        writer.close(timeout_s=5)


def opened(conn: uuid.UUID) -> ConnectionRow:
    return ConnectionRow(conn, "local", "ws://x/", ["A", "B"], False, "h", 12, T0, None, "")


def heartbeat(n: int, *, stopped: bool = False) -> WorkerStatusRow:
    at = HB0 + timedelta(seconds=n)
    return WorkerStatusRow(
        "ingest:h:12", "ingest", "h", 12, T0, at, at if stopped else None,
        n % 2 == 0, [] if n % 2 == 0 else [f"problem {n}"], {"client": {"messages": n}},
    )  # fmt: skip


def stored_connection(conn: uuid.UUID) -> tuple:
    return RecordingConnection.objects.values_list(
        "exchange", "markets", "host", "pid", "opened_at", "closed_at", "close_reason"
    ).get(id=conn)


@METHODS
def test_a_connection_record_is_opened_once_and_closed_whatever_order_rows_arrive_in(
    method: str, make_writer
) -> None:
    writer = make_writer(method=method)
    first, second = uuid.uuid4(), uuid.uuid4()
    closed_at = T0 + timedelta(seconds=30)
    # The usual order, with the open row repeated (a replayed spill segment).
    writer.enqueue(CONNECTION, opened(first))
    writer.enqueue(CONNECTION, opened(first))
    assert writer.flush(timeout_s=10)
    assert stored_connection(first)[-2:] == (None, "")
    writer.enqueue(CONNECTION, opened(first))
    writer.enqueue(CONNECTION_CLOSE, opened(first)._replace(closed_at=closed_at, close_reason="x"))
    assert writer.flush(timeout_s=10)
    assert stored_connection(first) == ("local", ["A", "B"], "h", 12, T0, closed_at, "x")
    # The close record first (spill segments replay table by table): the late open row
    # must not reopen it.
    writer.enqueue(CONNECTION_CLOSE, opened(second)._replace(closed_at=closed_at, close_reason="y"))
    assert writer.flush(timeout_s=10)
    writer.enqueue(CONNECTION, opened(second))
    assert writer.flush(timeout_s=10)
    assert stored_connection(second) == ("local", ["A", "B"], "h", 12, T0, closed_at, "y")
    assert RecordingConnection.objects.count() == 2
    stats = writer.stats()
    assert stats.rows_written == 0, "metadata is not counted as recorded rows"
    assert stats.rows_written_by_table[CONNECTION] == 4


@METHODS
def test_heartbeats_upsert_the_worker_status_row_and_the_newest_wins(
    method: str, make_writer
) -> None:
    # A row the dashboard's own helper wrote: the writer's rows update it in place.
    report_worker_status(
        name="ingest:h:12", kind="ingest", started_at=T0, counters={}, problems=["old"]
    )
    row_id = WorkerStatus.objects.get().id
    writer = make_writer(method=method, batch_rows=100)
    for n in range(1, 8):  # several in one batch: one statement may not update a row twice
        writer.enqueue(WORKER_STATUS, heartbeat(n))
    assert writer.flush(timeout_s=10)
    status = WorkerStatus.objects.get()
    assert (status.id, status.updated_at, status.healthy) == (
        row_id,
        HB0 + timedelta(seconds=7),
        False,
    )
    assert status.problems == ["problem 7"] and status.counters == {"client": {"messages": 7}}
    writer.enqueue(WORKER_STATUS, heartbeat(8, stopped=True))
    assert writer.flush(timeout_s=10)
    # Older heartbeats arriving later (a spill replayed after the live rows) turn nothing back.
    writer.enqueue(WORKER_STATUS, heartbeat(3))
    writer.enqueue(WORKER_STATUS, heartbeat(5))
    assert writer.flush(timeout_s=10)
    status = WorkerStatus.objects.get()
    assert status.stopped_at == HB0 + timedelta(seconds=8) and status.healthy
    assert status.problems == [] and status.counters == {"client": {"messages": 8}}


def test_metadata_enqueued_while_the_database_is_down_is_spilled_then_stored(
    make_writer,
) -> None:
    conn = uuid.uuid4()
    with TcpProxy(target_port=int(connection.settings_dict["PORT"] or 5432)) as proxy:
        writer = make_writer(
            db_overrides={"HOST": "127.0.0.1", "PORT": proxy.port},
            db_timeout_s=2.0,
            retry_initial_s=0.1,
            retry_max_s=0.3,
        )
        proxy.stop()
        writer.enqueue(CONNECTION, opened(conn))
        writer.enqueue(DELTA, DeltaRow(conn, "A", 1, 1, "yes", 100, 100, None, T0))
        for n in range(1, 4):
            writer.enqueue(WORKER_STATUS, heartbeat(n))
        writer.enqueue(CONNECTION_CLOSE, opened(conn)._replace(closed_at=T0, close_reason="z"))
        assert not writer.flush(timeout_s=10)
        assert writer.stats().spilled_rows == 6
        proxy.start()
        assert writer.flush(timeout_s=20)
    assert stored_connection(conn)[-2:] == (T0, "z")
    status = WorkerStatus.objects.get()
    assert status.counters == {"client": {"messages": 3}}
    assert writer.stats().rows_written == 1
