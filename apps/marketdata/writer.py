"""Batched, bounded, non-blocking persistence of recorded market data.

The socket's task calls :meth:`RecordWriter.enqueue` (O(1): a bound check and a deque append,
never a database call); one worker thread drains the queue in batches and writes each batch
in one transaction. Nothing accepted is ever dropped, and nothing is lost silently:

* **Idempotent writes.** Deltas, snapshots and trades are unique on (connection, sid, seq),
  so every write ignores conflicts and a retried or replayed batch never duplicates a row.
  Events have no such key: they are inserted only where an identical event is not stored.
  The recording's metadata (connection open and close records, worker heartbeats) goes
  through the same queue and spill; those tables are upserts on their own key
  (``TableSpec.conflict_columns``), the newest row of a batch winning.
* **Two write methods** behind one interface (setting ``RL_WRITER_METHOD``): ``bulk_create``
  (Django's ``bulk_create(ignore_conflicts=True)``) and ``copy`` (psycopg binary ``COPY``;
  PostgreSQL only). ``copy`` first copies straight into the table inside a savepoint, which
  is as fast as a raw ``COPY``; on a unique violation (a retried batch) it copies into a
  TEMP staging table and runs ``INSERT ... SELECT ... ON CONFLICT DO NOTHING`` instead.
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
  count); before the next row is accepted, one ``gap`` marker per market goes into the queue
  at its first lost row, so history untrusts each such market from there to its next
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

Row types are plain tuples in the fixed column order of :data:`TABLES` (the ``*Row`` named
tuples below document and construct them). Timestamps are timezone-aware ``datetime`` values
(UTC), prices ``*_e4`` and sizes ``*_e2`` integers, ``connection_id`` a ``uuid.UUID``.

Spill durability: every append (a batch, or one row that ``enqueue`` spills itself) is
handed to the OS by one ``os.write`` before it returns, so a killed process loses none of
the spill; files are ``fsync``-ed at most every
``RL_WRITER_SPILL_FSYNC_INTERVAL_S`` and when a segment is sealed, so a power cut can cost at
most that much of it. Rows still in the in-memory queue are lost only to SIGKILL; SIGTERM and
SIGINT go through :meth:`RecordWriter.close`, which writes or spills everything.

Pauses: the worker holds the GIL only in short steps, so the socket's loop is not held up by
it, but the rows it allocates trigger Python's cyclic garbage collector, and a full
collection over Django's start-up heap holds every thread for 30-60 ms. A recording process
should call ``gc.freeze()`` once after ``django.setup()``; the loop then stays within a few ms
(``tests/marketdata/test_writer_outage.py`` measures it).

The row types, the config and the spill store do not import Django; the write methods import
the ORM inside the worker thread.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import fcntl
import logging
import math
import os
import random
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence, Sized
from dataclasses import dataclass, field
from datetime import UTC, datetime
from operator import itemgetter
from pathlib import Path
from typing import Any, Final, NamedTuple

import msgspec

__all__ = [
    "CONNECTION",
    "CONNECTION_CLOSE",
    "DELTA",
    "EVENT",
    "METHODS",
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
    "IntegerColumn",
    "IntegerOutOfRange",
    "RecordWriter",
    "SnapshotRow",
    "SpillRefused",
    "SpillStore",
    "TableSpec",
    "TradeRow",
    "WorkerStatusRow",
    "WriterClosed",
    "WriterConfig",
    "WriterStats",
    "utc_from_ms",
    "utc_from_ns",
]

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# Row types (pure Python: the column order of each table, in the model's field order)
# --------------------------------------------------------------------------------------------


class DeltaRow(NamedTuple):
    """One ``orderbook_delta`` frame -> ``rl_orderbook_deltas``."""

    connection_id: uuid.UUID
    market_ticker: str
    sid: int
    seq: int
    side: str  # "yes" | "no"
    price_e4: int
    delta_e2: int
    exchange_ts: datetime | None
    received_at: datetime


class SnapshotRow(NamedTuple):
    """One book snapshot -> ``rl_orderbook_snapshots``. Levels are ``[[price_e4, size_e2]]``."""

    connection_id: uuid.UUID
    market_ticker: str
    sid: int
    seq: int
    yes_levels: list[list[int]]
    no_levels: list[list[int]]
    exchange_ts: datetime | None
    received_at: datetime
    source: str  # "ws" | "periodic" | "resync"
    as_of_sid: int | None = None
    as_of_seq: int | None = None


class TradeRow(NamedTuple):
    """One public trade -> ``rl_public_trades``."""

    connection_id: uuid.UUID
    market_ticker: str
    sid: int
    seq: int
    trade_id: str
    yes_price_e4: int
    no_price_e4: int
    count_e2: int
    taker_side: str
    exchange_ts: datetime | None
    received_at: datetime


class EventRow(NamedTuple):
    """A recording marker (gap, resync, disconnect, ...) -> ``rl_recording_events``."""

    connection_id: uuid.UUID
    kind: str
    market_ticker: str
    sid: int | None
    expected_seq: int | None
    got_seq: int | None
    detail: str
    at: datetime


class ConnectionRow(NamedTuple):
    """One WebSocket connection -> ``rl_recording_connections`` (open and close records)."""

    id: uuid.UUID
    exchange: str
    ws_url: str
    markets: list[str]
    use_yes_price: bool
    host: str
    pid: int | None
    opened_at: datetime
    closed_at: datetime | None
    close_reason: str


class WorkerStatusRow(NamedTuple):
    """A worker's heartbeat -> ``rl_worker_status`` (one row per worker name, upserted)."""

    name: str
    kind: str
    host: str
    pid: int
    started_at: datetime
    updated_at: datetime
    stopped_at: datetime | None
    healthy: bool
    problems: list[str]
    counters: dict[str, Any]


DELTA: Final = "delta"
SNAPSHOT: Final = "snapshot"
TRADE: Final = "trade"
EVENT: Final = "event"
# Recording metadata, written through the same queue and spill as the market data so that
# nothing on the recorder's event loop ever waits on the database for it. Keys name spill
# files: lowercase letters only.
CONNECTION: Final = "connection"  # a connection opened: inserted, never overwritten
CONNECTION_CLOSE: Final = "connclose"  # its close record: inserted or sets closed_at/reason
WORKER_STATUS: Final = "workerstatus"  # a heartbeat: the latest per worker name wins


@dataclass(frozen=True)
class TableSpec:
    """What the writer needs to know about one table (its key is what ``enqueue`` takes)."""

    key: str
    db_table: str
    model_label: str
    row_type: type
    pg_types: list[str]  # PostgreSQL type of each column, for binary COPY
    time_index: int | None  # the column holding the local receive time (lag is measured from
    # it); None for metadata, whose age says nothing about the writer's lag
    exchange_ts_index: int | None  # the column holding the exchange's timestamp, if any
    unique_message: bool  # unique (connection, sid, seq): writes can ignore conflicts
    # Upsert tables: rows with equal ``conflict_columns`` are one record. A write keeps the
    # last such row of a batch and stores it with INSERT ... ON CONFLICT (conflict_columns)
    # DO UPDATE SET update_columns (DO NOTHING when there are none), so replays and
    # repeated heartbeats stay idempotent.
    conflict_columns: tuple[str, ...] = ()
    update_columns: tuple[str, ...] = ()
    # If set, an update applies only when the row is at least as new by this column as the
    # stored one: spilled heartbeats replayed after live ones must not turn the clock back.
    newer_column: str | None = None
    auto_pk: bool = True  # the model's ``id`` is generated by the database, not in the row
    metadata: bool = False  # not market data: left out of ``rows_written``

    @property
    def columns(self) -> tuple[str, ...]:
        return self.row_type._fields  # type: ignore[attr-defined]


_CONNECTION_OPEN: Final = TableSpec(
    CONNECTION,
    "rl_recording_connections",
    "marketdata.RecordingConnection",
    ConnectionRow,
    "uuid varchar varchar jsonb bool varchar int4 timestamptz timestamptz varchar".split(),
    time_index=None,
    exchange_ts_index=None,
    unique_message=False,
    conflict_columns=("id",),
    auto_pk=False,
    metadata=True,
)

TABLES: Final[dict[str, TableSpec]] = {
    DELTA: TableSpec(
        DELTA,
        "rl_orderbook_deltas",
        "marketdata.OrderbookDelta",
        DeltaRow,
        "uuid varchar int8 int8 varchar int4 int8 timestamptz timestamptz".split(),
        time_index=8,
        exchange_ts_index=7,
        unique_message=True,
    ),
    SNAPSHOT: TableSpec(
        SNAPSHOT,
        "rl_orderbook_snapshots",
        "marketdata.OrderbookSnapshot",
        SnapshotRow,
        "uuid varchar int8 int8 jsonb jsonb timestamptz timestamptz varchar int8 int8".split(),
        time_index=7,
        exchange_ts_index=6,
        unique_message=True,
    ),
    TRADE: TableSpec(
        TRADE,
        "rl_public_trades",
        "marketdata.PublicTrade",
        TradeRow,
        "uuid varchar int8 int8 varchar int4 int4 int8 varchar timestamptz timestamptz".split(),
        time_index=10,
        exchange_ts_index=9,
        unique_message=True,
    ),
    EVENT: TableSpec(
        EVENT,
        "rl_recording_events",
        "marketdata.RecordingEvent",
        EventRow,
        "uuid varchar varchar int8 int8 int8 varchar timestamptz".split(),
        time_index=7,
        exchange_ts_index=None,
        unique_message=False,
    ),
    CONNECTION: _CONNECTION_OPEN,
    # The same row and table; a close record updates an existing row's close fields.
    CONNECTION_CLOSE: dataclasses.replace(
        _CONNECTION_OPEN, key=CONNECTION_CLOSE, update_columns=("closed_at", "close_reason")
    ),
    WORKER_STATUS: TableSpec(
        WORKER_STATUS,
        "rl_worker_status",
        "workers.WorkerStatus",
        WorkerStatusRow,
        "varchar varchar varchar int4 timestamptz timestamptz timestamptz bool jsonb jsonb".split(),
        time_index=None,
        exchange_ts_index=None,
        unique_message=False,
        conflict_columns=("name",),
        newer_column="updated_at",
        update_columns=(
            "kind",
            "host",
            "pid",
            "started_at",
            "updated_at",
            "stopped_at",
            "healthy",
            "problems",
            "counters",
        ),
        metadata=True,
    ),
}

DELTA_COLUMNS: Final = DeltaRow._fields
SNAPSHOT_COLUMNS: Final = SnapshotRow._fields
TRADE_COLUMNS: Final = TradeRow._fields
EVENT_COLUMNS: Final = EventRow._fields


def utc_from_ms(epoch_ms: int | None) -> datetime | None:
    """Unix milliseconds (the protocol's ``*_ts_ms``) -> aware UTC datetime; None stays None."""
    if epoch_ms is None:
        return None
    return datetime.fromtimestamp(epoch_ms / 1000, UTC)


def utc_from_ns(epoch_ns: int) -> datetime:
    """Unix nanoseconds (``time.time_ns()``) -> aware UTC datetime, truncated to microseconds."""
    seconds, ns = divmod(epoch_ns, 1_000_000_000)
    return datetime.fromtimestamp(seconds, UTC).replace(microsecond=ns // 1000)


# --------------------------------------------------------------------------------------------
# Configuration and counters
# --------------------------------------------------------------------------------------------

METHODS: Final = ("copy", "bulk_create")

# WriterConfig field -> Django setting that provides its default.
SETTING_NAMES: Final = {
    "method": "RL_WRITER_METHOD",
    "batch_rows": "RL_WRITER_BATCH_ROWS",
    "flush_interval_s": "RL_WRITER_FLUSH_INTERVAL_S",
    "queue_max_rows": "RL_WRITER_QUEUE_MAX_ROWS",
    "spill_dir": "RL_WRITER_SPILL_DIR",
    "spill_fsync_interval_s": "RL_WRITER_SPILL_FSYNC_INTERVAL_S",
    "spill_segment_max_bytes": "RL_WRITER_SPILL_SEGMENT_MAX_BYTES",
    "spill_max_bytes": "RL_WRITER_SPILL_MAX_BYTES",
    "spill_min_free_bytes": "RL_WRITER_SPILL_MIN_FREE_BYTES",
    "retry_initial_s": "RL_WRITER_RETRY_INITIAL_S",
    "retry_max_s": "RL_WRITER_RETRY_MAX_S",
    "db_timeout_s": "RL_WRITER_DB_TIMEOUT_S",
    "close_timeout_s": "RL_WRITER_CLOSE_TIMEOUT_S",
    "stuck_after_s": "RL_WRITER_STUCK_AFTER_S",
}


@dataclass(frozen=True)
class WriterConfig:
    """How the writer batches, bounds, spills and retries. Times in seconds.

    ``queue_max_rows`` bounds memory: a delta row costs roughly 0.4 KB in the queue, so the
    default 200_000 rows is about 80 MB; past it rows go straight to the spill file.
    ``db_timeout_s`` bounds a connect or an unacknowledged send to PostgreSQL (libpq
    ``connect_timeout`` / ``tcp_user_timeout``), so a dead network is noticed, not waited on.
    ``db_overrides`` replaces keys of the writer's own copy of ``DATABASES[using]`` (for
    example ``HOST``/``PORT`` of a pooler); other connections are unaffected.

    The spill takes at most ``spill_max_bytes`` waiting for the database (a delta row is
    about 160 bytes of JSON, so the default 16 GiB holds about 6 hours at 5k msg/s) and
    stops while the disk has less than ``spill_min_free_bytes`` free (0: no free-space check).
    """

    method: str = "copy"
    batch_rows: int = 5000
    flush_interval_s: float = 0.25
    queue_max_rows: int = 200_000
    spill_dir: Path = Path("var/spill")
    spill_fsync_interval_s: float = 1.0
    spill_segment_max_bytes: int = 64 * 1024 * 1024
    spill_max_bytes: int = 16 * 1024**3
    spill_min_free_bytes: int = 256 * 1024**2
    retry_initial_s: float = 0.25
    retry_max_s: float = 5.0
    db_timeout_s: float = 5.0
    close_timeout_s: float = 10.0
    stuck_after_s: float = 30.0
    using: str = "default"
    db_overrides: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"writer method {self.method!r} is not one of {', '.join(METHODS)}")
        for name in ("batch_rows", "queue_max_rows", "spill_segment_max_bytes", "spill_max_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"writer {name} must be >= 1, got {getattr(self, name)}")
        if self.spill_min_free_bytes < 0:
            raise ValueError(
                f"writer spill_min_free_bytes must be >= 0, got {self.spill_min_free_bytes}"
            )
        for name in ("flush_interval_s", "retry_initial_s", "retry_max_s", "db_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"writer {name} must be > 0 seconds, got {getattr(self, name)}")
        if self.queue_max_rows < self.batch_rows:
            raise ValueError(
                f"writer queue_max_rows ({self.queue_max_rows}) must be >= batch_rows "
                f"({self.batch_rows}), or no full batch could ever be queued"
            )
        object.__setattr__(self, "spill_dir", Path(self.spill_dir))

    @classmethod
    def from_settings(cls, **overrides: Any) -> WriterConfig:
        """Defaults from Django settings (``RL_WRITER_*``); non-None ``overrides`` win."""
        from django.conf import settings

        values: dict[str, Any] = {}
        for name, setting in SETTING_NAMES.items():
            if hasattr(settings, setting):
                values[name] = getattr(settings, setting)
        values.setdefault("spill_dir", Path(settings.VAR_DIR) / "spill")
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


@dataclass(frozen=True)
class WriterStats:
    """A consistent-enough snapshot of the writer's counters (rows, bytes, seconds).

    ``retries`` counts failed write attempts (each one spilled its rows or left them in the
    spill); ``overflow_rows`` were spilled by ``enqueue`` because the queue was at its bound;
    ``commit_lag_s`` is commit time minus the oldest ``received_at`` of a live batch and
    ``exchange_lag_s`` the same from the exchange's timestamp. Times ``*_unix_s`` are Unix
    seconds. ``rows_written`` counts market data and markers; metadata writes (connection
    records, heartbeats) are only in ``rows_written_by_table``.

    Loss (only when the database, the spill and the queue are all full at once):
    ``rows_lost`` rows were neither stored nor kept on disk; ``loss_open_markets`` markets
    have lost rows not yet covered by a ``gap`` marker, and ``gap_markers`` markers were
    queued for them. ``spill_full`` says rows need the spill now (the database is down) and
    it refuses them; ``spill_refused`` says why it last refused (its cap, the free-space
    guard or a write error); ``held_rows`` are rows the worker keeps in memory meanwhile.
    """

    method: str
    running: bool
    db_up: bool
    stuck: bool
    queue_depth: int
    queue_max_rows: int
    enqueued_rows: int
    overflow_rows: int
    rows_written: int
    rows_written_by_table: dict[str, int]
    batches: int
    retries: int
    spilled_rows: int
    spilled_bytes: int
    spill_pending_rows: int
    spill_pending_bytes: int
    replayed_rows: int
    rejected_rows: int
    last_error: str
    last_error_unix_s: float | None
    last_commit_unix_s: float | None
    last_commit_lag_s: float | None
    max_commit_lag_s: float | None
    last_exchange_lag_s: float | None
    max_exchange_lag_s: float | None
    rows_lost: int
    last_loss_unix_s: float | None
    last_loss_reason: str
    loss_open_markets: int
    gap_markers: int
    spill_full: bool
    spill_refused: str
    spill_max_bytes: int
    held_rows: int


class WriterClosed(RuntimeError):
    """``enqueue`` was called on a writer that is not running (not started, or closed)."""


# --------------------------------------------------------------------------------------------
# Logging helpers
# --------------------------------------------------------------------------------------------

_SECRET_PATTERNS = (
    re.compile(r"(password\s*=\s*)\S+", re.IGNORECASE),
    re.compile(r"(://[^:/@\s]+:)[^@\s]+(@)"),
)


def _safe_error(exc: BaseException) -> str:
    """One line naming the error, cut to 300 characters, with any password redacted."""
    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0] if lines else ''}"
    text = _SECRET_PATTERNS[0].sub(r"\1***", text)
    text = _SECRET_PATTERNS[1].sub(r"\1***\2", text)
    return text[:300]


class _RateLimitedLog:
    """Log a line per key at most once per ``interval_s``, counting what it held back."""

    def __init__(self, interval_s: float = 10.0) -> None:
        self.interval_s = interval_s
        self._last: dict[str, float] = {}
        self._held: collections.Counter[str] = collections.Counter()

    def __call__(self, key: str, level: int, msg: str, *args: object) -> None:
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.interval_s:
            self._held[key] += 1
            return
        self._last[key] = now
        held = self._held.pop(key, 0)
        logger.log(level, msg + " suppressed=%d", *args, held)


# --------------------------------------------------------------------------------------------
# The spill store (pure Python: JSON lines on the local disk)
# --------------------------------------------------------------------------------------------

_ENCODER = msgspec.json.Encoder()
_DECODERS = {key: msgspec.json.Decoder(spec.row_type) for key, spec in TABLES.items()}
_SEGMENT_RE = re.compile(r"^(\d{8})\.([a-z]+)\.jsonl$")
_UNENCODABLE = (ValueError, TypeError, OverflowError, msgspec.EncodeError)
_FREE_SPACE_CHECK_S: Final = 0.25  # statvfs at most this often...
_FREE_SPACE_CHECK_BYTES: Final = 4 * 1024 * 1024  # ...or after this much was written


class SpillRefused(Exception):
    """The spill cannot take rows now: its cap, the free-space guard, or the disk failed."""


@dataclass
class SpillChunk:
    """Rows read from one sealed segment, not yet committed (kept until they are)."""

    table: str
    rows: list[tuple]
    path: Path
    start_offset: int
    end_offset: int
    line_count: int  # lines consumed from the file (rows plus corrupt lines)
    corrupt_lines: list[bytes]
    at_end: bool


class SpillStore:
    """Append-only spill segments in a directory that this writer owns while it runs.

    Layout under ``base_dir``: ``w-<pid>-<start ns>/`` per writer (held by an ``flock`` on its
    ``.lock`` file, so a live writer's files are never adopted by another process), in it
    ``<segment no>.<table>.jsonl`` files with one JSON array (a row) per line, and
    ``rejected/<writer>.jsonl`` for rows the database refused or lines that could not be
    read back, each with the reason. ``append`` is thread-safe; reading, sealing and
    ``sync`` belong to the writer's thread.

    ``append`` raises :class:`SpillRefused` instead of writing when the rows waiting on disk
    would pass ``max_bytes``, when the disk would keep less than ``min_free_bytes`` free, or
    when the directory or a write fails (ENOSPC, EIO, a read-only disk): a refused append
    leaves no torn line behind, and the store takes rows again as soon as there is room.
    Each append is one ``os.write`` per batch, so the rows are with the OS when it returns.
    """

    def __init__(
        self,
        base_dir: Path,
        *,
        segment_max_bytes: int = 64 * 1024 * 1024,
        fsync_interval_s: float = 1.0,
        max_bytes: int = 16 * 1024**3,
        min_free_bytes: int = 0,
    ) -> None:
        self.base_dir = Path(base_dir)
        self.segment_max_bytes = segment_max_bytes
        self.fsync_interval_s = fsync_interval_s
        self.max_bytes = max_bytes
        self.min_free_bytes = min_free_bytes
        self.refusing = ""  # why the last append was refused; "" once one succeeds
        # Called (table, row, reason) after a row is kept in the rejected file.
        self.on_reject: Callable[[str, tuple, str], None] | None = None
        self.refused_appends = 0
        self._free_checked_at = -math.inf
        self._free_at_check: int | None = None
        self._written_since_check = 0
        self._lock = threading.Lock()
        self._dir: Path | None = None
        self._lock_fd: int | None = None
        self._next_segment = 1
        self._active: dict[str, tuple[Path, int, int]] = {}  # table -> (path, fd, bytes)
        self._sealed: list[Path] = []
        self._reader: tuple[Path, Any] | None = None
        self._chunk: SpillChunk | None = None
        self._dirty_since: float | None = None
        self._rejected_file: Any = None
        self.pending_rows = 0
        self.pending_bytes = 0
        self.spilled_rows = 0
        self.spilled_bytes = 0
        self.rejected_rows = 0
        self.adopted_rows = 0

    # -- ownership --------------------------------------------------------------------------

    @property
    def directory(self) -> Path | None:
        return self._dir

    def open(self) -> None:
        """Create and lock this writer's directory; adopt segments of writers that died."""
        with self._lock:
            self._open_locked()

    def _open_locked(self) -> None:
        if self._dir is not None:
            return
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.pending_rows = self.pending_bytes = 0  # a reopened store re-adopts what it left
        name = f"w-{os.getpid()}-{time.time_ns()}"
        staging = self.base_dir / f"tmp-{name}"
        staging.mkdir()
        fd = os.open(staging / ".lock", os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        final = self.base_dir / name
        staging.rename(final)  # only complete, locked directories are ever called w-*
        self._dir, self._lock_fd = final, fd
        self._adopt_orphans()

    def _adopt_orphans(self) -> None:
        assert self._dir is not None
        for other in sorted(self.base_dir.iterdir()):
            if other == self._dir or not other.is_dir() or other.name == "rejected":
                continue
            if not other.name.startswith("w-") and not (
                # a tmp- directory is a writer starting up, unless it is old (crashed then)
                other.name.startswith("tmp-") and _age_s(other) > 60
            ):
                continue
            try:
                fd = os.open(other / ".lock", os.O_CREAT | os.O_RDWR, 0o600)
            except FileNotFoundError:
                continue  # removed by its owner meanwhile
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue  # a live writer owns it
            try:
                segments = sorted(p for p in other.iterdir() if _SEGMENT_RE.match(p.name))
                for path in segments:
                    table = _SEGMENT_RE.match(path.name).group(2)  # type: ignore[union-attr]
                    if table not in TABLES:
                        continue
                    target = self._new_segment_path(table)
                    path.rename(target)
                    data = target.read_bytes()
                    rows = data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)
                    self._sealed.append(target)
                    self.pending_rows += rows
                    self.pending_bytes += len(data)
                    self.adopted_rows += rows
                leftovers = [p for p in other.iterdir() if p.name != ".lock"]
                if not leftovers:
                    (other / ".lock").unlink(missing_ok=True)
                    other.rmdir()
            finally:
                os.close(fd)
        if self.adopted_rows:
            logger.warning(
                "writer.spill_adopted rows=%d bytes=%d dir=%s",
                self.adopted_rows,
                self.pending_bytes,
                self._dir,
            )

    def _new_segment_path(self, table: str) -> Path:
        assert self._dir is not None
        path = self._dir / f"{self._next_segment:08d}.{table}.jsonl"
        self._next_segment += 1
        return path

    # -- appending (any thread) -------------------------------------------------------------

    def append(self, table: str, rows: Sequence[tuple]) -> int:
        """Append rows of one table; returns the bytes written. Thread-safe.

        Raises :class:`SpillRefused` (nothing written) when the spill cannot take them. A row
        JSON cannot hold (an integer of thousands of digits) goes to the rejected file.
        """
        if not rows:
            return 0
        try:
            data = _ENCODER.encode_lines(rows)
        except _UNENCODABLE:
            rows, data = self._encodable(table, rows)
            if not rows:
                return 0
        with self._lock:
            try:
                self._open_locked()
            except OSError as exc:
                raise self._refuse(f"spill directory unusable: {_safe_error(exc)}") from exc
            reason = self._no_room(len(data))
            if reason:
                raise self._refuse(reason)
            active = self._active.get(table)
            if active is None:
                path = self._new_segment_path(table)
                try:
                    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                except OSError as exc:
                    raise self._refuse(f"spill file unusable: {_safe_error(exc)}") from exc
                active = (path, fd, 0)
            path, fd, size = active
            try:
                _write_all(fd, data)
            except OSError as exc:
                self._drop_torn_segment(table, path, fd, size)
                raise self._refuse(f"spill write failed: {_safe_error(exc)}") from exc
            self._active[table] = (path, fd, size + len(data))
            self._written_since_check += len(data)
            self.refusing = ""
            self.pending_rows += len(rows)
            self.pending_bytes += len(data)
            self.spilled_rows += len(rows)
            self.spilled_bytes += len(data)
            if self._dirty_since is None:
                self._dirty_since = time.monotonic()
        return len(data)

    def _encodable(self, table: str, rows: Sequence[tuple]) -> tuple[list[tuple], bytes]:
        good = []
        for row in rows:
            try:
                _ENCODER.encode(row)
            except _UNENCODABLE as exc:
                self.reject(table, row, f"row cannot be written to the spill: {_safe_error(exc)}")
            else:
                good.append(row)
        return good, _ENCODER.encode_lines(good) if good else b""

    def _refuse(self, reason: str) -> SpillRefused:
        self.refusing = reason
        self.refused_appends += 1
        return SpillRefused(reason)

    def _no_room(self, nbytes: int) -> str:
        """Why ``nbytes`` more cannot be spilled now ("" if they can). Under the lock."""
        if self.pending_bytes + nbytes > self.max_bytes:
            return (
                f"spill full: {self.pending_bytes} bytes wait for the database, cap "
                f"{self.max_bytes} (RL_WRITER_SPILL_MAX_BYTES)"
            )
        if self.min_free_bytes <= 0:
            return ""
        now = time.monotonic()
        if (
            now - self._free_checked_at >= _FREE_SPACE_CHECK_S
            or self._written_since_check >= _FREE_SPACE_CHECK_BYTES
        ):
            try:
                st = os.statvfs(self._dir or self.base_dir)
                self._free_at_check = st.f_bavail * st.f_frsize
            except OSError:
                self._free_at_check = None  # cannot tell: let the write itself decide
            self._free_checked_at = now
            self._written_since_check = 0
        if self._free_at_check is None:
            return ""
        free = self._free_at_check - self._written_since_check
        if free - nbytes < self.min_free_bytes:
            return (
                f"disk nearly full: {max(free, 0)} bytes free under {self.base_dir}, keeping "
                f"{self.min_free_bytes} (RL_WRITER_SPILL_MIN_FREE_BYTES)"
            )
        return ""

    def _drop_torn_segment(self, table: str, path: Path, fd: int, size: int) -> None:
        """After a failed write: cut the segment back to its last whole line and seal it
        (or remove it if empty), so no torn line stays in the middle of a file."""
        self._active.pop(table, None)
        with contextlib.suppress(OSError):
            os.ftruncate(fd, size)
        with contextlib.suppress(OSError):
            os.close(fd)
        if size:
            self._sealed.append(path)
        else:
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)

    # -- the writer's thread ----------------------------------------------------------------

    def sync(self, *, force: bool = False) -> None:
        """Hand buffered lines to the OS; fsync when due (or ``force``); seal big segments."""
        with self._lock:
            fds = [fd for _, fd, _ in self._active.values()]
            dirty_since = self._dirty_since
            due = dirty_since is not None and (
                force or time.monotonic() - dirty_since >= self.fsync_interval_s
            )
            if due:
                self._dirty_since = None
            too_big = [t for t, (_, _, size) in self._active.items()
                       if size >= self.segment_max_bytes]  # fmt: skip
        if due:
            for fd in fds:
                # Outside the lock, so enqueue never waits on the disk. A file sealed meanwhile
                # by another thread was fsync-ed by the sealing.
                with contextlib.suppress(OSError):
                    os.fsync(fd)
        for table in too_big:
            self._seal(table)

    def _seal(self, table: str) -> None:
        with self._lock:
            active = self._active.pop(table, None)
            if active is None:
                return
            path, fd, _ = active
            self._sealed.append(path)
        try:
            os.fsync(fd)
        except OSError as exc:  # the rows are with the OS; only a power cut could cost them
            logger.warning("writer.spill_fsync_failed path=%s error=%s", path, _safe_error(exc))
        finally:
            os.close(fd)

    def seal_all(self) -> None:
        """Seal every active segment so that its rows can be replayed."""
        for table in list(self._active):
            self._seal(table)

    def next_chunk(self, max_rows: int) -> SpillChunk | None:
        """The oldest rows not yet committed (the same chunk again until it is committed)."""
        if self._chunk is not None:
            return self._chunk
        while True:
            if self._reader is None:
                if not self._sealed and self._active:
                    self.seal_all()
                if not self._sealed:
                    return None
                path = self._sealed[0]
                self._reader = (path, open(path, "rb"))
            path, fh = self._reader
            start = fh.tell()
            lines = []
            for _ in range(max_rows):
                line = fh.readline()
                if not line:
                    break
                lines.append(line)
            table = _SEGMENT_RE.match(path.name).group(2)  # type: ignore[union-attr]
            rows, corrupt = _decode_lines(table, lines)
            chunk = SpillChunk(
                table=table,
                rows=rows,
                path=path,
                start_offset=start,
                end_offset=fh.tell(),
                line_count=len(lines),
                corrupt_lines=corrupt,
                at_end=fh.tell() >= os.fstat(fh.fileno()).st_size,  # sealed: no more growth
            )
            if not rows:
                self.commit_chunk(chunk)  # only corrupt lines or the end: nothing to write
                continue
            self._chunk = chunk
            return chunk

    def keep_only(self, chunk: SpillChunk, rows: list[tuple]) -> None:
        """After a partial write, only ``rows`` of the chunk still need to be written."""
        chunk.rows = rows

    def commit_chunk(self, chunk: SpillChunk) -> None:
        """The chunk's rows are in the database: forget them; delete a finished segment."""
        for line in chunk.corrupt_lines:
            self.reject(chunk.table, None, "spill line could not be decoded", raw=line)
        with self._lock:
            self._chunk = None
            self.pending_rows = max(0, self.pending_rows - chunk.line_count)
            self.pending_bytes = max(
                0, self.pending_bytes - (chunk.end_offset - chunk.start_offset)
            )
        if chunk.at_end and self._reader is not None:
            path, fh = self._reader
            fh.close()
            self._reader = None
            path.unlink(missing_ok=True)
            with self._lock:
                self._sealed.remove(path)

    def reject(self, table: str, row: tuple | None, reason: str, *, raw: bytes = b"") -> bool:
        """Keep a row the database refused (or an unreadable line) with its reason.

        Counted in ``rejected_rows`` either way; False when the rejected file could not be
        written (the disk failed): the caller then treats the row as lost.
        """
        try:
            self._reject(table, row, reason, raw=raw)
            if row is not None and self.on_reject is not None:
                self.on_reject(table, row, reason)
        except OSError as exc:
            with self._lock:
                self.rejected_rows += 1
                if self._rejected_file is not None:  # reopened next time
                    with contextlib.suppress(OSError):
                        self._rejected_file.close()
                    self._rejected_file = None
            logger.error(
                "writer.rejected_file_failed table=%s reason=%s error=%s",
                table,
                reason,
                _safe_error(exc),
            )
            return False
        return True

    def _reject(self, table: str, row: tuple | None, reason: str, *, raw: bytes = b"") -> None:
        with self._lock:
            self._open_locked()
            if self._rejected_file is None:
                folder = self.base_dir / "rejected"
                folder.mkdir(parents=True, exist_ok=True)
                assert self._dir is not None
                self._rejected_file = open(folder / f"{self._dir.name}.jsonl", "ab")
            record: dict[str, Any] = {
                "table": table,
                "reason": reason,
                "at": datetime.now(UTC),
            }
            if row is not None:
                record["row"] = row
            if raw:
                record["raw"] = raw.decode("utf-8", "replace")
            try:
                line = _ENCODER.encode(record)
            except (ValueError, TypeError, OverflowError, msgspec.EncodeError):
                # JSON cannot hold it (an integer of thousands of digits): keep a description.
                record["row"] = [_describe_int(v) for v in row or ()]
                line = _ENCODER.encode(record)
            self._rejected_file.write(line + b"\n")
            self._rejected_file.flush()
            self.rejected_rows += 1

    def close(self) -> None:
        """Flush and fsync everything and release the directory (kept if rows remain)."""
        self.seal_all()
        with self._lock:
            if self._reader is not None:
                self._reader[1].close()
                self._reader = None
            self._chunk = None
            if self._rejected_file is not None:
                with contextlib.suppress(OSError):
                    self._rejected_file.close()
                self._rejected_file = None
            if self._dir is None:
                return
            folder, fd = self._dir, self._lock_fd
            self._dir, self._lock_fd = None, None
            self._sealed.clear()
            self._next_segment = 1  # pending_* stay: they are the rows left on disk
            if not any(_SEGMENT_RE.match(p.name) for p in folder.iterdir()):
                (folder / ".lock").unlink(missing_ok=True)
                folder.rmdir()
            if fd is not None:
                os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    written = os.write(fd, data)
    if written == len(data):
        return  # the usual case, with no allocation (enqueue's path: see RecordWriter docs)
    view = memoryview(data)[written:]
    while view:
        view = view[os.write(fd, view) :]


def _age_s(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def _decode_lines(table: str, lines: list[bytes]) -> tuple[list[tuple], list[bytes]]:
    """Rows from complete JSON lines; lines that are torn or invalid come back separately."""
    decoder = _DECODERS[table]
    if lines and lines[-1].endswith(b"\n"):
        with contextlib.suppress(msgspec.DecodeError):
            return decoder.decode_lines(b"".join(lines)), []
    rows, corrupt = [], []
    for line in lines:
        if not line.endswith(b"\n"):
            corrupt.append(line)  # the torn end of a file whose writer died mid-write
            continue
        try:
            rows.append(decoder.decode(line))
        except msgspec.DecodeError:
            corrupt.append(line)
    return rows, corrupt


# --------------------------------------------------------------------------------------------
# Write methods (run in the writer's thread; Django imported there)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IntegerColumn:
    """An integer column of a table: its index in the row and the range the column holds."""

    index: int
    name: str
    low: int
    high: int


class IntegerOutOfRange(ValueError):
    """Rows holding an integer that does not fit its column: ``bad`` maps table -> {row index
    in the batch: reason}. Raised before anything is written, so nothing is ever wrapped."""

    def __init__(self, bad: dict[str, dict[int, str]]) -> None:
        self.bad = bad
        first = next(iter(next(iter(bad.values())).values()))
        super().__init__(first)


def integer_columns(spec: TableSpec, *, using: str = "default") -> tuple[IntegerColumn, ...]:
    """The integer columns of ``spec`` with their ranges, from the model's fields as the
    database ``using`` stores them (``integer_field_range``), not from a hand-written list."""
    from django.apps import apps
    from django.db import connections, models

    ops = connections[using].ops
    # By name, not position: a row may or may not carry the model's primary key (auto_pk).
    by_name = {f.attname: f for f in apps.get_model(spec.model_label)._meta.concrete_fields}
    columns = []
    for index, name in enumerate(spec.columns):
        model_field = by_name[name]
        if isinstance(model_field, models.IntegerField):
            low, high = ops.integer_field_range(model_field.get_internal_type())
            columns.append(
                IntegerColumn(
                    index,
                    model_field.column,
                    _INT64_MIN if low is None else low,
                    _INT64_MAX if high is None else high,
                )
            )
    return tuple(columns)


_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1
# The binary COPY type that carries each PostgreSQL integer column type exactly.
_PG_COPY_INT_TYPES: Final = {"smallint": "int2", "integer": "int4", "bigint": "int8"}


def _describe_int(value: object) -> str:
    """A value for an error line (an int of thousands of digits cannot even be printed)."""
    if isinstance(value, int) and abs(value) >= 10**30:
        return f"an integer of {value.bit_length()} bits"
    try:
        text = repr(value)
    except ValueError:  # a container of such integers
        return f"a {type(value).__name__} too large to print"
    return text if len(text) <= 60 else text[:57] + "..."


def _bad_integers(
    spec: TableSpec, columns: Sequence[IntegerColumn], rows: Sequence[tuple]
) -> dict[int, str]:
    """Rows (by index) with an integer outside its column's range, and why.

    One ``min``/``max`` per column over the batch in the common case (all in range); only a
    column that fails it is looked at row by row. ``None`` is left to the database's NOT
    NULL, and a value that is not an integer at all to the driver (it raises, never wraps).
    """
    bad: dict[int, str] = {}
    for column in columns:
        values = list(map(itemgetter(column.index), rows))
        try:
            if column.low <= min(values) and max(values) <= column.high:
                continue
        except TypeError:
            pass  # a None in a nullable column, or not a number: look row by row
        for k, value in enumerate(values):
            if isinstance(value, int) and not column.low <= value <= column.high:
                bad.setdefault(
                    k,
                    f"{spec.db_table}.{column.name} = {_describe_int(value)} does not fit the "
                    f"column ({column.low}..{column.high}): refused, never stored as another value",
                )
    return bad


class BatchWriteMethod:
    """How a batch reaches the database. Subclasses implement :meth:`write`.

    Every method refuses a batch holding an integer that does not fit its column
    (:class:`IntegerOutOfRange`, before writing anything): binary ``COPY`` would otherwise
    store 2^32 + 11 in an ``int4`` column as 11.
    """

    name = ""

    def __init__(self, *, using: str, batch_rows: int) -> None:
        self.using = using
        self.batch_rows = batch_rows
        self.integer_columns = {
            key: integer_columns(spec, using=using) for key, spec in TABLES.items()
        }

    def check_integers(self, batch: Mapping[str, Sequence[tuple]]) -> None:
        """Raise :class:`IntegerOutOfRange` naming every row with an out-of-range integer."""
        bad = {}
        for key, rows in batch.items():
            found = _bad_integers(TABLES[key], self.integer_columns[key], rows)
            if found:
                bad[key] = found
        if bad:
            raise IntegerOutOfRange(bad)

    def write(self, batch: Mapping[str, Sequence[tuple]], *, expect_conflicts: bool) -> None:
        """Store every row of ``batch`` (table key -> rows) in ONE transaction, idempotently.

        ``expect_conflicts`` says the rows may already be stored (a replay), so a method can
        pick its conflict-tolerant path first. Raises Django's database errors.
        """
        raise NotImplementedError

    def _write_events(self, rows: Sequence[tuple]) -> None:
        """Insert the events not already stored (events have no unique key of their own)."""
        from django.apps import apps

        model = apps.get_model(TABLES[EVENT].model_label)
        columns = EVENT_COLUMNS
        existing = set(
            model.objects.using(self.using)
            .filter(
                connection_id__in={r[0] for r in rows},
                at__in={r[7] for r in rows},
            )
            .values_list(*columns)
        )
        fresh = []
        for row in rows:
            key = tuple(row)
            if key not in existing:
                existing.add(key)
                fresh.append(model(None, *row))
        if fresh:
            model.objects.using(self.using).bulk_create(fresh, batch_size=self.batch_rows)


def _check_column_order(model: Any, spec: TableSpec) -> None:
    names = tuple(f.attname for f in model._meta.concrete_fields)
    expected = ("id", *spec.columns) if spec.auto_pk else spec.columns
    if names != expected:
        raise RuntimeError(
            f"{spec.model_label} fields {names} no longer match the writer's {spec.key} columns "
            f"{expected}; update {spec.row_type.__name__} in writer.py"
        )


def _latest_per_key(spec: TableSpec, rows: Sequence[tuple]) -> list[tuple]:
    """An upsert table's rows with one row per conflict key: the newest (by ``newer_column``,
    else the last: batches are FIFO). One statement may not update the same row twice, and
    only the newest heartbeat or close record matters."""
    index = [spec.columns.index(c) for c in spec.conflict_columns]
    newer = None if spec.newer_column is None else spec.columns.index(spec.newer_column)
    latest: dict[tuple, tuple] = {}
    for row in rows:
        key = tuple(row[i] for i in index)
        kept = latest.pop(key, None)  # re-insert: the dict keeps the order of the newest rows
        if kept is not None and newer is not None and kept[newer] > row[newer]:
            row = kept
        latest[key] = row
    return list(latest.values())


def _drop_stale(model: Any, spec: TableSpec, rows: list[tuple], using: str) -> list[tuple]:
    """Rows of a ``newer_column`` table that are not older than what is stored (the portable
    form of the copy method's ``DO UPDATE ... WHERE``; one writer per key, in its
    transaction)."""
    if spec.newer_column is None or len(spec.conflict_columns) != 1:
        return rows
    key_name = spec.conflict_columns[0]
    key_i, newer_i = spec.columns.index(key_name), spec.columns.index(spec.newer_column)
    stored = dict(
        model.objects.using(using)
        .filter(**{f"{key_name}__in": [row[key_i] for row in rows]})
        .values_list(key_name, spec.newer_column)
    )
    return [
        row for row in rows if stored.get(row[key_i]) is None or row[newer_i] >= stored[row[key_i]]
    ]


def _check_copy_types(model: Any, spec: TableSpec, using: str) -> None:
    """The binary COPY type of each integer column must be the column's own width: a
    narrower one wraps values round, a wider one makes PostgreSQL refuse every row."""
    from django.db import connections

    connection = connections[using]
    for column in integer_columns(spec, using=using):
        db_type = model._meta.get_field(spec.columns[column.index]).db_type(connection)
        wanted = _PG_COPY_INT_TYPES.get(db_type)
        if wanted != spec.pg_types[column.index]:
            raise RuntimeError(
                f"{spec.model_label}.{column.name} is {db_type} but the writer's COPY type is "
                f"{spec.pg_types[column.index]!r} (want {wanted!r}); update pg_types in writer.py"
            )


class BulkCreateMethod(BatchWriteMethod):
    """Django ``bulk_create(ignore_conflicts=True)``: portable (SQLite too), the slower one."""

    name = "bulk_create"

    def __init__(self, *, using: str, batch_rows: int) -> None:
        super().__init__(using=using, batch_rows=batch_rows)
        from django.apps import apps

        self._models = {key: apps.get_model(spec.model_label) for key, spec in TABLES.items()}
        for key, model in self._models.items():
            _check_column_order(model, TABLES[key])

    def write(self, batch: Mapping[str, Sequence[tuple]], *, expect_conflicts: bool) -> None:
        from django.db import transaction

        self.check_integers(batch)
        with transaction.atomic(using=self.using):
            for key, rows in batch.items():
                if key == EVENT:
                    self._write_events(rows)
                    continue
                model = self._models[key]
                spec = TABLES[key]
                if spec.conflict_columns:
                    fresh = _drop_stale(model, spec, _latest_per_key(spec, rows), self.using)
                    objs = [model(None, *row) if spec.auto_pk else model(*row) for row in fresh]
                    upsert: dict[str, Any] = (
                        {
                            "update_conflicts": True,
                            "unique_fields": spec.conflict_columns,
                            "update_fields": spec.update_columns,
                        }
                        if spec.update_columns
                        else {"ignore_conflicts": True}
                    )
                    model.objects.using(self.using).bulk_create(
                        objs, batch_size=self.batch_rows, **upsert
                    )
                    continue
                # Positional init in field order is several times faster than keywords.
                objs = [model(None, *row) for row in rows]
                model.objects.using(self.using).bulk_create(
                    objs, batch_size=self.batch_rows, ignore_conflicts=True
                )


class CopyMethod(BatchWriteMethod):
    """psycopg binary ``COPY``: straight into the table, or via staging when rows may repeat."""

    name = "copy"

    def __init__(self, *, using: str, batch_rows: int) -> None:
        super().__init__(using=using, batch_rows=batch_rows)
        from django.apps import apps
        from psycopg import sql

        self._sql: dict[str, dict[str, Any]] = {}
        for key, spec in TABLES.items():
            _check_column_order(apps.get_model(spec.model_label), spec)
            _check_copy_types(apps.get_model(spec.model_label), spec, using)
            if key == EVENT:
                continue
            cols = sql.SQL(", ").join(map(sql.Identifier, spec.columns))
            target = sql.Identifier(spec.db_table)
            stage = sql.Identifier(f"rl_stage_{key}")
            on_conflict = sql.SQL("ON CONFLICT DO NOTHING")
            if spec.conflict_columns:
                conflict = sql.SQL(", ").join(map(sql.Identifier, spec.conflict_columns))
                on_conflict = sql.SQL("ON CONFLICT ({}) DO NOTHING").format(conflict)
                if spec.update_columns:
                    on_conflict = sql.SQL("ON CONFLICT ({}) DO UPDATE SET {}").format(
                        conflict,
                        sql.SQL(", ").join(
                            sql.SQL("{} = EXCLUDED.{}").format(sql.Identifier(c), sql.Identifier(c))
                            for c in spec.update_columns
                        ),
                    )
                if spec.update_columns and spec.newer_column:
                    newer = sql.Identifier(spec.newer_column)
                    on_conflict += sql.SQL(" WHERE {}.{} <= EXCLUDED.{}").format(
                        target, newer, newer
                    )
            self._sql[key] = {
                "copy": sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(target, cols),
                "stage_copy": sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
                    stage, cols
                ),
                "stage_create": sql.SQL(
                    "CREATE TEMP TABLE IF NOT EXISTS {} ON COMMIT DELETE ROWS AS "
                    "SELECT {} FROM {} WITH NO DATA"
                ).format(stage, cols, target),
                "stage_insert": sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {} {}").format(
                    target, cols, cols, stage, on_conflict
                ),
            }

    def write(self, batch: Mapping[str, Sequence[tuple]], *, expect_conflicts: bool) -> None:
        from django.db import IntegrityError, connections, transaction

        conn = connections[self.using]
        self.check_integers(batch)
        with transaction.atomic(using=self.using):
            for key, rows in batch.items():
                if key == EVENT:
                    self._write_events(rows)
                    continue
                if TABLES[key].conflict_columns:  # upserts always go through staging
                    self._via_staging(conn, key, _latest_per_key(TABLES[key], rows))
                    continue
                if expect_conflicts:
                    self._via_staging(conn, key, rows)
                    continue
                try:
                    with transaction.atomic(using=self.using):  # a savepoint
                        self._copy(conn, self._sql[key]["copy"], key, rows)
                except IntegrityError as exc:
                    if getattr(exc.__cause__, "sqlstate", None) != "23505":
                        raise  # not a duplicate: a bad row, isolated by the caller
                    self._via_staging(conn, key, rows)

    def _copy(self, conn: Any, statement: Any, key: str, rows: Sequence[tuple]) -> None:
        types = TABLES[key].pg_types
        with conn.wrap_database_errors, conn.cursor() as cursor:
            with cursor.cursor.copy(statement) as copy:
                copy.set_types(types)
                write_row = copy.write_row
                for row in rows:
                    write_row(row)

    def _via_staging(self, conn: Any, key: str, rows: Sequence[tuple]) -> None:
        statements = self._sql[key]
        with conn.wrap_database_errors, conn.cursor() as cursor:
            cursor.cursor.execute(statements["stage_create"])
        self._copy(conn, statements["stage_copy"], key, rows)
        with conn.wrap_database_errors, conn.cursor() as cursor:
            cursor.cursor.execute(statements["stage_insert"])


_METHOD_CLASSES: Final = {"copy": CopyMethod, "bulk_create": BulkCreateMethod}


def _is_data_error(exc: BaseException) -> bool:
    """Errors that belong to particular rows (retrying the same rows would fail again)."""
    from django.db import DataError, IntegrityError

    return isinstance(exc, DataError | IntegrityError | TypeError | ValueError | OverflowError)


class _Outage(Exception):
    """The database failed (not the rows): ``unresolved`` still need writing."""

    def __init__(self, cause: BaseException, unresolved: dict[str, list[tuple]]) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.unresolved = unresolved


# --------------------------------------------------------------------------------------------
# The writer
# --------------------------------------------------------------------------------------------


class _FlushMarker:
    """Put in the queue by ``flush``: set once every row queued before it is handled."""

    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = threading.Event()


class RecordWriter:
    """Batched, bounded, non-blocking, lossless writer of recorded rows.

    Use::

        writer = RecordWriter()          # settings RL_WRITER_*, or keyword overrides
        writer.start()
        writer.enqueue(DELTA, DeltaRow(...))   # from the socket's task: O(1), no DB
        writer.flush(timeout_s=5)        # optional: wait until all is committed
        writer.close()                   # on shutdown: write or spill everything

    ``enqueue`` is thread-safe (several producers may call it; the queue bound is then soft
    by a few rows). Call ``close`` after the producers have stopped: ``enqueue`` on a
    closed writer raises :class:`WriterClosed`.
    """

    def __init__(self, config: WriterConfig | None = None, **overrides: Any) -> None:
        if config is None:
            config = WriterConfig.from_settings(**overrides)
        elif overrides:
            config = dataclasses.replace(
                config, **{k: v for k, v in overrides.items() if v is not None}
            )
        self.config = config
        self._queue: collections.deque[Any] = collections.deque()
        self._widths = {key: len(spec.columns) for key, spec in TABLES.items()}
        self._max_rows = config.queue_max_rows
        self._batch_rows = config.batch_rows
        self._spill = SpillStore(
            config.spill_dir,
            segment_max_bytes=config.spill_segment_max_bytes,
            fsync_interval_s=config.spill_fsync_interval_s,
            max_bytes=config.spill_max_bytes,
            min_free_bytes=config.spill_min_free_bytes,
        )
        self._wake = threading.Event()
        self._progress = threading.Condition()
        self._marker_lock = threading.Lock()
        self._overflow_lock = threading.Lock()
        self._markers_queued = 0
        self._thread: threading.Thread | None = None
        self._closed = True  # until start()
        self._stopping = False
        self._stop_deadline = math.inf
        self._method_name = config.method
        self._log = _RateLimitedLog()
        # Counters: written by the worker thread only (overflow_rows under its own lock).
        self._popped_rows = 0
        self._overflow_rows = 0
        self._rows_written = dict.fromkeys(TABLES, 0)
        self._batches = 0
        self._retries = 0
        self._replayed_rows = 0
        self._db_up = True
        self._failures_in_a_row = 0
        self._retry_at = 0.0
        self._last_error = ""
        self._last_error_unix_s: float | None = None
        self._last_commit_unix_s: float | None = None
        self._last_commit_lag_s: float | None = None
        self._max_commit_lag_s: float | None = None
        self._last_exchange_lag_s: float | None = None
        self._max_exchange_lag_s: float | None = None
        self._heartbeat = time.monotonic()
        self._failed_attempt_started_at = -math.inf
        self._method: BatchWriteMethod | None = None
        self._spill_pending_at_close = 0
        # Rows of a batch that neither the database nor the spill took: kept (in order) and
        # offered again before the worker takes more from the queue, which then fills.
        self._held: dict[str, list[tuple]] = {}
        self._held_retry_at = 0.0
        # Rows lost because the queue, the database and the spill were all full: one record
        # per (connection, market), [first received, last received, rows, reason], turned
        # into a "gap" marker as soon as rows are accepted again (see _end_loss_episode).
        self._loss_lock = threading.Lock()
        self._loss: dict[tuple[Any, str], list[Any]] = {}
        self._loss_keys = {key: _loss_key_columns(spec) for key, spec in TABLES.items()}
        self._rows_lost = 0
        self._gap_markers = 0
        self._last_loss_unix_s: float | None = None
        self._last_loss_reason = ""
        self._spill.on_reject = self._on_rejected

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> RecordWriter:
        """Open the spill directory (adopting a crashed writer's rows) and start the thread."""
        if self._thread is not None:
            raise RuntimeError("this writer was already started; make a new one")
        try:
            self._spill.open()
        except OSError as exc:
            from django.core.exceptions import ImproperlyConfigured

            # One clear line for the operator (the command prints it), not a traceback.
            raise ImproperlyConfigured(
                f"the writer's spill directory {self.config.spill_dir} is not usable "
                f"({_safe_error(exc)}): set RL_WRITER_SPILL_DIR to a writable directory"
            ) from None
        self._closed = False
        self._heartbeat = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="rl-writer", daemon=False)
        self._thread.start()
        logger.info(
            "writer.started method=%s batch_rows=%d flush_interval_s=%.3f queue_max_rows=%d "
            "spill_dir=%s",
            self.config.method,
            self._batch_rows,
            self.config.flush_interval_s,
            self._max_rows,
            self._spill.directory,
        )
        return self

    def __enter__(self) -> RecordWriter:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def enqueue(self, table: str, row: tuple) -> None:
        """Accept one row for ``table`` (DELTA, SNAPSHOT, TRADE or EVENT). O(1), never blocks
        on the database; past the queue bound the row is appended to the spill file instead.
        If the spill refuses it too (full, or the disk failed), the row is lost: counted in
        ``rows_lost`` and covered by a ``gap`` marker for its market, never raised.
        """
        width = self._widths.get(table)
        if width is None or len(row) != width:
            raise ValueError(_row_shape_error(table, row))
        if self._closed:
            raise WriterClosed("the writer is not running (start() it; enqueue before close())")
        queue = self._queue
        if len(queue) >= self._max_rows:
            self._overflow(table, row)
            return
        if self._loss:
            self._end_loss_episode()
        queue.append((table, row))
        if len(queue) == self._batch_rows:
            self._wake.set()

    def flush(self, timeout_s: float | None = None) -> bool:
        """Wait until every row enqueued so far is committed; True if it is.

        Returns False when ``timeout_s`` passes first, or as soon as a write attempted after
        this call fails (the database is down): the rows not written are then safe in the
        spill file (see :meth:`stats`) and are replayed when the database is back.
        """
        deadline = math.inf if timeout_s is None else time.monotonic() + timeout_s
        thread = self._thread
        if thread is None:
            return not self._queue
        if not thread.is_alive():
            return not self._queue and self._spill_pending_at_close == 0
        called_at = time.monotonic()
        marker = _FlushMarker()
        with self._marker_lock:
            self._markers_queued += 1
        self._queue.append(marker)
        self._wake.set()
        while not marker.done.wait(min(max(0.0, deadline - time.monotonic()), 0.25)):
            if time.monotonic() >= deadline:
                return False
            if self._held and self._failed_attempt_started_at > called_at and not self._db_up:
                return False  # the worker holds rows that neither the database nor disk take
        with self._progress:
            while self._spill.pending_rows > 0 or self._held:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not thread.is_alive():
                    return False
                if self._failed_attempt_started_at > called_at and not self._db_up:
                    return False
                self._progress.wait(min(remaining, 1.0))
        return True

    def close(self, timeout_s: float | None = None) -> bool:
        """Write (or, past ``timeout_s`` or with the database down, spill) everything, stop.

        Returns True when every accepted row is committed; False when some are left in the
        spill file (the next writer on this spill directory replays them) or the thread
        could not be stopped in time.
        """
        thread = self._thread
        if thread is None:
            return True
        timeout = self.config.close_timeout_s if timeout_s is None else timeout_s
        self._stop_deadline = min(self._stop_deadline, time.monotonic() + timeout)
        self._stopping = True
        self._wake.set()
        thread.join(timeout + self.config.db_timeout_s + 5.0)
        if thread.is_alive():
            # Hung on the database: keep what is queued safe on disk from this thread; the
            # batch the worker holds is spilled by it when its connection times out.
            logger.error("writer.close_timeout queue_depth=%d", len(self._queue))
            self._closed = True
            self._spill_leftovers()
            return False
        self._closed = True
        raced = bool(self._queue)
        if raced:  # a producer raced close(): keep its rows on disk for the next writer
            self._spill_leftovers()
            self._spill.close()
        stats = self.stats()
        logger.info(
            "writer.closed rows_written=%d spill_pending_rows=%d rejected_rows=%d",
            stats.rows_written,
            stats.spill_pending_rows,
            stats.rejected_rows,
        )
        return not raced and self._spill_pending_at_close == 0

    # -- counters ---------------------------------------------------------------------------

    def stats(self) -> WriterStats:
        """The counters now (cheap; safe from any thread)."""
        written = dict(self._rows_written)
        depth = len(self._queue)
        return WriterStats(
            method=self._method_name,
            running=self._thread is not None and self._thread.is_alive(),
            db_up=self._db_up,
            stuck=self.is_stuck(),
            queue_depth=depth,
            queue_max_rows=self._max_rows,
            enqueued_rows=self._popped_rows
            + depth
            + self._overflow_rows
            - self._markers_queued
            - self._gap_markers,
            overflow_rows=self._overflow_rows,
            rows_written=sum(n for t, n in written.items() if not TABLES[t].metadata),
            rows_written_by_table=written,
            batches=self._batches,
            retries=self._retries,
            spilled_rows=self._spill.spilled_rows,
            spilled_bytes=self._spill.spilled_bytes,
            spill_pending_rows=self._spill.pending_rows,
            spill_pending_bytes=self._spill.pending_bytes,
            replayed_rows=self._replayed_rows,
            rejected_rows=self._spill.rejected_rows,
            last_error=self._last_error,
            last_error_unix_s=self._last_error_unix_s,
            last_commit_unix_s=self._last_commit_unix_s,
            last_commit_lag_s=self._last_commit_lag_s,
            max_commit_lag_s=self._max_commit_lag_s,
            last_exchange_lag_s=self._last_exchange_lag_s,
            max_exchange_lag_s=self._max_exchange_lag_s,
            rows_lost=self._rows_lost,
            last_loss_unix_s=self._last_loss_unix_s,
            last_loss_reason=self._last_loss_reason,
            loss_open_markets=len(self._loss),
            gap_markers=self._gap_markers,
            spill_full=bool(self._spill.refusing) and (not self._db_up or bool(self._held)),
            spill_refused=self._spill.refusing,
            spill_max_bytes=self._spill.max_bytes,
            held_rows=self._held_rows(),
        )

    def stats_dict(self) -> dict[str, Any]:
        """:meth:`stats` as a JSON-ready dict (for ``/rl/status`` and progress lines)."""
        return dataclasses.asdict(self.stats())

    def _held_rows(self) -> int:
        with contextlib.suppress(RuntimeError):  # the worker changed it meanwhile
            return sum(len(rows) for rows in tuple(self._held.values()))
        return 0

    def problems(self) -> list[str]:
        """What makes this writer unhealthy now (for the recorder's ``/rl/health`` report):
        rows being lost (and for ``LOSS_REPORT_S`` after the last one), or a spill that
        refuses rows while the database is down, so that rows are lost once the queue fills.
        """
        last = self._last_loss_unix_s
        if last is not None and (self._loss or time.time() - last < LOSS_REPORT_S):
            return [
                f"writer lost {self._rows_lost} rows: the database, the spill and the queue "
                f"were all full ({self._last_loss_reason}); gap markers cover them"
            ]
        if self._spill.refusing and not self._db_up:
            return [
                f"writer cannot spill while the database is down ({self._spill.refusing}): "
                "rows are lost once its queue is full"
            ]
        return []

    def is_stuck(self) -> bool:
        """True when the thread died, or work is waiting and the thread has not turned over
        for ``stuck_after_s`` (hung on the database, say). A database that is down while the
        writer spills is not "stuck": that is ``db_up`` = False.
        """
        thread = self._thread
        if thread is None:
            return False
        if not thread.is_alive():
            return not self._closed
        waiting = bool(self._queue) or (self._db_up and self._spill.pending_rows > 0)
        return waiting and time.monotonic() - self._heartbeat > self.config.stuck_after_s

    # -- enqueue overflow -------------------------------------------------------------------

    def _overflow(self, table: str, row: tuple) -> None:
        try:
            self._spill.append(table, (row,))
        except SpillRefused as exc:
            self._lose(table, (row,), str(exc))
            return
        with self._overflow_lock:
            self._overflow_rows += 1
        if self._loss:
            self._end_loss_episode()
        self._log(
            "overflow",
            logging.WARNING,
            "writer.queue_full queue_depth=%d queue_max_rows=%d action=spill_from_enqueue",
            len(self._queue),
            self._max_rows,
        )

    # -- the worker thread ------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._method = self._make_method()
        except Exception as exc:
            self._method = None
            self._note_error(exc)
            logger.exception("writer.method_failed method=%s", self.config.method)
        try:
            self._loop()
        except Exception:  # a bug: keep the rows on disk rather than lose them
            logger.exception("writer.crashed")
        finally:
            self._closed = True
            self._spill_leftovers()
            self._spill_pending_at_close = self._spill.pending_rows
            with contextlib.suppress(Exception):
                self._spill.close()
            self._close_db()
            with self._progress:
                self._progress.notify_all()

    def _make_method(self) -> BatchWriteMethod:
        from django.db import connections

        wrapper = connections[self.config.using]
        settings_dict = dict(wrapper.settings_dict)
        settings_dict.update(self.config.db_overrides)
        name = self.config.method
        if wrapper.vendor == "postgresql":
            options = dict(settings_dict.get("OPTIONS") or {})
            # libpq wants whole seconds, at least 2, for connect_timeout.
            options.setdefault("connect_timeout", max(2, math.ceil(self.config.db_timeout_s)))
            options.setdefault("tcp_user_timeout", int(self.config.db_timeout_s * 1000))
            options.setdefault("keepalives", 1)
            options.setdefault("keepalives_idle", max(1, int(self.config.db_timeout_s)))
            options.setdefault("keepalives_interval", 1)
            options.setdefault("keepalives_count", 3)
            settings_dict["OPTIONS"] = options
        elif name == "copy":
            logger.info("writer.method_fallback method=bulk_create reason=copy_needs_postgresql")
            name = "bulk_create"
        wrapper.settings_dict = settings_dict  # this thread's connection object only
        self._method_name = name
        return _METHOD_CLASSES[name](using=self.config.using, batch_rows=self._batch_rows)

    def _loop(self) -> None:
        interval = self.config.flush_interval_s
        next_due = time.monotonic() + interval
        while True:
            now = time.monotonic()
            self._heartbeat = now
            if not self._stopping and not threading.main_thread().is_alive():
                # The program ended without close(): finish as close() would.
                self._stop_deadline = now + self.config.close_timeout_s
                self._stopping = True
            queue = self._queue
            worked = False
            past_deadline = self._stopping and now >= self._stop_deadline
            if self._loss and len(queue) < self._max_rows and not past_deadline:
                self._end_loss_episode()  # the queue takes rows again: mark what was lost
            if self._held:
                if past_deadline:
                    self._spill_leftovers()
                    worked = True
                elif now >= self._held_retry_at:
                    held, self._held = self._held, {}
                    self._dispatch(held)  # written, spilled, or held again
                    worked = not self._held
            elif queue and (
                len(queue) >= self._batch_rows
                or now >= next_due
                or self._markers_queued
                or self._stopping
            ):
                if self._stopping and now >= self._stop_deadline:
                    self._spill_leftovers()
                else:
                    batch, markers = self._pop_batch()
                    if batch:
                        self._dispatch(batch)
                    for marker in markers:
                        marker.done.set()
                next_due = time.monotonic() + interval
                worked = True
            if self._replay_one():
                worked = True
            self._spill.sync()
            with self._progress:
                self._progress.notify_all()
            if self._stopping and not queue and not self._held:
                if self._spill.pending_rows == 0 or time.monotonic() >= self._stop_deadline:
                    return
                if self._method is None:
                    return
            if worked:
                continue
            if self._held:
                wait_s = max(0.0, self._held_retry_at - time.monotonic())
            else:
                wait_s = max(0.0, next_due - time.monotonic()) if queue else interval
            if self._spill.pending_rows and not self._db_up:
                wait_s = min(wait_s, max(0.0, self._retry_at - time.monotonic()))
            if self._stopping:
                wait_s = min(wait_s, max(0.0, self._stop_deadline - time.monotonic()), 0.05)
            self._wake.wait(wait_s)
            self._wake.clear()

    def _pop_batch(self) -> tuple[dict[str, list[tuple]], list[_FlushMarker]]:
        batch: dict[str, list[tuple]] = {}
        markers: list[_FlushMarker] = []
        popleft = self._queue.popleft
        popped = 0
        for _ in range(self._batch_rows):
            try:
                item = popleft()
            except IndexError:
                break
            if item.__class__ is _FlushMarker:
                markers.append(item)
                continue
            table, row = item
            rows = batch.get(table)
            if rows is None:
                batch[table] = rows = []
            rows.append(row)
            popped += 1
        self._popped_rows += popped
        if markers:
            with self._marker_lock:
                self._markers_queued -= len(markers)
        return batch, markers

    def _spill_leftovers(self) -> None:
        """Move everything still queued to the spill file (shutdown past its deadline).

        What the spill refuses now is lost for good: counted, and logged with its markets
        and times, since no marker can be written for it either.
        """
        held, self._held = self._held, {}
        self._spill_or_lose(held)
        while self._queue:
            batch, markers = self._pop_batch()
            self._spill_or_lose(batch)
            for marker in markers:
                marker.done.set()
        with contextlib.suppress(OSError):
            self._spill.sync(force=True)
        with self._loss_lock:
            records, self._loss = self._loss, {}
        for (conn, market), (first, last, rows, reason) in list(records.items())[:100]:
            logger.error(
                "writer.lost_unmarked connection=%s market=%s rows=%d first=%s last=%s reason=%s",
                conn,
                market or "*",
                rows,
                first.isoformat(),
                last.isoformat(),
                reason,
            )

    def _spill_or_lose(self, batch: Mapping[str, Sequence[tuple]]) -> None:
        for table, rows in batch.items():
            try:
                self._spill.append(table, rows)
            except SpillRefused as exc:
                self._lose(table, rows, f"{exc} (at shutdown)")

    def _spill_or_hold(self, batch: Mapping[str, Sequence[tuple]]) -> None:
        """Spill a batch the database did not take; what the spill refuses is held."""
        for table, rows in batch.items():
            try:
                self._spill.append(table, rows)
            except SpillRefused as exc:
                self._held.setdefault(table, []).extend(rows)
                self._log(
                    "spill_refused",
                    logging.ERROR,
                    "writer.spill_refused table=%s held_rows=%d queue_depth=%d reason=%s",
                    table,
                    len(self._held[table]),
                    len(self._queue),
                    exc,
                )
        if self._held:
            self._held_retry_at = max(
                self._retry_at, time.monotonic() + self.config.retry_initial_s
            )

    # -- loss bookkeeping (only when the queue, the database and the spill are all full) ----

    def _on_rejected(self, table: str, row: tuple, reason: str) -> None:
        """A row kept in the rejected file is still missing from its table: history must not
        trust its market's book across it either (the recorder's own book had it, so the
        next snapshot is good). Not counted as lost: it is on disk, with its reason."""
        if table == EVENT and row[1] == "gap" and str(row[6]).startswith("writer "):
            return  # our own marker: marking it again could never end
        self._lose(table, (row,), f"rejected: {reason}", counted=False)

    def _lose(
        self, table: str, rows: Sequence[tuple], reason: str, *, counted: bool = True
    ) -> None:
        """Count rows that cannot be kept and remember, per market, which times they cover
        (``counted`` False: only remember them, for a row kept in the rejected file)."""
        conn_index, market_index = self._loss_keys[table]
        time_index = TABLES[table].time_index
        now = datetime.now(UTC)
        with self._loss_lock:
            loss = self._loss
            for row in rows:
                at = row[time_index]
                if not isinstance(at, datetime) or at.tzinfo is None:
                    at = now
                conn = row[conn_index] if conn_index is not None else None
                market = row[market_index] if market_index is not None else ""
                if not isinstance(market, str) or len(market) > _MARKET_MAX_CHARS:
                    market = ""  # no usable market: the marker then covers the connection
                record = loss.get((conn, market))
                if record is None:
                    if len(loss) >= LOSS_RECORDS_MAX:
                        market = ""  # bounded: fold into one record for the connection
                    record = loss.setdefault((conn, market), [at, at, 0, reason])
                record[0] = min(record[0], at)
                record[1] = max(record[1], at)
                record[2] += 1
                record[3] = reason
            if not counted:
                return
            self._rows_lost += len(rows)
            self._last_loss_unix_s = time.time()
            self._last_loss_reason = reason
        self._log(
            "lost",
            logging.ERROR,
            "writer.rows_lost table=%s rows=%d rows_lost=%d open_markets=%d reason=%s",
            table,
            len(rows),
            self._rows_lost,
            len(self._loss),
            reason,
        )

    def _end_loss_episode(self) -> None:
        """Rows are accepted again: queue one ``gap`` marker per market that lost rows, at its
        first lost row, so history untrusts the market from there to its next snapshot.

        Called before the first row accepted after a loss, so every snapshot stored later was
        received after all the rows lost so far: none can make history trust a book across
        them. The markers go through the queue like any row (and are counted lost again,
        keeping their time, if they cannot be kept either).
        """
        with self._loss_lock:
            if not self._loss:
                return
            records, self._loss = self._loss, {}
            markers = [
                EventRow(
                    conn,
                    "gap",
                    market,
                    None,
                    None,
                    None,
                    (
                        f"writer dropped {rows} rows received {first.isoformat()} to "
                        f"{last.isoformat()}: {reason}"
                    )[:_DETAIL_MAX_CHARS],
                    first,
                )
                for (conn, market), (first, last, rows, reason) in records.items()
                if conn is not None
            ]
            for marker in markers:
                self._queue.append((EVENT, marker))
            self._gap_markers += len(markers)
        unmarked = sum(r[2] for (conn, _), r in records.items() if conn is None)
        logger.warning(
            "writer.loss_marked gap_markers=%d rows_lost=%d unmarked_rows=%d",
            len(markers),
            self._rows_lost,
            unmarked,
        )

    def _db_usable(self) -> bool:
        return self._method is not None and time.monotonic() >= self._retry_at

    def _dispatch(self, batch: dict[str, list[tuple]]) -> None:
        """Write a live batch, or spill it while the database is failing."""
        if not self._db_usable():
            self._spill_or_hold(batch)
            return
        attempt_started = time.monotonic()
        try:
            rejected = self._write_isolating_bad_rows(batch, expect_conflicts=False)
        except _Outage as outage:
            self._on_outage(outage.cause, attempt_started)
            self._spill_or_hold(outage.unresolved)
            return
        self._on_commit(batch, rejected, live=True)

    def _replay_one(self) -> bool:
        """Replay one spilled chunk if the database is usable and the live queue has room."""
        if self._spill.pending_rows == 0 or not self._db_usable():
            return False
        if len(self._queue) >= self._max_rows // 2 and not self._stopping:
            return False  # live rows first: they would overflow otherwise
        chunk = self._spill.next_chunk(self._batch_rows)
        if chunk is None:
            return False
        attempt_started = time.monotonic()
        try:
            rejected = self._write_isolating_bad_rows(
                {chunk.table: chunk.rows}, expect_conflicts=True
            )
        except _Outage as outage:
            self._on_outage(outage.cause, attempt_started)
            self._spill.keep_only(chunk, outage.unresolved.get(chunk.table, []))
            return False
        self._spill.commit_chunk(chunk)
        self._replayed_rows += len(chunk.rows) - rejected[chunk.table]
        self._on_commit({chunk.table: chunk.rows}, rejected, live=False)
        return True

    def _write_isolating_bad_rows(
        self, batch: dict[str, list[tuple]], *, expect_conflicts: bool
    ) -> collections.Counter[str]:
        """Write the batch in one transaction; if rows are refused, bisect to find them.

        Returns how many rows of each table were refused (and kept in the rejected file).
        Raises :class:`_Outage` (with the rows not yet committed) when the database fails.
        """
        assert self._method is not None
        rejected: collections.Counter[str] = collections.Counter()
        try:
            self._method.write(batch, expect_conflicts=expect_conflicts)
            return rejected
        except IntegerOutOfRange as exc:
            # The method named the rows that cannot be stored as they are: keep them aside
            # and write the others (no bisecting needed for these).
            batch = self._reject_out_of_range(batch, exc.bad, rejected)
            if not batch:
                return rejected
            try:
                self._method.write(batch, expect_conflicts=expect_conflicts)
                return rejected
            except Exception as again:
                if not _is_data_error(again):
                    raise _Outage(again, batch) from again
        except Exception as exc:
            if not _is_data_error(exc):
                raise _Outage(exc, batch) from exc
        # Some row is refused: halve until each bad row stands alone; keep those aside.
        stack = [(table, rows) for table, rows in batch.items()]
        while stack:
            table, rows = stack.pop()
            try:
                self._method.write({table: rows}, expect_conflicts=True)
            except Exception as exc:
                if not _is_data_error(exc):
                    unresolved: dict[str, list[tuple]] = {}
                    for t, r in [*stack, (table, rows)]:
                        unresolved.setdefault(t, []).extend(r)
                    raise _Outage(exc, unresolved) from exc
                if len(rows) == 1:
                    self._reject_row(table, rows[0], _safe_error(exc), rejected)
                    continue
                half = len(rows) // 2
                stack.append((table, rows[half:]))
                stack.append((table, rows[:half]))
        return rejected

    def _reject_out_of_range(
        self,
        batch: dict[str, list[tuple]],
        bad: Mapping[str, Mapping[int, str]],
        rejected: collections.Counter[str],
    ) -> dict[str, list[tuple]]:
        """Keep the named rows in the rejected file; the rest of the batch, to write."""
        rest: dict[str, list[tuple]] = {}
        for table, rows in batch.items():
            reasons = bad.get(table, {})
            for k, row in enumerate(rows):
                reason = reasons.get(k)
                if reason is None:
                    rest.setdefault(table, []).append(row)
                else:
                    self._reject_row(table, row, reason, rejected)
        return rest

    def _reject_row(
        self, table: str, row: tuple, reason: str, rejected: collections.Counter[str]
    ) -> None:
        if not self._spill.reject(table, row, reason):
            self._lose(table, (row,), f"rejected ({reason}) and the rejected file failed")
        rejected[table] += 1
        self._log(
            "rejected",
            logging.ERROR,
            "writer.row_rejected table=%s error=%s rejected_dir=%s",
            table,
            reason,
            self._spill.base_dir / "rejected",
        )

    def _on_commit(
        self,
        batch: Mapping[str, Sequence[tuple]],
        rejected: Mapping[str, int],
        *,
        live: bool,
    ) -> None:
        now = time.time()
        if not self._db_up:
            logger.warning(
                "writer.db_recovered after_failures=%d spill_pending_rows=%d",
                self._failures_in_a_row,
                self._spill.pending_rows,
            )
        self._db_up = True
        self._failures_in_a_row = 0
        self._retry_at = 0.0
        self._batches += 1
        self._last_commit_unix_s = now
        for table, rows in batch.items():
            self._rows_written[table] += len(rows) - rejected.get(table, 0)
            spec = TABLES[table]
            if not live or not rows or spec.time_index is None:
                continue
            first = rows[0]  # the queue is FIFO: the batch's oldest row
            lag = now - first[spec.time_index].timestamp()
            self._last_commit_lag_s = lag
            self._max_commit_lag_s = max(lag, self._max_commit_lag_s or 0.0)
            if spec.exchange_ts_index is not None and first[spec.exchange_ts_index] is not None:
                lag = now - first[spec.exchange_ts_index].timestamp()
                self._last_exchange_lag_s = lag
                self._max_exchange_lag_s = max(lag, self._max_exchange_lag_s or 0.0)

    def _note_error(self, exc: BaseException) -> str:
        reason = _safe_error(exc)
        self._last_error = reason
        self._last_error_unix_s = time.time()
        return reason

    def _on_outage(self, exc: BaseException, attempt_started: float) -> None:
        reason = self._note_error(exc)
        self._failed_attempt_started_at = attempt_started
        self._retries += 1
        self._failures_in_a_row += 1
        self._db_up = False
        backoff = min(
            self.config.retry_max_s,
            self.config.retry_initial_s * 2 ** min(self._failures_in_a_row - 1, 30),
        ) * random.uniform(0.8, 1.2)
        self._retry_at = time.monotonic() + backoff
        self._close_db()
        self._log(
            "outage",
            logging.WARNING,
            "writer.db_failed error=%s retry_in_s=%.2f failures_in_a_row=%d queue_depth=%d "
            "spill_pending_rows=%d",
            reason,
            backoff,
            self._failures_in_a_row,
            len(self._queue),
            self._spill.pending_rows,
        )

    def _close_db(self) -> None:
        from django.db import connections

        with contextlib.suppress(Exception):
            connections[self.config.using].close()


LOSS_RECORDS_MAX: Final = 10_000  # loss records kept (one per connection and market)
LOSS_REPORT_S: Final = 300.0  # problems() reports a loss for this long after the last one
_MARKET_MAX_CHARS: Final = 128  # RecordingEvent.market_ticker
_DETAIL_MAX_CHARS: Final = 500  # RecordingEvent.detail


def _loss_key_columns(spec: TableSpec) -> tuple[int | None, int | None]:
    """Where a row of ``spec`` names its connection and market (None: it does not)."""
    columns = spec.columns
    return (
        columns.index("connection_id") if "connection_id" in columns else None,
        columns.index("market_ticker") if "market_ticker" in columns else None,
    )


def _row_shape_error(table: str, row: object) -> str:
    spec = TABLES.get(table)
    if spec is None:
        return f"unknown table {table!r}: use one of {', '.join(TABLES)}"
    return (
        f"a {table} row has {len(spec.columns)} columns {spec.columns}, "
        f"got {len(row) if isinstance(row, Sized) else type(row).__name__}"
    )
