"""Batched, bounded, non-blocking persistence of recorded market data.

The socket's task calls :meth:`RecordWriter.enqueue` (O(1): a bound check and a deque append,
never a database call); one worker thread drains the queue in batches and writes each batch
in one transaction. Nothing accepted is ever dropped:

* **Idempotent writes.** Deltas, snapshots and trades are unique on (connection, sid, seq),
  so every write ignores conflicts and a retried or replayed batch never duplicates a row.
  Events have no such key: they are inserted only where an identical event is not stored.
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
* **Bad rows** that the database refuses (a check constraint, a value too long) are isolated
  by bisecting the batch and appended, with the error, to ``<spill dir>/rejected/*.jsonl``:
  one bad row never blocks the others, and is never silently lost.

Row types are plain tuples in the fixed column order of :data:`TABLES` (the ``*Row`` named
tuples below document and construct them). Timestamps are timezone-aware ``datetime`` values
(UTC), prices ``*_e4`` and sizes ``*_e2`` integers, ``connection_id`` a ``uuid.UUID``.

Spill durability: the worker hands each spilled batch to the OS before it takes the next
one, and rows that ``enqueue`` spills itself reach the OS within 50 ms, so a killed process
loses none of the spill; files are ``fsync``-ed at most every
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
from collections.abc import Mapping, Sequence, Sized
from dataclasses import dataclass, field
from datetime import UTC, datetime
from operator import itemgetter
from pathlib import Path
from typing import Any, Final, NamedTuple

import msgspec

__all__ = [
    "DELTA",
    "EVENT",
    "METHODS",
    "SNAPSHOT",
    "TABLES",
    "TRADE",
    "BatchWriteMethod",
    "BulkCreateMethod",
    "CopyMethod",
    "DeltaRow",
    "EventRow",
    "IntegerColumn",
    "IntegerOutOfRange",
    "RecordWriter",
    "SnapshotRow",
    "SpillStore",
    "TableSpec",
    "TradeRow",
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


DELTA: Final = "delta"
SNAPSHOT: Final = "snapshot"
TRADE: Final = "trade"
EVENT: Final = "event"


@dataclass(frozen=True)
class TableSpec:
    """What the writer needs to know about one table (its key is what ``enqueue`` takes)."""

    key: str
    db_table: str
    model_label: str
    row_type: type
    pg_types: list[str]  # PostgreSQL type of each column, for binary COPY
    time_index: int  # the column holding the local receive time (lag is measured from it)
    exchange_ts_index: int | None  # the column holding the exchange's timestamp, if any
    unique_message: bool  # unique (connection, sid, seq): writes can ignore conflicts

    @property
    def columns(self) -> tuple[str, ...]:
        return self.row_type._fields  # type: ignore[attr-defined]


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
    """

    method: str = "copy"
    batch_rows: int = 5000
    flush_interval_s: float = 0.25
    queue_max_rows: int = 200_000
    spill_dir: Path = Path("var/spill")
    spill_fsync_interval_s: float = 1.0
    spill_segment_max_bytes: int = 64 * 1024 * 1024
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
        for name in ("batch_rows", "queue_max_rows", "spill_segment_max_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"writer {name} must be >= 1, got {getattr(self, name)}")
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
    seconds.
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
    """

    def __init__(
        self,
        base_dir: Path,
        *,
        segment_max_bytes: int = 64 * 1024 * 1024,
        fsync_interval_s: float = 1.0,
    ) -> None:
        self.base_dir = Path(base_dir)
        self.segment_max_bytes = segment_max_bytes
        self.fsync_interval_s = fsync_interval_s
        self._lock = threading.Lock()
        self._dir: Path | None = None
        self._lock_fd: int | None = None
        self._next_segment = 1
        self._active: dict[str, tuple[Path, Any, int]] = {}  # table -> (path, file, bytes)
        self._sealed: list[Path] = []
        self._reader: tuple[Path, Any] | None = None
        self._chunk: SpillChunk | None = None
        self._dirty_since: float | None = None
        self._last_os_write = 0.0
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
        """Append rows of one table; returns the bytes written. Thread-safe."""
        if not rows:
            return 0
        data = _ENCODER.encode_lines(rows)
        with self._lock:
            self._open_locked()
            active = self._active.get(table)
            if active is None:
                path = self._new_segment_path(table)
                active = (path, open(path, "ab", buffering=256 * 1024), 0)
            path, fh, size = active
            fh.write(data)
            now = time.monotonic()
            if now - self._last_os_write >= 0.05:
                # Hand rows to the OS often even if the writer's thread is hung (the case in
                # which enqueue spills): a killed process then loses at most ~50 ms of rows.
                fh.flush()
                self._last_os_write = now
            self._active[table] = (path, fh, size + len(data))
            self.pending_rows += len(rows)
            self.pending_bytes += len(data)
            self.spilled_rows += len(rows)
            self.spilled_bytes += len(data)
            if self._dirty_since is None:
                self._dirty_since = time.monotonic()
        return len(data)

    # -- the writer's thread ----------------------------------------------------------------

    def sync(self, *, force: bool = False) -> None:
        """Hand buffered lines to the OS; fsync when due (or ``force``); seal big segments."""
        with self._lock:
            files = [fh for _, fh, _ in self._active.values()]
            for fh in files:
                fh.flush()
            dirty_since = self._dirty_since
            due = dirty_since is not None and (
                force or time.monotonic() - dirty_since >= self.fsync_interval_s
            )
            if due:
                self._dirty_since = None
            too_big = [t for t, (_, _, size) in self._active.items()
                       if size >= self.segment_max_bytes]  # fmt: skip
        if due:
            for fh in files:
                # Outside the lock, so enqueue never waits on the disk. A file sealed meanwhile
                # by another thread was fsync-ed by the sealing.
                with contextlib.suppress(ValueError, OSError):
                    os.fsync(fh.fileno())
        for table in too_big:
            self._seal(table)

    def _seal(self, table: str) -> None:
        with self._lock:
            active = self._active.pop(table, None)
            if active is None:
                return
            path, fh, _ = active
            fh.flush()
            self._sealed.append(path)
        os.fsync(fh.fileno())
        fh.close()

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

    def reject(self, table: str, row: tuple | None, reason: str, *, raw: bytes = b"") -> None:
        """Keep a row the database refused (or an unreadable line) with its reason."""
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
    fields = apps.get_model(spec.model_label)._meta.concrete_fields[1:]  # after "id"
    columns = []
    for index, model_field in enumerate(fields):
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
    if names != ("id", *spec.columns):
        raise RuntimeError(
            f"{spec.model_label} fields {names} no longer match the writer's {spec.key} columns "
            f"('id', *{spec.columns}); update {spec.row_type.__name__} in writer.py"
        )


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
            self._sql[key] = {
                "copy": sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(target, cols),
                "stage_copy": sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
                    stage, cols
                ),
                "stage_create": sql.SQL(
                    "CREATE TEMP TABLE IF NOT EXISTS {} ON COMMIT DELETE ROWS AS "
                    "SELECT {} FROM {} WITH NO DATA"
                ).format(stage, cols, target),
                "stage_insert": sql.SQL(
                    "INSERT INTO {} ({}) SELECT {} FROM {} ON CONFLICT DO NOTHING"
                ).format(target, cols, cols, stage),
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

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> RecordWriter:
        """Open the spill directory (adopting a crashed writer's rows) and start the thread."""
        if self._thread is not None:
            raise RuntimeError("this writer was already started; make a new one")
        self._spill.open()
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
        wait_s = None if deadline == math.inf else max(0.0, deadline - time.monotonic())
        if not marker.done.wait(wait_s):
            return False
        with self._progress:
            while self._spill.pending_rows > 0:
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
            enqueued_rows=self._popped_rows + depth + self._overflow_rows - self._markers_queued,
            overflow_rows=self._overflow_rows,
            rows_written=sum(written.values()),
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
        )

    def stats_dict(self) -> dict[str, Any]:
        """:meth:`stats` as a JSON-ready dict (for ``/rl/status`` and progress lines)."""
        return dataclasses.asdict(self.stats())

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
        self._spill.append(table, (row,))
        with self._overflow_lock:
            self._overflow_rows += 1
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
            if queue and (
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
            if self._stopping and not queue:
                if self._spill.pending_rows == 0 or time.monotonic() >= self._stop_deadline:
                    return
                if self._method is None:
                    return
            if worked:
                continue
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
        """Move everything still queued to the spill file (shutdown past its deadline)."""
        while self._queue:
            batch, markers = self._pop_batch()
            for table, rows in batch.items():
                self._spill.append(table, rows)
            for marker in markers:
                marker.done.set()
        self._spill.sync(force=True)

    def _db_usable(self) -> bool:
        return self._method is not None and time.monotonic() >= self._retry_at

    def _dispatch(self, batch: dict[str, list[tuple]]) -> None:
        """Write a live batch, or spill it while the database is failing."""
        if not self._db_usable():
            self._spill_batch(batch)
            return
        attempt_started = time.monotonic()
        try:
            rejected = self._write_isolating_bad_rows(batch, expect_conflicts=False)
        except _Outage as outage:
            self._on_outage(outage.cause, attempt_started)
            self._spill_batch(outage.unresolved)
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
        self._spill.reject(table, row, reason)
        rejected[table] += 1
        self._log(
            "rejected",
            logging.ERROR,
            "writer.row_rejected table=%s error=%s rejected_dir=%s",
            table,
            reason,
            self._spill.base_dir / "rejected",
        )

    def _spill_batch(self, batch: Mapping[str, Sequence[tuple]]) -> None:
        for table, rows in batch.items():
            self._spill.append(table, rows)

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
            if not live or not rows:
                continue
            spec = TABLES[table]
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


def _row_shape_error(table: str, row: object) -> str:
    spec = TABLES.get(table)
    if spec is None:
        return f"unknown table {table!r}: use one of {', '.join(TABLES)}"
    return (
        f"a {table} row has {len(spec.columns)} columns {spec.columns}, "
        f"got {len(row) if isinstance(row, Sized) else type(row).__name__}"
    )
