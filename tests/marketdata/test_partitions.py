"""Time partitions of the recorded tables on the real PostgreSQL: the migration's layout, the
writer's guarantees on it, ensure / archive / drop, and ``manage.py partitions``."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from io import StringIO

import pyarrow.parquet as pq
import pytest
from django.core.management import call_command
from django.db import connection

from apps.marketdata import partitions
from apps.marketdata.models import OrderbookDelta, PublicTrade, RecordingConnection
from apps.marketdata.partitions import PartitionError
from apps.marketdata.writer import DELTA, TRADE, DeltaRow, RecordWriter, TradeRow, WriterConfig
from tests.partition_support import _drop_new_partitions  # noqa: F401 (autouse)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.postgres]

DAY0 = datetime(2026, 9, 7, tzinfo=UTC)  # a Monday, far from the migration's own partitions
DELTAS = "rl_orderbook_deltas"


def delta_rows(conn: uuid.UUID, hours: range, *, per_hour: int = 5) -> list[DeltaRow]:
    rows = []
    for h in hours:
        for k in range(per_hour):
            at = DAY0 + timedelta(hours=h, seconds=k, microseconds=17)
            seq = h * per_hour + k + 1
            rows.append(DeltaRow(conn, "M", 1, seq, "yes", 100 + seq, 100, at, at))
    return rows


@pytest.fixture
def conn_id() -> uuid.UUID:
    return RecordingConnection.objects.create(exchange="local", ws_url="ws://x", opened_at=DAY0).id


@pytest.fixture
def archive_dir(tmp_path, settings):
    settings.RL_ARCHIVE_DIR = tmp_path / "archive"
    return settings.RL_ARCHIVE_DIR


def insert(conn: uuid.UUID, rows: list[DeltaRow]) -> None:
    OrderbookDelta.objects.bulk_create([OrderbookDelta(None, *row) for row in rows])


def test_the_migration_partitions_three_tables_with_the_partition_key_in_every_unique_index():
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname, pg_get_constraintdef(k.oid) FROM pg_constraint k "
            "JOIN pg_class c ON c.oid = k.conrelid WHERE c.relname = ANY(%s) "
            "AND k.contype IN ('p', 'u') ORDER BY 1, 2",
            [list(partitions.PARTITIONED)],
        )
        keys = cursor.fetchall()
    for table in partitions.PARTITIONED:
        assert partitions.is_partitioned(table)
        assert (table, "PRIMARY KEY (id, received_at)") in keys
        assert (table, "UNIQUE (connection_id, sid, seq, received_at)") in keys
        names = [p.name for p in partitions.partitions(table)]
        assert names[-1] == f"{table}_default"
        # The current interval and the ones ahead exist from the start.
        today = partitions.floor_interval(datetime.now(UTC), partitions.interval_setting())
        assert partitions.partition_name(table, today) in names
    assert not partitions.is_partitioned("rl_recording_events")


def test_a_row_outside_every_range_goes_to_the_default_partition(conn_id) -> None:
    insert(conn_id, delta_rows(conn_id, range(0, 2)))
    by_name = {p.name: p for p in partitions.partitions(DELTAS, count=True)}
    assert by_name[f"{DELTAS}_default"].rows == 10


def test_ensure_moves_default_rows_into_new_ranges_and_is_idempotent(conn_id) -> None:
    insert(conn_id, delta_rows(conn_id, range(0, 72, 6)))  # three days, 60 rows
    created = partitions.ensure([DELTAS], start=DAY0, now=DAY0 + timedelta(days=2), ahead=1)
    assert created == [f"{DELTAS}_p202609{d:02d}" for d in (7, 8, 9, 10)]
    counts = {p.name: p.rows for p in partitions.partitions(DELTAS, count=True)}
    assert counts[f"{DELTAS}_default"] == 0
    assert [counts[f"{DELTAS}_p202609{d:02d}"] for d in (7, 8, 9, 10)] == [20, 20, 20, 0]
    assert partitions.ensure([DELTAS], start=DAY0, now=DAY0 + timedelta(days=2), ahead=1) == []
    assert OrderbookDelta.objects.count() == 60


def test_week_partitions_start_on_monday(conn_id, settings) -> None:
    settings.RL_PARTITION_INTERVAL = "week"
    created = partitions.ensure([DELTAS], start=DAY0 + timedelta(days=3), now=DAY0, ahead=1)
    assert created == [f"{DELTAS}_p20260907", f"{DELTAS}_p20260914"]
    (week,) = [p for p in partitions.partitions(DELTAS) if p.name == created[0]]
    assert (week.lo, week.hi) == (DAY0, DAY0 + timedelta(days=7))


def test_the_copy_writer_stores_each_message_once_across_partitions(conn_id, tmp_path) -> None:
    """The writer's guarantees on partitioned tables: COPY routes rows to their partitions;
    a replayed batch (same rows, same receive times) conflicts and stores nothing twice."""
    partitions.ensure(start=DAY0, now=DAY0 + timedelta(days=1), ahead=0)
    rows = delta_rows(conn_id, range(0, 48))
    trades = [
        TradeRow(conn_id, "M", 2, r.seq, f"t{r.seq}", 4000, 6000, 100, "yes", r.exchange_ts,
                 r.received_at)
        for r in rows[::10]
    ]  # fmt: skip
    for _ in range(2):  # the second time, every row is already stored
        writer = RecordWriter(
            WriterConfig(spill_dir=tmp_path / "spill", flush_interval_s=0.05, batch_rows=500)
        ).start()
        for row in rows:
            writer.enqueue(DELTA, row)
        for row in trades:
            writer.enqueue(TRADE, row)
        writer.close(timeout_s=10)
        assert writer.stats_dict()["rows_lost"] == 0
    assert OrderbookDelta.objects.count() == len(rows)
    assert PublicTrade.objects.count() == len(trades)
    counts = {p.name: p.rows for p in partitions.partitions(DELTAS, count=True)}
    assert counts[f"{DELTAS}_p20260907"] == counts[f"{DELTAS}_p20260908"] == 120


def test_archive_writes_verified_parquet_with_a_manifest_then_drops(conn_id, archive_dir) -> None:
    insert(conn_id, delta_rows(conn_id, range(0, 48)))
    partitions.ensure([DELTAS], start=DAY0, now=DAY0, ahead=1)
    day0 = f"{DELTAS}_p20260907"
    stored = list(
        OrderbookDelta.objects.filter(received_at__lt=DAY0 + timedelta(days=1))
        .order_by("received_at", "id")
        .values_list("id", "seq", "received_at", "connection_id")
    )
    done = partitions.archive(DELTAS, day0)
    assert day0 not in [p.name for p in partitions.partitions(DELTAS)]
    assert OrderbookDelta.objects.count() == 120
    manifest = json.loads((archive_dir / f"{day0}.json").read_text())
    assert manifest["rows"] == 120 and manifest["table"] == DELTAS
    assert manifest["lo"] == DAY0.isoformat()
    assert manifest["sha256"] == partitions._sha256(done.path)
    table = pq.read_table(done.path)
    assert pq.ParquetFile(done.path).metadata.row_group(0).column(0).compression == "ZSTD"
    back = list(
        zip(
            table.column("id").to_pylist(),
            table.column("seq").to_pylist(),
            table.column("received_at").to_pylist(),
            [uuid.UUID(bytes=b) for b in table.column("connection_id").to_pylist()],
            strict=True,
        )
    )
    assert back == stored
    assert [a.partition for a in partitions.archived(DELTAS)] == [day0]
    # Ensure does not recreate an archived range: late rows stay in the default partition.
    assert day0 not in partitions.ensure([DELTAS], start=DAY0, now=DAY0, ahead=1)
    with pytest.raises(PartitionError):
        partitions.archive(DELTAS, f"{DELTAS}_default")


def test_an_archive_whose_row_count_does_not_match_keeps_the_partition(
    conn_id, archive_dir, monkeypatch
) -> None:
    insert(conn_id, delta_rows(conn_id, range(0, 24)))
    partitions.ensure([DELTAS], start=DAY0, now=DAY0, ahead=0)
    day0 = f"{DELTAS}_p20260907"
    real = partitions._write_parquet

    def short(cursor, meta, table, name, path):  # a file that lost rows on the way
        real(cursor, meta, table, name, path)
        rows = pq.read_table(path)
        pq.write_table(rows.slice(0, rows.num_rows - 1), path)
        return rows.num_rows

    monkeypatch.setattr(partitions, "_write_parquet", short)
    with pytest.raises(PartitionError, match="nothing dropped"):
        partitions.archive(DELTAS, day0)
    assert day0 in [p.name for p in partitions.partitions(DELTAS)]
    assert OrderbookDelta.objects.count() == 120
    assert list(archive_dir.iterdir()) == []


def test_a_pending_manifest_is_published_only_if_its_partition_is_gone(
    conn_id, archive_dir
) -> None:
    insert(conn_id, delta_rows(conn_id, range(0, 48)))
    partitions.ensure([DELTAS], start=DAY0, now=DAY0, ahead=1)
    done = partitions.archive(DELTAS, f"{DELTAS}_p20260907")
    # As if the process died after the drop committed, before publishing the manifest:
    published = archive_dir / f"{done.partition}.json"
    published.rename(archive_dir / f"{done.partition}.json.pending")
    # ... and one whose drop did not commit (its partition is still there).
    alive = f"{DELTAS}_p20260908"
    (archive_dir / f"{alive}.parquet").write_bytes(b"partial")
    (archive_dir / f"{alive}.json.pending").write_text(
        json.dumps({"table": DELTAS, "partition": alive, "path": f"{alive}.parquet"})
    )
    partitions.settle_pending()
    assert published.exists()
    assert not (archive_dir / f"{alive}.parquet").exists()
    assert not list(archive_dir.glob("*.pending"))


def test_drop_removes_a_partition_and_its_rows(conn_id) -> None:
    insert(conn_id, delta_rows(conn_id, range(0, 48)))
    partitions.ensure([DELTAS], start=DAY0, now=DAY0, ahead=1)
    assert [p.name for p in partitions.older_than(DELTAS, DAY0 + timedelta(days=1))] == [
        f"{DELTAS}_p20260907"
    ]
    assert partitions.drop(DELTAS, f"{DELTAS}_p20260907") == 120
    assert OrderbookDelta.objects.count() == 120


def test_the_command_ensures_lists_and_archives(conn_id, archive_dir) -> None:
    insert(conn_id, delta_rows(conn_id, range(0, 48)))
    out = StringIO()
    call_command("partitions", "ensure", "--table", DELTAS, "--start", "2026-09-07", stdout=out)
    assert f"{DELTAS}_p20260907" in out.getvalue()
    out = StringIO()
    call_command("partitions", "archive", "--table", DELTAS, "--before", "2026-09-08", stdout=out)
    assert f"archived {DELTAS}_p20260907: 120 rows" in out.getvalue()
    out = StringIO()
    call_command("partitions", "list", "--table", DELTAS, stdout=out)
    listing = out.getvalue()
    assert f"{DELTAS}_p20260908" in listing and "120 rows" in listing
    assert f"120 rows archived in {DELTAS}_p20260907.parquet" in listing


def test_the_recorder_ensures_partitions_in_a_background_thread(settings) -> None:
    settings.RL_PARTITION_AHEAD = 5
    thread = partitions.ensure_in_background()
    thread.join(30)
    last = partitions.floor_interval(datetime.now(UTC), "day") + timedelta(days=5)
    for table in partitions.PARTITIONED:
        assert partitions.partition_name(table, last) in [
            p.name for p in partitions.partitions(table)
        ]


def test_the_migration_moves_existing_rows_into_partitions_and_keeps_their_ids() -> None:
    from django.db.migrations.executor import MigrationExecutor

    executor = MigrationExecutor(connection)
    before = [("marketdata", "0006_redact_stored_ws_urls")]
    executor.migrate(before)
    assert not partitions.is_partitioned(DELTAS)
    conn = uuid.uuid4()
    with connection.cursor() as cursor:
        for day in range(3):
            at = DAY0 + timedelta(days=day, hours=5)
            cursor.execute(
                f"INSERT INTO {DELTAS} (connection_id, market_ticker, sid, seq, side, price_e4,"
                " delta_e2, received_at) VALUES (%s, 'M', 1, %s, 'yes', 100, 5, %s)",
                [conn, day + 1, at],
            )
        cursor.execute(f"SELECT max(id) FROM {DELTAS}")
        (last_id,) = cursor.fetchone()
    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes())
    assert partitions.is_partitioned(DELTAS)
    counts = {p.name: p.rows for p in partitions.partitions(DELTAS, count=True)}
    assert [counts.get(f"{DELTAS}_p202609{d:02d}") for d in (7, 8, 9)] == [1, 1, 1]
    assert counts[f"{DELTAS}_default"] == 0
    assert max(OrderbookDelta.objects.values_list("id", flat=True)) == last_id
    fresh = OrderbookDelta.objects.create(
        connection_id=conn, market_ticker="M", sid=1, seq=9, side="no", price_e4=1,
        delta_e2=1, received_at=DAY0,
    )  # fmt: skip
    assert fresh.id > last_id


def test_partition_ddl_gives_up_instead_of_queueing_writers_behind_a_long_reader(
    monkeypatch,
) -> None:
    """A history load holds a lock on the table for as long as it reads; DDL that waited
    for it would queue every recorder's insert behind itself. It fails fast instead."""
    import time

    import psycopg
    from django.db import OperationalError

    monkeypatch.setattr(partitions, "LOCK_TIMEOUT_S", 0.5)
    params = connection.get_connection_params()
    params.pop("cursor_factory", None)
    params.pop("context", None)
    with psycopg.connect(**params) as reader:
        reader.execute(f"SELECT count(*) FROM {DELTAS}")  # the transaction stays open
        started = time.monotonic()
        with pytest.raises(OperationalError, match="lock timeout"):
            partitions.create_partition(DELTAS, DAY0, "day")
        assert time.monotonic() - started < 5
    assert f"{DELTAS}_p20260907" not in [p.name for p in partitions.partitions(DELTAS)]
    assert partitions.create_partition(DELTAS, DAY0, "day")  # once the reader is gone
