"""The batched writer: row shapes, the spill file, and real writes to PostgreSQL.

Database tests use ``transaction=True``: the writer commits from its own thread and
connection, outside any test transaction. Outages are real: the writer talks to PostgreSQL
through :class:`tests.tcp_proxy.TcpProxy`, which the test switches off and on.
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from django.apps import apps
from django.db import connection

from apps.marketdata.kalshi.units import utc_from_ms, utc_from_ns
from apps.marketdata.models import (
    OrderbookDelta,
    OrderbookSnapshot,
    PublicTrade,
    RecordingConnection,
    RecordingEvent,
)
from apps.marketdata.writer import (
    DELTA,
    EVENT,
    SNAPSHOT,
    TABLES,
    TRADE,
    DeltaRow,
    EventRow,
    RecordWriter,
    SnapshotRow,
    SpillStore,
    TradeRow,
    WriterClosed,
    WriterConfig,
)
from apps.marketdata.writer.methods import unique_keys
from tests.conftest import REPO_ROOT
from tests.tcp_proxy import TcpProxy

T0 = datetime(2026, 10, 8, 2, 47, 3, 348_000, tzinfo=UTC)
TICKER = "KXMLBGAME-26OCT072000TBNYY-NYY"


def deltas(conn: uuid.UUID, seqs: range, *, sid: int = 1) -> list[DeltaRow]:
    return [
        DeltaRow(
            connection_id=conn,
            market_ticker=TICKER,
            sid=sid,
            seq=seq,
            side="yes" if seq % 2 else "no",
            price_e4=100 + seq % 9_000,
            delta_e2=(seq % 7 - 3) * 100 or 1,
            exchange_ts=T0 + timedelta(microseconds=seq),
            received_at=T0 + timedelta(microseconds=seq, milliseconds=2),
        )
        for seq in seqs
    ]


def stored_seqs(conn: uuid.UUID) -> list[int]:
    return list(
        OrderbookDelta.objects.filter(connection_id=conn)
        .order_by("seq")
        .values_list("seq", flat=True)
    )


def segment_files(spill_dir: Path) -> list[Path]:
    return sorted(p for p in spill_dir.glob("w-*/*.jsonl"))


def wait_until(predicate: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


@pytest.fixture
def spill_dir(tmp_path: Path) -> Path:
    return tmp_path / "spill"


@pytest.fixture
def make_writer(spill_dir: Path) -> Iterator[Callable[..., RecordWriter]]:
    """Started writers on the test database (closed at the end of the test)."""
    made: list[RecordWriter] = []

    def make(**overrides: object) -> RecordWriter:
        values: dict = {"spill_dir": spill_dir, "flush_interval_s": 0.05, "batch_rows": 500}
        values.update(overrides)
        writer = RecordWriter(WriterConfig(**values)).start()
        made.append(writer)
        return writer

    yield make
    for writer in made:
        writer.close(timeout_s=5)


@pytest.fixture
def conn_id() -> uuid.UUID:
    return RecordingConnection.objects.create(
        exchange="local", ws_url="ws://127.0.0.1/trade-api/ws/v2", opened_at=T0
    ).id


@pytest.fixture
def proxy() -> Iterator[TcpProxy]:
    """A proxy in front of the test database's server."""
    with TcpProxy(target_port=int(connection.settings_dict["PORT"] or 5432)) as running:
        yield running


def through(proxy: TcpProxy) -> dict:
    return {"db_overrides": {"HOST": "127.0.0.1", "PORT": proxy.port}, "db_timeout_s": 2.0}


# --------------------------------------------------------------------------------------------
# Row shapes and configuration (no database)
# --------------------------------------------------------------------------------------------


def test_each_row_type_lists_its_models_columns_in_field_order() -> None:
    for spec in TABLES.values():
        model = apps.get_model(spec.model_label)
        assert model._meta.db_table == spec.db_table
        fields = tuple(f.attname for f in model._meta.concrete_fields)
        assert fields == (("id",) if spec.auto_pk else ()) + spec.columns, spec.key
        assert len(spec.pg_types) == len(spec.columns)


def test_each_table_spec_names_its_models_unique_key_as_its_conflict_target() -> None:
    # ON CONFLICT (conflict_columns) needs a unique index on exactly those columns; a table
    # without one is written by looking rows up (events), and says which columns to use.
    for spec in TABLES.values():
        keys = unique_keys(apps.get_model(spec.model_label))
        if spec.conflict_columns:
            assert frozenset(spec.conflict_columns) in keys, spec.key
        else:
            assert spec.lookup_columns, spec.key
    assert TABLES[DELTA].conflict_columns == ("connection_id", "sid", "seq", "received_at")
    assert not TABLES[DELTA].upsert and TABLES["workerstatus"].upsert


def test_time_helpers_turn_protocol_times_into_aware_utc() -> None:
    assert utc_from_ms(1_791_427_623_348) == datetime(2026, 10, 8, 2, 47, 3, 348_000, tzinfo=UTC)
    assert utc_from_ms(None) is None
    assert utc_from_ns(1_791_427_623_348_123_999) == datetime(
        2026, 10, 8, 2, 47, 3, 348_123, tzinfo=UTC
    )


def test_enqueue_refuses_an_unknown_table_or_a_row_of_the_wrong_width(spill_dir: Path) -> None:
    writer = RecordWriter(WriterConfig(spill_dir=spill_dir))
    with pytest.raises(ValueError, match="unknown table 'deltas'"):
        writer.enqueue("deltas", deltas(uuid.uuid4(), range(1, 2))[0])
    with pytest.raises(ValueError, match="a snapshot row has 11 columns"):
        writer.enqueue(SNAPSHOT, (uuid.uuid4(), TICKER, 1, 1, [], [], None, T0, "ws"))


def test_enqueue_before_start_raises_writer_closed(spill_dir: Path) -> None:
    writer = RecordWriter(WriterConfig(spill_dir=spill_dir))
    with pytest.raises(WriterClosed):
        writer.enqueue(DELTA, deltas(uuid.uuid4(), range(1, 2))[0])


def test_the_config_reads_rl_writer_settings_and_keyword_overrides_win(settings, tmp_path) -> None:
    settings.RL_WRITER_METHOD = "bulk_create"
    settings.RL_WRITER_BATCH_ROWS = 123
    settings.RL_WRITER_SPILL_MAX_BYTES = 5_000_000
    settings.VAR_DIR = tmp_path
    config = WriterConfig.from_settings(flush_interval_s=0.5, queue_max_rows=None)
    assert config.method == "bulk_create"
    assert config.batch_rows == 123
    assert config.flush_interval_s == 0.5
    assert config.queue_max_rows == 200_000
    assert config.spill_dir == tmp_path / "spill"
    assert config.spill_max_bytes == 5_000_000
    assert config.spill_min_free_bytes == 256 * 1024**2


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"method": "insert"}, "writer method 'insert' is not one of copy, bulk_create"),
        ({"batch_rows": 0}, "batch_rows must be >= 1"),
        ({"flush_interval_s": 0}, "flush_interval_s must be > 0 seconds"),
        ({"spill_max_bytes": 0}, "spill_max_bytes must be >= 1"),
        ({"spill_min_free_bytes": -1}, "spill_min_free_bytes must be >= 0"),
        (
            {"queue_max_rows": 10, "batch_rows": 100},
            "queue_max_rows \\(10\\) must be >= batch_rows",
        ),
    ],
)
def test_the_config_explains_a_nonsense_value(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        WriterConfig(**overrides)


# --------------------------------------------------------------------------------------------
# The spill store (no database)
# --------------------------------------------------------------------------------------------


def every_kind_of_row(conn: uuid.UUID) -> dict[str, list[tuple]]:
    return {
        DELTA: deltas(conn, range(1, 4)),
        SNAPSHOT: [
            SnapshotRow(conn, TICKER, 1, 10, [[1700, 13900], [1800, 5]], [], None, T0, "ws", 1, 10),
            SnapshotRow(conn, TICKER, 0, 1, [], [[8000, 1]], None, T0, "periodic"),
        ],
        TRADE: [TradeRow(conn, TICKER, 2, 1, "t-1", 1700, 8300, 250, "no", T0, T0)],
        EVENT: [
            EventRow(conn, "gap", TICKER, 1, 7, 9, "seq jumped", T0),
            EventRow(conn, "disconnect", "", None, None, None, "", T0 + timedelta(seconds=1)),
        ],
    }


def read_back(store: SpillStore) -> dict[str, list[tuple]]:
    found: dict[str, list[tuple]] = {}
    while (chunk := store.next_chunk(100)) is not None:
        found.setdefault(chunk.table, []).extend(chunk.rows)
        store.commit_chunk(chunk)
    return found


def test_the_spill_gives_back_every_row_of_every_table_exactly(tmp_path: Path) -> None:
    store = SpillStore(tmp_path)
    store.open()
    rows = every_kind_of_row(uuid.uuid4())
    for table, table_rows in rows.items():
        store.append(table, table_rows)
    assert store.pending_rows == 8
    assert read_back(store) == rows
    assert store.pending_rows == 0
    assert store.pending_bytes == 0
    assert not segment_files(tmp_path)
    store.close()
    assert not list(tmp_path.glob("w-*"))


def test_a_spill_chunk_is_offered_again_until_it_is_committed(tmp_path: Path) -> None:
    store = SpillStore(tmp_path)
    store.open()
    store.append(DELTA, deltas(uuid.uuid4(), range(1, 11)))
    first = store.next_chunk(4)
    assert first is not None and [r.seq for r in first.rows] == [1, 2, 3, 4]
    assert store.next_chunk(4) is first  # e.g. the database failed: same rows again
    store.commit_chunk(first)
    second = store.next_chunk(4)
    assert second is not None and [r.seq for r in second.rows] == [5, 6, 7, 8]
    store.close()


CRASHING_WRITER = """
import os, sys, uuid
from datetime import UTC, datetime
from pathlib import Path
from apps.marketdata.writer import DELTA, DeltaRow, SpillStore

spill_dir, conn, first, last = Path(sys.argv[1]), uuid.UUID(sys.argv[2]), *map(int, sys.argv[3:5])
store = SpillStore(spill_dir)
store.open()
at = datetime(2026, 10, 8, tzinfo=UTC)
store.append(DELTA, [DeltaRow(conn, "M", 1, s, "yes", 100, 5, at, at) for s in range(first, last)])
store.sync(force=True)
print(store.directory, flush=True)
if len(sys.argv) > 5:
    sys.stdin.read()  # stay alive, holding the directory, until the test closes stdin
os._exit(1)  # die without close(), like kill -9
"""


def spill_from_a_crashed_writer(spill_dir: Path, conn: uuid.UUID, seqs: range) -> Path:
    """Rows spilled by another process that then died; returns the directory it held."""
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            CRASHING_WRITER,
            str(spill_dir),
            str(conn),
            str(seqs.start),
            str(seqs.stop),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 1, done.stderr
    return Path(done.stdout.strip())


def test_a_new_spill_store_adopts_a_dead_writers_rows_but_not_a_live_ones(tmp_path: Path) -> None:
    conn = uuid.uuid4()
    live = subprocess.Popen(
        [sys.executable, "-c", CRASHING_WRITER, str(tmp_path), str(conn), "100", "103", "wait"],
        cwd=REPO_ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        live_dir = Path(live.stdout.readline().strip())
        dead_dir = spill_from_a_crashed_writer(tmp_path, conn, range(1, 6))
        store = SpillStore(tmp_path)
        store.open()
        assert store.adopted_rows == 5
        assert not dead_dir.exists()
        assert len(list(live_dir.glob("*.jsonl"))) == 1  # the live writer keeps its rows
        assert [r.seq for r in read_back(store)[DELTA]] == [1, 2, 3, 4, 5]
        store.close()
    finally:
        live.stdin.close()
        live.wait(10)


def test_a_torn_last_line_is_kept_in_the_rejected_file_and_the_rest_is_replayed(
    tmp_path: Path,
) -> None:
    conn = uuid.uuid4()
    dead_dir = spill_from_a_crashed_writer(tmp_path, conn, range(1, 4))
    with open(next(dead_dir.glob("*.jsonl")), "ab") as segment:
        segment.write(b'["' + str(conn).encode() + b'","M",1,4,"ye')  # killed mid-write
    store = SpillStore(tmp_path)
    store.open()
    assert [r.seq for r in read_back(store)[DELTA]] == [1, 2, 3]
    assert store.rejected_rows == 1
    store.close()
    (rejected,) = (tmp_path / "rejected").glob("*.jsonl")
    record = json.loads(rejected.read_text())
    assert record["reason"] == "spill line could not be decoded"
    assert record["raw"].endswith('"M",1,4,"ye')


# --------------------------------------------------------------------------------------------
# Writing to PostgreSQL
# --------------------------------------------------------------------------------------------

METHODS = pytest.mark.parametrize("method", ["copy", "bulk_create"])


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
@METHODS
def test_rows_of_every_table_are_stored_with_their_values(
    method: str, make_writer, conn_id: uuid.UUID
) -> None:
    writer = make_writer(method=method)
    rows = every_kind_of_row(conn_id)
    for table, table_rows in rows.items():
        for row in table_rows:
            writer.enqueue(table, row)
    assert writer.flush(timeout_s=10)

    def stored(model, key: str) -> list[tuple]:
        columns = TABLES[key].columns
        return [tuple(r) for r in model.objects.order_by("id").values_list(*columns)]

    assert stored(OrderbookDelta, DELTA) == [tuple(r) for r in rows[DELTA]]
    assert stored(OrderbookSnapshot, SNAPSHOT) == [tuple(r) for r in rows[SNAPSHOT]]
    assert stored(PublicTrade, TRADE) == [tuple(r) for r in rows[TRADE]]
    assert stored(RecordingEvent, EVENT) == [tuple(r) for r in rows[EVENT]]
    stats = writer.stats()
    assert stats.method == method
    written = {table: n for table, n in stats.rows_written_by_table.items() if n}
    assert written == {DELTA: 3, SNAPSHOT: 2, TRADE: 1, EVENT: 2}


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_full_batch_is_written_without_waiting_for_the_interval(make_writer, conn_id) -> None:
    writer = make_writer(batch_rows=100, flush_interval_s=30.0)
    for row in deltas(conn_id, range(1, 101)):
        writer.enqueue(DELTA, row)
    assert wait_until(lambda: len(stored_seqs(conn_id)) == 100, timeout_s=5)


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_partial_batch_waits_for_the_flush_interval(make_writer, conn_id) -> None:
    writer = make_writer(batch_rows=100, flush_interval_s=1.0)
    time.sleep(0.1)  # let the writer settle into its wait
    started = time.monotonic()
    for row in deltas(conn_id, range(1, 11)):
        writer.enqueue(DELTA, row)
    assert stored_seqs(conn_id) == []
    assert wait_until(lambda: len(stored_seqs(conn_id)) == 10, timeout_s=5)
    assert time.monotonic() - started >= 0.5


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
@METHODS
def test_rows_sent_again_are_stored_once(method: str, make_writer, conn_id) -> None:
    writer = make_writer(method=method)
    for row in deltas(conn_id, range(1, 301)):
        writer.enqueue(DELTA, row)
    event = EventRow(conn_id, "gap", TICKER, 1, 7, 9, "", T0)
    writer.enqueue(EVENT, event)
    assert writer.flush(timeout_s=10)
    # A retry that overlaps what is stored (half old, half new), in one batch.
    for row in deltas(conn_id, range(151, 451)):
        writer.enqueue(DELTA, row)
    writer.enqueue(EVENT, event)
    writer.enqueue(EVENT, event._replace(detail="another gap"))
    assert writer.flush(timeout_s=10)
    assert stored_seqs(conn_id) == list(range(1, 451))
    assert RecordingEvent.objects.count() == 2


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
@METHODS
def test_a_refused_row_is_kept_aside_and_the_rest_of_its_batch_is_stored(
    method: str, make_writer, conn_id, spill_dir: Path
) -> None:
    writer = make_writer(method=method)
    rows = deltas(conn_id, range(1, 201))
    rows[57] = rows[57]._replace(price_e4=20_000)  # above $1: the check constraint refuses it
    rows[140] = rows[140]._replace(side="maybe")  # longer than the column allows
    for row in rows:
        writer.enqueue(DELTA, row)
    assert writer.flush(timeout_s=10)
    assert stored_seqs(conn_id) == [s for s in range(1, 201) if s not in (58, 141)]
    stats = writer.stats()
    assert stats.rejected_rows == 2
    # The rows are missing from the table all the same: a gap marker at the first of them
    # keeps history from trusting the market's book across it (written right after).
    assert wait_until(lambda: RecordingEvent.objects.filter(kind="gap").exists(), timeout_s=5)
    (marker,) = RecordingEvent.objects.filter(kind="gap")
    assert (marker.market_ticker, marker.at) == (TICKER, rows[57].received_at)
    assert marker.detail.startswith("writer dropped 2 rows received")
    assert writer.flush(timeout_s=10)
    assert writer.stats().rows_written == 198 + 1
    lines = [json.loads(x) for x in (spill_dir / "rejected").glob("*.jsonl").__next__().open()]
    reasons = {line["row"][3]: line["reason"] for line in lines}
    assert sorted(reasons) == [58, 141]
    assert 'check constraint "rl_delta_price"' in reasons[58]
    assert "too long" in reasons[141]


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_rows_a_crashed_writer_left_on_disk_are_stored_when_a_writer_starts(
    make_writer, conn_id, spill_dir: Path
) -> None:
    spill_from_a_crashed_writer(spill_dir, conn_id, range(1, 1001))
    writer = make_writer()
    assert writer.flush(timeout_s=10)
    assert stored_seqs(conn_id) == list(range(1, 1001))
    assert writer.stats().replayed_rows == 1000
    assert not segment_files(spill_dir)


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
@METHODS
def test_while_the_database_is_down_rows_spill_and_are_stored_when_it_returns(
    method: str, proxy: TcpProxy, make_writer, conn_id, spill_dir: Path
) -> None:
    writer = make_writer(method=method, retry_max_s=0.5, **through(proxy))
    for row in deltas(conn_id, range(1, 501)):
        writer.enqueue(DELTA, row)
    assert writer.flush(timeout_s=10)
    proxy.stop()
    for row in deltas(conn_id, range(501, 3001)):
        writer.enqueue(DELTA, row)
    assert not writer.flush(timeout_s=3)  # the rows are on disk, not in the database
    stats = writer.stats()
    assert not stats.db_up
    assert stats.retries >= 1
    assert stats.spill_pending_rows == 2500
    assert "OperationalError" in stats.last_error
    assert stored_seqs(conn_id) == list(range(1, 501))
    assert segment_files(spill_dir)
    proxy.start()
    assert writer.flush(timeout_s=15)
    assert stored_seqs(conn_id) == list(range(1, 3001))
    stats = writer.stats()
    assert stats.db_up and stats.replayed_rows == 2500 and stats.spill_pending_rows == 0
    assert not segment_files(spill_dir)


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_full_queue_spills_from_enqueue_which_stays_fast(proxy, make_writer, conn_id) -> None:
    proxy.blackhole()  # the writer's connect hangs until its timeout: nothing drains the queue
    writer = make_writer(queue_max_rows=1000, batch_rows=500, retry_max_s=0.5, **through(proxy))
    time.sleep(0.2)
    slowest_s = 0.0
    rows = deltas(conn_id, range(1, 5001))
    # As the recorder does (ingest.py): a full collection over this process's heap (pytest,
    # Django, every earlier test) stalls every thread for 100+ ms and would be measured here.
    gc.collect()
    gc.freeze()
    try:
        for row in rows:
            started = time.perf_counter()
            writer.enqueue(DELTA, row)
            slowest_s = max(slowest_s, time.perf_counter() - started)
    finally:
        gc.unfreeze()
    stats = writer.stats()
    assert stats.overflow_rows >= 3500
    assert stats.queue_depth <= 1000
    assert slowest_s < 0.1  # the worker is stuck for 2 s in its connect; enqueue never waits
    proxy.start()
    assert writer.flush(timeout_s=20)
    assert stored_seqs(conn_id) == list(range(1, 5001))


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_writer_hung_on_the_database_says_it_is_stuck(proxy, make_writer, conn_id) -> None:
    proxy.blackhole()
    writer = make_writer(stuck_after_s=0.3, retry_max_s=0.5, **through(proxy) | {"db_timeout_s": 3})
    for row in deltas(conn_id, range(1, 11)):
        writer.enqueue(DELTA, row)
    time.sleep(0.2)
    for row in deltas(conn_id, range(11, 21)):
        writer.enqueue(DELTA, row)
    assert wait_until(writer.is_stuck, timeout_s=2)
    assert writer.stats().stuck
    proxy.start()
    assert writer.flush(timeout_s=15)
    assert not writer.is_stuck()
    assert stored_seqs(conn_id) == list(range(1, 21))


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_closing_while_the_database_is_down_keeps_rows_for_the_next_writer(
    proxy, make_writer, conn_id, spill_dir: Path
) -> None:
    proxy.stop()
    first = make_writer(**through(proxy))
    for row in deltas(conn_id, range(1, 1001)):
        first.enqueue(DELTA, row)
    assert not first.close(timeout_s=1)
    with pytest.raises(WriterClosed):
        first.enqueue(DELTA, deltas(conn_id, range(1001, 1002))[0])
    assert stored_seqs(conn_id) == []
    assert segment_files(spill_dir)
    second = make_writer()  # straight to the database
    assert second.flush(timeout_s=10)
    assert stored_seqs(conn_id) == list(range(1, 1001))


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_stats_count_rows_batches_and_lag_and_serialise_to_json(make_writer, conn_id) -> None:
    writer = make_writer(batch_rows=100)
    now = datetime.now(UTC)
    rows = [
        row._replace(received_at=now, exchange_ts=now) for row in deltas(conn_id, range(1, 251))
    ]
    for row in rows:
        writer.enqueue(DELTA, row)
    writer.enqueue(TRADE, TradeRow(conn_id, TICKER, 2, 1, "t-1", 1700, 8300, 250, "no", now, now))
    assert writer.flush(timeout_s=10)
    stats = writer.stats()
    assert stats.enqueued_rows == 251
    assert stats.rows_written == 251
    assert stats.rows_written_by_table[DELTA] == 250
    assert stats.batches >= 3
    assert stats.queue_depth == 0 and stats.retries == 0 and stats.spilled_rows == 0
    assert 0 <= stats.max_commit_lag_s < 5
    assert 0 <= stats.last_exchange_lag_s < 5
    assert stats.last_commit_unix_s == pytest.approx(time.time(), abs=5)
    assert json.loads(json.dumps(writer.stats_dict()))["rows_written"] == 251
    assert writer.close(timeout_s=5)
    assert not writer.stats().running
