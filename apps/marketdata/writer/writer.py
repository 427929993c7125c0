"""The batched writer: one bounded queue, one worker thread, batches, retries and the spill.

A producer (the socket's task, the paper trader's decision loop) calls
:meth:`RecordWriter.enqueue` (O(1): a bound check and a deque append, never a database call);
one worker thread drains the queue in batches and writes each batch in one transaction with a
write method (:mod:`~apps.marketdata.writer.methods`). While the database fails the batches
go to the spill (:mod:`~apps.marketdata.writer.spill`) and are replayed when it is back; a
full spill makes the worker hold its batch, and only then does ``enqueue`` drop rows, counted
and marked (:mod:`~apps.marketdata.writer.loss`). The package docstring says the guarantees.

Pauses: the worker holds the GIL only in short steps, so the socket's loop is not held up by
it, but the rows it allocates trigger Python's cyclic garbage collector, and a full
collection over Django's start-up heap holds every thread for 30-60 ms. A recording process
should call ``gc.freeze()`` once after ``django.setup()``; the loop then stays within a few ms
(``tests/marketdata/test_writer_outage.py`` measures it).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import math
import random
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from apps.marketdata.kalshi.ratelog import RateLimitedLog
from apps.marketdata.writer.config import WriterConfig, WriterStats
from apps.marketdata.writer.errors import SpillRefused, WriterClosed, safe_error
from apps.marketdata.writer.loss import LossLedger
from apps.marketdata.writer.methods import (
    METHOD_CLASSES,
    BatchWriteMethod,
    Outage,
    write_isolating_bad_rows,
)
from apps.marketdata.writer.spill import SpillStore
from apps.marketdata.writer.tables import EVENT, TABLES, TableSpec, row_shape_error

logger = logging.getLogger(__name__)


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

    ``tables`` are the specs of the rows it takes (the recorder's :data:`TABLES` by default;
    the paper trader passes its decisions' spec); ``name`` names its thread.
    """

    def __init__(
        self,
        config: WriterConfig | None = None,
        *,
        tables: Mapping[str, TableSpec] = TABLES,
        name: str = "rl-writer",
        **overrides: Any,
    ) -> None:
        if config is None:
            config = WriterConfig.from_settings(**overrides)
        elif overrides:
            config = dataclasses.replace(
                config, **{k: v for k, v in overrides.items() if v is not None}
            )
        self.config = config
        self.tables: dict[str, TableSpec] = dict(tables)
        self.name = name
        self._queue: collections.deque[Any] = collections.deque()
        self._widths = {key: len(spec.columns) for key, spec in self.tables.items()}
        self._max_rows = config.queue_max_rows
        self._batch_rows = config.batch_rows
        self._spill = SpillStore(
            config.spill_dir,
            tables=self.tables,
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
        self._log = RateLimitedLog(logger)
        # Counters: written by the worker thread only (overflow_rows under its own lock).
        self._popped_rows = 0
        self._overflow_rows = 0
        self._rows_written = dict.fromkeys(self.tables, 0)
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
        # Rows lost because the queue, the database and the spill were all full (see
        # loss.py); ``_loss`` is the ledger's dict of open records, tested by enqueue.
        self._ledger = LossLedger(self.tables, self._log)
        self._loss = self._ledger.open
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
                f"({safe_error(exc)}): set RL_WRITER_SPILL_DIR to a writable directory"
            ) from None
        self._closed = False
        self._heartbeat = time.monotonic()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=False)
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
            raise ValueError(row_shape_error(self.tables, table, row))
        if self._closed:
            raise WriterClosed("the writer is not running (start() it; enqueue before close())")
        queue = self._queue
        if len(queue) >= self._max_rows:
            self._overflow(table, row)
            return
        if self._loss:
            self._ledger.queue_markers(queue)
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
            - self._ledger.gap_markers,
            overflow_rows=self._overflow_rows,
            rows_written=sum(n for t, n in written.items() if not self.tables[t].metadata),
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
            rows_lost=self._ledger.rows_lost,
            last_loss_unix_s=self._ledger.last_loss_unix_s,
            last_loss_reason=self._ledger.last_loss_reason,
            loss_open_markets=len(self._loss),
            gap_markers=self._ledger.gap_markers,
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
        lost = self._ledger.problems()
        if lost:
            return lost
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
            self._ledger.record(table, (row,), str(exc))
            return
        with self._overflow_lock:
            self._overflow_rows += 1
        if self._loss:
            self._ledger.queue_markers(self._queue)
        self._log.warning(
            "overflow",
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
        return METHOD_CLASSES[name](
            using=self.config.using, batch_rows=self._batch_rows, tables=self.tables
        )

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
                self._ledger.queue_markers(queue)  # the queue takes rows again: mark the loss
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
        self._ledger.log_unmarked()

    def _spill_or_lose(self, batch: Mapping[str, Sequence[tuple]]) -> None:
        for table, rows in batch.items():
            try:
                self._spill.append(table, rows)
            except SpillRefused as exc:
                self._ledger.record(table, rows, f"{exc} (at shutdown)")

    def _spill_or_hold(self, batch: Mapping[str, Sequence[tuple]]) -> None:
        """Spill a batch the database did not take; what the spill refuses is held."""
        for table, rows in batch.items():
            try:
                self._spill.append(table, rows)
            except SpillRefused as exc:
                self._held.setdefault(table, []).extend(rows)
                self._log.error(
                    "spill_refused",
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

    def _db_usable(self) -> bool:
        return self._method is not None and time.monotonic() >= self._retry_at

    def _dispatch(self, batch: dict[str, list[tuple]]) -> None:
        """Write a live batch, or spill it while the database is failing."""
        if not self._db_usable():
            self._spill_or_hold(batch)
            return
        attempt_started = time.monotonic()
        try:
            rejected = self._write(batch, expect_conflicts=False)
        except Outage as outage:
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
            rejected = self._write({chunk.table: chunk.rows}, expect_conflicts=True)
        except Outage as outage:
            self._on_outage(outage.cause, attempt_started)
            self._spill.keep_only(chunk, outage.unresolved.get(chunk.table, []))
            return False
        self._spill.commit_chunk(chunk)
        self._replayed_rows += len(chunk.rows) - rejected[chunk.table]
        self._on_commit({chunk.table: chunk.rows}, rejected, live=False)
        return True

    def _write(
        self, batch: dict[str, list[tuple]], *, expect_conflicts: bool
    ) -> collections.Counter[str]:
        """Write the batch; rows the database refuses go to the rejected file (counted per
        table in the result). Raises :class:`Outage` when the database fails."""
        assert self._method is not None
        return write_isolating_bad_rows(
            self._method, batch, expect_conflicts=expect_conflicts, reject=self._reject_row
        )

    def _reject_row(self, table: str, row: tuple, reason: str) -> None:
        if not self._spill.reject(table, row, reason):
            self._ledger.record(table, (row,), f"rejected ({reason}) and the rejected file failed")
        self._log.error(
            "rejected",
            "writer.row_rejected table=%s error=%s rejected_dir=%s",
            table,
            reason,
            self._spill.base_dir / "rejected",
        )

    def _on_rejected(self, table: str, row: tuple, reason: str) -> None:
        """A row kept in the rejected file is still missing from its table: history must not
        trust its market's book across it either (the recorder's own book had it, so the
        next snapshot is good). Not counted as lost: it is on disk, with its reason."""
        if table == EVENT and row[1] == "gap" and str(row[6]).startswith("writer "):
            return  # our own marker: marking it again could never end
        self._ledger.record(table, (row,), f"rejected: {reason}", counted=False)

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
            spec = self.tables[table]
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
        reason = safe_error(exc)
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
        self._log.warning(
            "outage",
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
