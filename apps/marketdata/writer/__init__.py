"""Batched, bounded, non-blocking, lossless persistence: the product's one batch writer.

It writes the recorder's market data and metadata (:data:`TABLES`) and the paper trader's
decisions (``apps/trading/writer.py`` declares their table spec); each user runs its own
:class:`RecordWriter` over its own tables.

A producer (the socket's task) calls :meth:`RecordWriter.enqueue` (O(1): a bound check and a
deque append, never a database call); one worker thread drains the queue in batches and
writes each batch in one transaction. Nothing accepted is ever dropped, and nothing is lost
silently:

* **Idempotent writes.** Each table spec names its unique key (``TableSpec.conflict_columns``,
  the ``ON CONFLICT`` target): deltas, snapshots and trades are unique on (connection, sid,
  seq), decisions on (episode, step, market), so every write ignores conflicts and a retried
  or replayed batch never duplicates a row. Events have no such key: they are inserted only
  where an identical event is not stored. The recording's metadata (connection open and
  close records, worker heartbeats) goes through the same queue and spill; the close records
  and heartbeats are upserts on their key (``update_columns``), the newest row winning.
* **Two write methods** behind one interface (setting ``RL_WRITER_METHOD``): ``bulk_create``
  (Django's ``bulk_create(ignore_conflicts=True)``) and ``copy`` (psycopg binary ``COPY``;
  PostgreSQL only). ``copy`` first copies straight into the table inside a savepoint, which
  is as fast as a raw ``COPY``; on a unique violation (a retried batch) it copies into a
  TEMP staging table and runs ``INSERT ... SELECT ... ON CONFLICT (key) DO NOTHING`` instead.
  ``benchmarks/bench_writer.py`` compares both with a raw ``COPY`` of the same rows.
* **Spill to disk.** While the database fails, the worker appends each batch to an
  append-only spill file (JSON lines, one file per table and segment, under
  ``RL_WRITER_SPILL_DIR``) instead of holding it in memory; if the queue ever reaches its
  bound (the worker itself is blocked, say on a hung connect), ``enqueue`` appends the row to
  the spill itself. When the database is back, spill segments are replayed in batches and a
  segment is deleted only after all its rows are committed, so a crash mid-replay repeats
  rows (ignored as conflicts) and loses none. Segments left by a crashed writer are adopted
  and replayed on start.
* **A full or failing spill disk.** The spill holds at most ``RL_WRITER_SPILL_MAX_BYTES``
  and leaves ``RL_WRITER_SPILL_MIN_FREE_BYTES`` free; past either, or when a write fails
  (ENOSPC, EIO), it refuses rows instead of raising. The worker then keeps the batch it holds
  and stops taking more, so the queue fills to its bound; only then does ``enqueue`` drop
  rows. Dropped rows are counted (``rows_lost``), reported by :meth:`RecordWriter.problems`
  (the recorder's ``/rl/health``), and remembered per market (first and last receive time,
  count); before the next row is accepted, one ``gap`` marker per recorded market goes into
  the queue at its first lost row, so history untrusts each such market from there to its next
  snapshot. A spill directory that cannot be used at start-up is one clear
  ``ImproperlyConfigured`` line.
* **Integer widths.** Every write method refuses a row with an integer outside its column's
  range (taken from the model fields) before writing: binary ``COPY`` would store 2^32 + 11
  in an ``int4`` as 11.
* **Bad rows** that the database refuses (a check constraint, a value too long, an integer
  too wide for its column) are isolated by bisecting the batch (named directly, for an
  integer) and appended, with the error, to ``<spill dir>/rejected/*.jsonl``: one bad row
  never blocks the others, and is never silently lost. Since the row is still missing from
  its table, its market gets a ``gap`` marker too (as above).

Row types are plain tuples in the fixed column order of their table (the ``*Row`` named
tuples of :mod:`.tables` document and construct them). Timestamps are timezone-aware
``datetime`` values (UTC), prices ``*_e4`` and sizes ``*_e2`` integers, ``connection_id`` a
``uuid.UUID``.

Spill durability: every append (a batch, or one row that ``enqueue`` spills itself) is
handed to the OS by one ``os.write`` before it returns, so a killed process loses none of
the spill; files are ``fsync``-ed at most every
``RL_WRITER_SPILL_FSYNC_INTERVAL_S`` and when a segment is sealed, so a power cut can cost at
most that much of it. Rows still in the in-memory queue are lost only to SIGKILL; SIGTERM and
SIGINT go through :meth:`RecordWriter.close`, which writes or spills everything.

Modules: :mod:`.tables` (row types, table specs), :mod:`.config` (settings, counters),
:mod:`.errors`, :mod:`.spill` (the spill store), :mod:`.widths` (integer widths),
:mod:`.methods` (COPY and bulk_create, bad-row isolation), :mod:`.loss` (lost rows and their
gap markers), :mod:`.writer` (the queue and the worker thread). The row types, the config and
the spill store do not import Django; the write methods import the ORM inside the worker
thread.
"""

from apps.marketdata.writer.config import METHODS, WriterConfig, WriterStats
from apps.marketdata.writer.errors import IntegerOutOfRange, SpillRefused, WriterClosed
from apps.marketdata.writer.methods import BatchWriteMethod, BulkCreateMethod, CopyMethod
from apps.marketdata.writer.spill import SpillStore
from apps.marketdata.writer.tables import (
    CONNECTION,
    CONNECTION_CLOSE,
    DELTA,
    EVENT,
    FEE_CHANGE,
    LIFECYCLE,
    MARKET_INFO,
    SERIES_FEES,
    SNAPSHOT,
    TABLES,
    TRADE,
    WORKER_STATUS,
    ConnectionRow,
    DeltaRow,
    EventRow,
    FeeChangeRow,
    LifecycleRow,
    MarketInfoRow,
    SeriesFeesRow,
    SnapshotRow,
    TableSpec,
    TradeRow,
    WorkerStatusRow,
)
from apps.marketdata.writer.widths import IntegerColumn
from apps.marketdata.writer.writer import RecordWriter

__all__ = [
    "CONNECTION",
    "CONNECTION_CLOSE",
    "DELTA",
    "EVENT",
    "FEE_CHANGE",
    "LIFECYCLE",
    "MARKET_INFO",
    "METHODS",
    "SERIES_FEES",
    "SNAPSHOT",
    "TABLES",
    "TRADE",
    "WORKER_STATUS",
    "BatchWriteMethod",
    "BulkCreateMethod",
    "ConnectionRow",
    "CopyMethod",
    "DeltaRow",
    "EventRow",
    "FeeChangeRow",
    "IntegerColumn",
    "IntegerOutOfRange",
    "LifecycleRow",
    "MarketInfoRow",
    "RecordWriter",
    "SeriesFeesRow",
    "SnapshotRow",
    "SpillRefused",
    "SpillStore",
    "TableSpec",
    "TradeRow",
    "WorkerStatusRow",
    "WriterClosed",
    "WriterConfig",
    "WriterStats",
]
