"""Batched, non-blocking persistence of paper-trading decisions (``rl_trading_actions``).

The decision loop calls :meth:`ActionWriter.enqueue` (a deque append, never a database call);
one thread writes the queue in batches, each batch in one transaction with
``bulk_create(ignore_conflicts=True)``. Rows are unique on (episode, step, market), so a batch
retried after an error whose commit did in fact land stores nothing twice. The recorder's
:class:`~apps.marketdata.writer.RecordWriter` is built around the market-data tables, so this
is the same pattern at the size this table needs (a few rows per decision):

* **Outages**: a failed batch goes back to the front of the queue and is retried with
  exponential backoff; past ``queue_max_rows`` queued rows the thread moves the queue to a
  JSON-lines spill file, so memory stays bounded.
* **Spill files** (``<spill_dir>/paper/*.jsonl``, left by an outage or by a close that could
  not reach the database) are replayed by the next writer that starts, then deleted.
* **Bad rows** the database refuses are isolated row by row and appended, with the error, to
  ``<spill_dir>/paper/rejected.jsonl``; one never blocks the others.
* **Close** (SIGTERM, SIGINT, end of run) writes everything queued before returning; what it
  cannot write in ``close_timeout_s`` goes to a spill file, never lost.
"""

from __future__ import annotations

import collections
import json
import logging
import math
import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from apps.trading.actor import ActionRow

log = logging.getLogger(__name__)

_SPILL_SUBDIR = "paper"


@dataclass(frozen=True)
class ActionWriterStats:
    """Counters (rows unless named otherwise)."""

    enqueued: int
    written: int
    queued: int
    batches: int
    retries: int
    spilled: int
    replayed: int
    rejected: int
    last_error: str
    last_commit_lag_s: float | None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _encode(episode_id: int, row: ActionRow) -> str:
    data = row._asdict()
    data["time"] = row.time.isoformat()
    data["episode_id"] = episode_id
    return json.dumps(data, separators=(",", ":"))


def _decode(line: str) -> tuple[int, ActionRow]:
    data = json.loads(line)
    episode_id = int(data.pop("episode_id"))
    data["time"] = datetime.fromisoformat(data["time"])
    return episode_id, ActionRow(**data)


class ActionWriter:
    """Writes one episode's :class:`~apps.trading.actor.ActionRow` objects; see the module
    docstring.

    Args:
        episode_id: the ``rl_trading_episodes`` row the decisions belong to.
        spill_dir: root of the spill files (``<spill_dir>/paper``).
        flush_interval_s: seconds between batches when fewer than ``batch_rows`` are queued.
        batch_rows: rows per transaction.
        queue_max_rows: queued rows kept in memory during an outage before spilling.
        retry_initial_s, retry_max_s: backoff between failed attempts, in seconds.
        close_timeout_s: how long :meth:`close` tries the database before spilling.
        using: the Django database alias.
        db_timeout_s: bound on a PostgreSQL connect or unacknowledged send, in seconds (a
            dead network is noticed, not waited on).
        db_overrides: keys replacing the writer thread's copy of ``DATABASES[using]`` (e.g.
            ``HOST``/``PORT``); other threads' connections are unaffected.
    """

    def __init__(
        self,
        *,
        episode_id: int,
        spill_dir: Path,
        flush_interval_s: float = 0.5,
        batch_rows: int = 2_000,
        queue_max_rows: int = 500_000,
        retry_initial_s: float = 0.25,
        retry_max_s: float = 5.0,
        close_timeout_s: float = 30.0,
        using: str = "default",
        db_timeout_s: float = 5.0,
        db_overrides: Mapping[str, Any] | None = None,
    ) -> None:
        if flush_interval_s <= 0 or batch_rows < 1 or queue_max_rows < batch_rows:
            raise ValueError("need flush_interval_s > 0 and 1 <= batch_rows <= queue_max_rows")
        self.episode_id = episode_id
        self.spill_dir = Path(spill_dir) / _SPILL_SUBDIR
        self.flush_interval_s = flush_interval_s
        self.batch_rows = batch_rows
        self.queue_max_rows = queue_max_rows
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.close_timeout_s = close_timeout_s
        self.using = using
        self.db_timeout_s = db_timeout_s
        self.db_overrides = dict(db_overrides or {})
        self._queue: collections.deque[ActionRow] = collections.deque()
        self._inflight: list[ActionRow] = []
        self._wake = threading.Event()
        self._progress = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._closed = False
        self._spill_seq = 0
        self._enqueued = 0
        self._written = 0
        self._batches = 0
        self._retries = 0
        self._spilled = 0
        self._replayed = 0
        self._rejected = 0
        self._replay_rejected = 0
        self._last_error = ""
        self._last_commit_lag_s: float | None = None
        self._oldest_enqueued_at: float | None = None

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> ActionWriter:
        """Start the thread (it first replays spill files left by earlier runs)."""
        if self._thread is not None:
            raise RuntimeError("this writer was already started")
        self.spill_dir.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._run, name="rl-paper-writer", daemon=False)
        self._thread.start()
        return self

    def enqueue(self, rows: Sequence[ActionRow]) -> None:
        """Accept one decision's rows: O(len(rows)), never touches the database."""
        if self._closed:
            raise RuntimeError("the action writer is closed")
        if self._oldest_enqueued_at is None:
            self._oldest_enqueued_at = time.monotonic()
        self._queue.extend(rows)
        self._enqueued += len(rows)
        if len(self._queue) >= self.batch_rows:
            self._wake.set()

    def flush(self, timeout_s: float | None = None) -> bool:
        """Wait until every row enqueued so far is handled; True if all of them reached the
        database (none spilled) within ``timeout_s``."""
        target = self._enqueued
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        self._wake.set()
        with self._progress:
            while self._written + self._rejected + self._spilled < target:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                if self._thread is None or not self._thread.is_alive():
                    return False
                self._progress.wait(0.05 if remaining is None else min(remaining, 0.05))
        return self._spilled == 0

    def close(self) -> bool:
        """Write everything queued, stop the thread; True if every row reached the database
        (else the rest is in a spill file, see :meth:`stats`)."""
        if self._closed:
            return not self._queue
        self._closed = True
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(self.close_timeout_s + 5.0)
            if self._thread.is_alive():
                # The database hangs: keep what is not committed on disk (a batch that
                # commits late anyway is ignored as a conflict when the spill is replayed).
                self._spill(list(self._inflight) + list(self._queue))
                self._queue.clear()
        return self._spilled == 0 and self._rejected == 0

    def stats(self) -> ActionWriterStats:
        return ActionWriterStats(
            enqueued=self._enqueued,
            written=self._written,
            queued=len(self._queue),
            batches=self._batches,
            retries=self._retries,
            spilled=self._spilled,
            replayed=self._replayed,
            rejected=self._rejected + self._replay_rejected,
            last_error=self._last_error,
            last_commit_lag_s=self._last_commit_lag_s,
        )

    # -- the thread -------------------------------------------------------------------------

    def _run(self) -> None:
        from django.db import connections

        try:
            self._configure_connection()
            self._replay_spill_files()
            delay = self.retry_initial_s
            deadline: float | None = None
            while True:
                self._wake.wait(self.flush_interval_s)
                self._wake.clear()
                if self._stopping and deadline is None:
                    deadline = time.monotonic() + self.close_timeout_s
                ok = self._drain()
                if ok:
                    delay = self.retry_initial_s
                if self._stopping and (
                    not self._queue or (deadline and time.monotonic() > deadline)
                ):
                    break
                if not ok:
                    self._retries += 1
                    if len(self._queue) > self.queue_max_rows:
                        self._spill(list(self._queue))
                        self._queue.clear()
                    time.sleep(delay)
                    delay = min(delay * 2, self.retry_max_s)
            if self._queue:
                self._spill(list(self._queue))
                self._queue.clear()
        finally:
            connections.close_all()
            with self._progress:
                self._progress.notify_all()

    def _configure_connection(self) -> None:
        """Timeouts and overrides on this thread's connection object only (connections are
        per thread in Django)."""
        from django.db import connections

        wrapper = connections[self.using]
        settings_dict = dict(wrapper.settings_dict)
        settings_dict.update(self.db_overrides)
        if wrapper.vendor == "postgresql":
            options = dict(settings_dict.get("OPTIONS") or {})
            # libpq wants whole seconds, at least 2, for connect_timeout.
            options.setdefault("connect_timeout", max(2, math.ceil(self.db_timeout_s)))
            options.setdefault("tcp_user_timeout", int(self.db_timeout_s * 1000))
            settings_dict["OPTIONS"] = options
        wrapper.settings_dict = settings_dict

    def _drain(self) -> bool:
        """Write the queue in batches; False when the database failed (rows kept queued)."""
        from django.db import DataError, IntegrityError

        queue = self._queue
        while queue:
            batch = [queue.popleft() for _ in range(min(self.batch_rows, len(queue)))]
            self._inflight = batch
            try:
                try:
                    self._write(self.episode_id, batch)
                    written, rejected = len(batch), 0
                except (DataError, IntegrityError, ValueError, TypeError):
                    written, rejected = self._write_one_by_one(self.episode_id, batch)
            except _PartialWrite as partial:
                queue.extendleft(reversed(batch[partial.done :]))
                self._inflight = []
                self._account(written=partial.written, rejected=partial.rejected)
                self._note_error(partial.cause)
                return False
            except Exception as exc:  # the database (or anything else) failed, not the rows
                queue.extendleft(reversed(batch))
                self._inflight = []
                self._note_error(exc)
                return False
            self._inflight = []
            self._account(written=written, rejected=rejected, batch=True)
        self._oldest_enqueued_at = None
        return True

    def _write(self, episode_id: int, rows: Sequence[ActionRow]) -> None:
        from django.db import transaction

        from apps.trading.models import TradingAction

        objs = [TradingAction(episode_id=episode_id, **row._asdict()) for row in rows]
        with transaction.atomic(using=self.using):
            TradingAction.objects.using(self.using).bulk_create(objs, ignore_conflicts=True)

    def _write_one_by_one(self, episode_id: int, rows: Sequence[ActionRow]) -> tuple[int, int]:
        """Isolate the rows the database refuses; returns (written, rejected). Raises
        :class:`_PartialWrite` when the database itself fails part way."""
        from django.db import DatabaseError, DataError, IntegrityError

        written = rejected = 0
        for i, row in enumerate(rows):
            try:
                self._write(episode_id, [row])
            except (DataError, IntegrityError, ValueError, TypeError) as exc:
                self._reject(episode_id, row, exc)
                rejected += 1
                continue
            except DatabaseError as exc:
                raise _PartialWrite(exc, done=i, written=written, rejected=rejected) from exc
            written += 1
        return written, rejected

    def _account(self, *, written: int, rejected: int, batch: bool = False) -> None:
        with self._progress:
            self._written += written
            self._rejected += rejected
            self._batches += batch
            if self._oldest_enqueued_at is not None:
                self._last_commit_lag_s = time.monotonic() - self._oldest_enqueued_at
            self._progress.notify_all()

    def _note_error(self, exc: BaseException) -> None:
        from django.db import connections

        self._last_error = f"{type(exc).__name__}: {exc}"[:300]
        log.warning("paper action writer: database write failed (%s); retrying", self._last_error)
        # A broken connection is not reusable; the next attempt opens a fresh one.
        connections[self.using].close()

    # -- spill files ------------------------------------------------------------------------

    def _spill(self, rows: Sequence[ActionRow]) -> None:
        if not rows:
            return
        self._spill_seq += 1
        path = self.spill_dir / f"actions-{self.episode_id}-{os.getpid()}-{self._spill_seq}.jsonl"
        with path.open("a", encoding="utf-8") as handle:
            for row in rows:
                handle.write(_encode(self.episode_id, row) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        with self._progress:
            self._spilled += len(rows)
            self._progress.notify_all()
        log.error(
            "paper action writer: %d decisions kept in %s (replayed by the next writer)",
            len(rows),
            path,
        )

    def _reject(self, episode_id: int, row: ActionRow, exc: BaseException) -> None:
        path = self.spill_dir / "rejected.jsonl"
        with path.open("a", encoding="utf-8") as handle:
            record = json.loads(_encode(episode_id, row))
            record["error"] = f"{type(exc).__name__}: {exc}"[:300]
            handle.write(json.dumps(record) + "\n")
        log.error("paper action writer: the database refused a decision row: %s", exc)

    def _replay_spill_files(self) -> None:
        from django.db import DatabaseError, DataError, IntegrityError

        for path in sorted(self.spill_dir.glob("actions-*.jsonl")):
            by_episode: dict[int, list[ActionRow]] = collections.defaultdict(list)
            with path.open(encoding="utf-8") as handle:
                for line in handle:
                    if line.strip():
                        episode_id, row = _decode(line)
                        by_episode[episode_id].append(row)
            try:
                for episode_id, rows in by_episode.items():
                    for i in range(0, len(rows), self.batch_rows):
                        chunk = rows[i : i + self.batch_rows]
                        try:
                            self._write(episode_id, chunk)
                            self._replayed += len(chunk)
                        except (DataError, IntegrityError):
                            written, rejected = self._write_one_by_one(episode_id, chunk)
                            self._replayed += written
                            self._replay_rejected += rejected
            except (DatabaseError, _PartialWrite) as exc:
                self._note_error(exc.cause if isinstance(exc, _PartialWrite) else exc)
                return  # the files stay; the next writer tries again (conflicts are ignored)
            path.unlink()
            log.info("paper action writer: replayed %s", path)


class _PartialWrite(Exception):
    """The database failed while rows were written one by one; ``done`` were handled."""

    def __init__(self, cause: BaseException, *, done: int, written: int, rejected: int) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.done = done
        self.written = written
        self.rejected = rejected
