"""Benchmark: the writer's rows/s (COPY path and bulk_create path) against a raw psycopg COPY.

Run from anywhere: ``.venv/bin/python benchmarks/bench_writer.py [--rows N] [--repeat R]``.
Needs the PostgreSQL server of ``--server`` (default ``postgres://postgres@127.0.0.1:5432``);
it creates a scratch database (``--db``, default ``kalshiflow_bench_writer``), applies the
migrations, and drops it at the end. ``benchmarks/bench_ingest.py`` calls
:func:`measure_writer_vs_copy` on its own scratch database instead.

The same pre-built delta rows (recorded-shaped: several markets on one sid, seq rising by
one, aware timestamps) are written three ways, best of ``--repeat`` runs each, into an
emptied ``rl_orderbook_deltas`` with all its indexes and constraints:

  (a) raw COPY: one psycopg binary ``COPY`` of all rows in one transaction (the baseline);
  (b) the writer, ``RL_WRITER_METHOD=copy``: ``enqueue()`` every row from this thread, then
      ``flush()``; the clock runs from the first enqueue to the flush's return;
  (c) the same with ``RL_WRITER_METHOD=bulk_create``.

Every run is checked: the table must hold exactly the rows written. The writer's connection
is opened before the clock starts, as the raw COPY's is. The last line printed is one JSON
object with the figures (units in the key names).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import json
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import psycopg.conninfo
from psycopg import sql

from benchmarks.scratchdb import drop_scratch_database, setup_scratch_django

TARGET_RATIO_VS_COPY = 0.5
MARKETS = [f"KXMLBGAME-26OCT{d:02d}2000TBNYY-NYY" for d in range(1, 9)]


def make_rows(conn: uuid.UUID, count: int) -> list[tuple]:
    from apps.marketdata.writer import DeltaRow

    start = datetime(2026, 10, 8, 2, 47, 3, tzinfo=UTC)
    rows = []
    for seq in range(1, count + 1):
        at = start + timedelta(microseconds=seq * 200)
        rows.append(
            DeltaRow(
                connection_id=conn,
                market_ticker=MARKETS[seq % len(MARKETS)],
                sid=1,
                seq=seq,
                side="yes" if seq % 3 else "no",
                price_e4=100 + (seq * 37) % 9800,
                delta_e2=((seq % 11) - 5) * 100 or 50,
                exchange_ts=at,
                received_at=at + timedelta(milliseconds=3),
            )
        )
    return rows


def raw_copy(dsn: str, rows: list[tuple]) -> float:
    """Seconds for one binary COPY of all rows straight into the table, committed."""
    from apps.marketdata.writer import DELTA, TABLES

    spec = TABLES[DELTA]
    statement = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
        sql.Identifier(spec.db_table), sql.SQL(", ").join(map(sql.Identifier, spec.columns))
    )
    with psycopg.connect(dsn) as conn:
        conn.execute("SELECT 1")  # connected before the clock starts
        started = time.perf_counter()
        with conn.cursor() as cursor, cursor.copy(statement) as copy:
            copy.set_types(spec.pg_types)
            for row in rows:
                copy.write_row(row)
        conn.commit()
        return time.perf_counter() - started


def through_writer(method: str, rows: list[tuple], *, batch_rows: int, spill_dir: Path) -> float:
    """Seconds from the first enqueue of all rows to flush() returning (all committed)."""
    from apps.marketdata.writer import DELTA, RecordWriter, WriterConfig

    config = WriterConfig(
        method=method,
        batch_rows=batch_rows,
        queue_max_rows=max(200_000, len(rows)),  # measure the database path, not the spill
        spill_dir=spill_dir,
    )
    writer = RecordWriter(config).start()
    try:
        warm = rows[0]._replace(sid=999_999)  # opens the writer's connection; deleted below
        writer.enqueue(DELTA, warm)
        if not writer.flush(timeout_s=30):
            raise RuntimeError(f"the writer could not reach the database: {writer.stats()}")
        _empty_table()
        enqueue = writer.enqueue
        started = time.perf_counter()
        for row in rows:
            enqueue(DELTA, row)
        if not writer.flush(timeout_s=600):
            raise RuntimeError(f"the writer did not commit everything: {writer.stats()}")
        elapsed = time.perf_counter() - started
    finally:
        writer.close(timeout_s=30)
    return elapsed


def enqueue_only_us(rows: list[tuple], *, spill_dir: Path) -> float:
    """Mean microseconds per enqueue() call with the worker idle (nothing due yet)."""
    from apps.marketdata.writer import DELTA, RecordWriter, WriterConfig

    writer = RecordWriter(
        WriterConfig(
            batch_rows=len(rows) + 1,
            queue_max_rows=len(rows) + 1,
            flush_interval_s=3600,
            spill_dir=spill_dir,
        )
    ).start()
    started = time.perf_counter()
    for row in rows:
        writer.enqueue(DELTA, row)
    elapsed = time.perf_counter() - started
    writer.close(timeout_s=120)  # writes them; emptied by the next run
    return elapsed / len(rows) * 1e6


def _empty_table() -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE rl_orderbook_deltas")


def _stored_rows(conn: uuid.UUID) -> tuple[int, int]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*), count(DISTINCT (sid, seq)) FROM rl_orderbook_deltas "
            "WHERE connection_id = %s",
            [conn],
        )
        return cursor.fetchone()


def measure_writer_vs_copy(
    *,
    rows: int = 200_000,
    repeat: int = 3,
    batch_rows: int = 5000,
    progress: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Best-of-``repeat`` rows/s of raw COPY and of the writer's two methods, same rows.

    Runs on the database Django is configured for, which must be a migrated scratch
    database: ``rl_orderbook_deltas`` is emptied before every run (each run is checked
    against the rows of its own recording connection). Returns the figures, units in keys.
    """
    from django.db import connection

    from apps.marketdata.models import RecordingConnection

    settings_dict = connection.settings_dict
    dsn = psycopg.conninfo.make_conninfo(
        dbname=settings_dict["NAME"],
        user=settings_dict["USER"] or None,
        password=settings_dict["PASSWORD"] or None,
        host=settings_dict["HOST"] or None,
        port=str(settings_dict["PORT"]) if settings_dict["PORT"] else None,
    )
    conn = RecordingConnection.objects.create(
        exchange="local", ws_url="ws://bench", opened_at=datetime.now(UTC)
    ).id
    data = make_rows(conn, rows)
    best: dict[str, float] = {}

    def record(name: str, seconds: float) -> None:
        stored = _stored_rows(conn)
        if stored != (len(data), len(data)):
            raise RuntimeError(f"{name}: stored {stored}, expected {len(data)} distinct rows")
        best[name] = min(best.get(name, float("inf")), seconds)
        progress(f"  {name:<22} {len(data) / seconds:>12,.0f} rows/s  ({seconds:.3f} s)")

    with tempfile.TemporaryDirectory() as tmp:
        spill_dir = Path(tmp) / "spill"
        for attempt in range(1, repeat + 1):
            progress(f"run {attempt}/{repeat}: {len(data):,} delta rows")
            _empty_table()
            record("raw COPY", raw_copy(dsn, data))
            for method in ("copy", "bulk_create"):
                _empty_table()
                seconds = through_writer(method, data, batch_rows=batch_rows, spill_dir=spill_dir)
                record(f"writer ({method})", seconds)
        _empty_table()
        enqueue_us = enqueue_only_us(data, spill_dir=spill_dir)
        _empty_table()

    raw = len(data) / best["raw COPY"]
    by_method = {m: len(data) / best[f"writer ({m})"] for m in ("copy", "bulk_create")}
    best_method = max(by_method, key=by_method.__getitem__)
    return {
        "rows": len(data),
        "batch_rows": batch_rows,
        "raw_copy_rows_per_s": raw,
        "copy_path_rows_per_s": by_method["copy"],
        "bulk_create_rows_per_s": by_method["bulk_create"],
        "best_method": best_method,
        "writer_rows_per_s": by_method[best_method],
        "ratio_vs_copy": by_method[best_method] / raw,
        "copy_path_ratio_vs_copy": by_method["copy"] / raw,
        "bulk_create_ratio_vs_copy": by_method["bulk_create"] / raw,
        "enqueue_us_per_row": enqueue_us,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--batch-rows", type=int, default=5000)
    parser.add_argument("--server", default="postgres://postgres@127.0.0.1:5432")
    parser.add_argument("--db", default="kalshiflow_bench_writer")
    args = parser.parse_args()

    try:
        setup_scratch_django(args.db, server=args.server)
        figures = measure_writer_vs_copy(
            rows=args.rows, repeat=args.repeat, batch_rows=args.batch_rows
        )
    finally:
        drop_scratch_database(args.db, server=args.server)

    raw = figures["raw_copy_rows_per_s"]
    print()
    print(f"{'path':<24} {'rows/s':>12} {'x raw COPY':>11}")
    for name, key in (
        ("raw COPY", "raw_copy_rows_per_s"),
        ("writer (copy)", "copy_path_rows_per_s"),
        ("writer (bulk_create)", "bulk_create_rows_per_s"),
    ):
        print(f"{name:<24} {figures[key]:>12,.0f} {figures[key] / raw:>11.2f}")
    print(
        f"enqueue() alone: {figures['enqueue_us_per_row']:.2f} us per row; "
        f"target: writer >= {TARGET_RATIO_VS_COPY}x raw COPY"
    )
    print(
        json.dumps(
            {
                "bench": "writer",
                "rows": figures["rows"],
                "batch_rows": figures["batch_rows"],
                "raw_copy_rows_per_s": round(raw),
                "copy_path_rows_per_s": round(figures["copy_path_rows_per_s"]),
                "bulk_create_rows_per_s": round(figures["bulk_create_rows_per_s"]),
                "ratio_vs_copy": round(figures["copy_path_ratio_vs_copy"], 3),
                "bulk_create_ratio_vs_copy": round(figures["bulk_create_ratio_vs_copy"], 3),
                "enqueue_us_per_row": round(figures["enqueue_us_per_row"], 3),
                "target_ratio_vs_copy": TARGET_RATIO_VS_COPY,
            }
        )
    )


if __name__ == "__main__":
    main()
