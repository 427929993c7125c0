"""The paper trader's decisions (``rl_trading_actions``) as one more table of the batch writer.

The decision loop calls :meth:`ActionWriter.enqueue` (deque appends, never a database call).
Everything else is the recorder's writer, :class:`~apps.marketdata.writer.RecordWriter`, run
over one table spec, :data:`ACTION_TABLE`: its batches, retries with backoff, spill to disk
during an outage (replayed when the database is back, or by the next writer on the same
spill directory), bad rows bisected out into the rejected file, counted loss only when the
database, the spill and the queue are all full, and a close that writes or spills everything.
Rows are unique on (episode, step, market), the spec's conflict target, so a retried or
replayed batch stores nothing twice. This module only declares the row and its spec, and
adapts the writer to one episode's rows.

Spill files live under ``<spill_dir>/paper`` (the writer's layout: ``w-<pid>-<ns>/`` segments,
``rejected/*.jsonl``). Spill files of the writer this replaced (``actions-*.jsonl``) are
enqueued again on start and deleted once committed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final, NamedTuple

from apps.marketdata.writer import RecordWriter, TableSpec, WriterConfig
from apps.trading.actor import ActionRow

log = logging.getLogger(__name__)

_SPILL_SUBDIR: Final = "paper"
ACTION: Final = "action"  # the table's key in the writer (it names spill segments)


class TradingActionRow(NamedTuple):
    """One ``rl_trading_actions`` row: an :class:`~apps.trading.actor.ActionRow` with its
    episode, in the model's field order."""

    episode_id: int
    step: int
    time: datetime
    market_ticker: str
    action_id: int
    action_type: str
    action_size: int
    mask_bits: int
    price_e4: int | None
    quantity_filled_e2: int
    fee_e4: int
    position_after_e2: int
    cash_after_e4: int
    reward: float
    model_version: int
    refusal: str


ACTION_TABLE: Final = TableSpec(
    ACTION,
    "rl_trading_actions",
    "trading.TradingAction",
    TradingActionRow,
    "int8 int4 timestamptz varchar int2 varchar int4 int8 int4 int8 int8 int8 int8 float8 int4 "
    "varchar".split(),
    time_index=2,  # the decision's time: the writer's lag is measured from it
    exchange_ts_index=None,
    conflict_columns=("episode_id", "step", "market_ticker"),  # rl_action_unique_decision
)
TABLES: Final = {ACTION: ACTION_TABLE}


@dataclass(frozen=True)
class ActionWriterStats:
    """Counters (rows unless named otherwise).

    ``written`` rows were committed by this writer (replayed ones included: ``replayed``);
    ``queued`` wait in memory; ``spilled`` went to the spill file (during an outage, or at a
    close that could not reach the database) and ``spill_pending`` of them wait there;
    ``rejected`` rows the database refused are in the rejected file; ``rows_lost`` could be
    kept nowhere (the database, the spill and the queue were all full).
    """

    enqueued: int
    written: int
    queued: int
    batches: int
    retries: int
    spilled: int
    spill_pending: int
    replayed: int
    rejected: int
    rows_lost: int
    db_up: bool
    last_error: str
    last_commit_lag_s: float | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class ActionWriter:
    """Writes one episode's :class:`~apps.trading.actor.ActionRow` objects; see the module
    docstring.

    Args:
        episode_id: the ``rl_trading_episodes`` row the decisions belong to.
        spill_dir: root of the spill files (``<spill_dir>/paper``).
        flush_interval_s: seconds between batches when fewer than ``batch_rows`` are queued.
        batch_rows: rows per transaction.
        queue_max_rows: rows kept in memory; past it ``enqueue`` spills them.
        retry_initial_s, retry_max_s: backoff between failed attempts, in seconds.
        close_timeout_s: how long :meth:`close` tries the database before spilling.
        using: the Django database alias.
        db_timeout_s: bound on a PostgreSQL connect or unacknowledged send, in seconds (a
            dead network is noticed, not waited on).
        db_overrides: keys replacing the writer thread's copy of ``DATABASES[using]`` (e.g.
            ``HOST``/``PORT``); other threads' connections are unaffected.
        **overrides: other :class:`~apps.marketdata.writer.WriterConfig` fields (the write
            method and the spill's caps default to the ``RL_WRITER_*`` settings).
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
        db_overrides: dict[str, Any] | None = None,
        **overrides: Any,
    ) -> None:
        self.episode_id = episode_id
        self.spill_dir = Path(spill_dir) / _SPILL_SUBDIR
        config = WriterConfig.from_settings(
            spill_dir=self.spill_dir,
            flush_interval_s=flush_interval_s,
            batch_rows=batch_rows,
            queue_max_rows=queue_max_rows,
            retry_initial_s=retry_initial_s,
            retry_max_s=retry_max_s,
            close_timeout_s=close_timeout_s,
            using=using,
            db_timeout_s=db_timeout_s,
            db_overrides=dict(db_overrides or {}),
            **overrides,
        )
        self._writer = RecordWriter(config, tables=TABLES, name="rl-paper-writer")
        self._enqueued = 0

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> ActionWriter:
        """Start the writer (it adopts spill files left by earlier runs and replays them)."""
        self._writer.start()
        self._adopt_legacy_spill()
        return self

    def enqueue(self, rows: Sequence[ActionRow]) -> None:
        """Accept one decision's rows: O(len(rows)), never touches the database. Raises
        :class:`~apps.marketdata.writer.WriterClosed` (a ``RuntimeError``) once closed."""
        episode_id = self.episode_id
        put = self._writer.enqueue
        for row in rows:
            put(ACTION, (episode_id, *row))
        self._enqueued += len(rows)

    def flush(self, timeout_s: float | None = None) -> bool:
        """Wait until every row enqueued so far is committed; True if it is. False when
        ``timeout_s`` passes first or the database fails meanwhile (the rows are then in the
        spill and are written when it is back)."""
        return self._writer.flush(timeout_s)

    def close(self) -> bool:
        """Write everything queued, stop the thread; True if every row reached the database
        (else the rest is in the spill or the rejected file, see :meth:`stats`)."""
        committed = self._writer.close()
        return committed and self._writer.stats().rejected_rows == 0

    def stats(self) -> ActionWriterStats:
        s = self._writer.stats()
        return ActionWriterStats(
            enqueued=self._enqueued,
            written=s.rows_written_by_table.get(ACTION, 0),
            queued=s.queue_depth + s.held_rows,
            batches=s.batches,
            retries=s.retries,
            spilled=s.spilled_rows,
            spill_pending=s.spill_pending_rows,
            replayed=s.replayed_rows,
            rejected=s.rejected_rows,
            rows_lost=s.rows_lost,
            db_up=s.db_up,
            last_error=s.last_error,
            last_commit_lag_s=s.last_commit_lag_s,
        )

    def problems(self) -> list[str]:
        """What makes the writer unhealthy now (rows lost, or a spill that refuses rows)."""
        return self._writer.problems()

    # -- spill files of the writer this replaced --------------------------------------------

    def _adopt_legacy_spill(self) -> None:
        """Enqueue the rows of ``actions-*.jsonl`` files again; delete the files once they
        are committed (a repeat is ignored as a conflict, so a failure here loses nothing)."""
        files = sorted(self.spill_dir.glob("actions-*.jsonl"))
        if not files:
            return
        readable = []
        for path in files:
            whole = True
            for line in path.read_text(encoding="utf-8").splitlines():
                if not line.strip():
                    continue
                try:
                    data = json.loads(line)
                    data["time"] = datetime.fromisoformat(data["time"])
                    row = TradingActionRow(**data)
                except (ValueError, TypeError, KeyError) as exc:
                    # Kept (and logged at every start) rather than deleted with the file.
                    log.error("paper action writer: unreadable line in %s: %s", path, exc)
                    whole = False
                    continue
                self._writer.enqueue(ACTION, row)
            if whole:
                readable.append(path)
        if self._writer.flush(timeout_s=self._writer.config.close_timeout_s):
            for path in readable:
                path.unlink(missing_ok=True)
            log.info("paper action writer: replayed %d old spill file(s)", len(readable))
