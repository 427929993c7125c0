"""The batched writer's loss ledger: rows that could be kept nowhere, and their gap markers.

Rows are lost only when the queue, the database and the spill are all full at once. The
ledger counts them (``rows_lost``) and remembers, per (connection, market), which receive
times they cover; before the next row is accepted the writer asks it for one ``gap`` marker
per market at its first lost row, so history untrusts each such market from there to its next
snapshot. Rows kept in the rejected file are remembered (for a marker) but not counted lost.
Rows of tables without a connection (the paper trader's decisions) are counted and logged:
there is no recording whose history a marker could warn.

Pure Python: no Django.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final

from apps.marketdata.kalshi.ratelog import RateLimitedLog
from apps.marketdata.writer.tables import EVENT, EventRow, TableSpec

logger = logging.getLogger(__name__)

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


class LossLedger:
    """Lost rows of one writer: counters, and the open records that become gap markers.

    ``open`` maps (connection, market) to [first received, last received, rows, reason]; it
    is the same dict object for the ledger's life (the writer's ``enqueue`` tests it for
    emptiness without a call). ``record`` is thread-safe; ``queue_markers`` appends to the
    writer's queue under the ledger's lock.
    """

    def __init__(self, tables: Mapping[str, TableSpec], log: RateLimitedLog) -> None:
        self.open: dict[tuple[Any, str], list[Any]] = {}
        self.rows_lost = 0
        self.gap_markers = 0
        self.last_loss_unix_s: float | None = None
        self.last_loss_reason = ""
        self._lock = threading.Lock()
        self._log = log
        self._keys = {key: _loss_key_columns(spec) for key, spec in tables.items()}
        self._time_index = {key: spec.time_index for key, spec in tables.items()}
        self._markers = EVENT in tables  # gap markers need the events table

    def take(self) -> dict[tuple[Any, str], list[Any]]:
        """The open records, leaving none open."""
        with self._lock:
            records = dict(self.open)
            self.open.clear()
        return records

    def record(
        self, table: str, rows: Sequence[tuple], reason: str, *, counted: bool = True
    ) -> None:
        """Count rows that cannot be kept and remember, per market, which times they cover
        (``counted`` False: only remember them, for a row kept in the rejected file)."""
        conn_index, market_index = self._keys[table]
        time_index = self._time_index[table]
        now = datetime.now(UTC)
        with self._lock:
            loss = self.open
            for row in rows:
                at = row[time_index] if time_index is not None else now
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
            self.rows_lost += len(rows)
            self.last_loss_unix_s = time.time()
            self.last_loss_reason = reason
        self._log.error(
            "lost",
            "writer.rows_lost table=%s rows=%d rows_lost=%d open_markets=%d reason=%s",
            table,
            len(rows),
            self.rows_lost,
            len(self.open),
            reason,
        )

    def queue_markers(self, queue: collections.deque[Any]) -> None:
        """Rows are accepted again: append to ``queue`` one ``gap`` marker per market that lost
        rows, at its first lost row, so history untrusts the market from there to its next
        snapshot.

        Called before the first row accepted after a loss, so every snapshot stored later was
        received after all the rows lost so far: none can make history trust a book across
        them. The markers go through the queue like any row (and are counted lost again,
        keeping their time, if they cannot be kept either).
        """
        with self._lock:
            if not self.open:
                return
            records = dict(self.open)
            self.open.clear()
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
                if conn is not None and self._markers
            ]
            for marker in markers:
                queue.append((EVENT, marker))
            self.gap_markers += len(markers)
        unmarked = sum(r[2] for (conn, _), r in records.items() if conn is None)
        logger.warning(
            "writer.loss_marked gap_markers=%d rows_lost=%d unmarked_rows=%d",
            len(markers),
            self.rows_lost,
            unmarked,
        )

    def log_unmarked(self) -> None:
        """At shutdown: log the open records (no marker can be written for them now)."""
        records = self.take()
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

    def problems(self) -> list[str]:
        """Rows being lost (and for ``LOSS_REPORT_S`` after the last one)."""
        last = self.last_loss_unix_s
        if last is not None and (self.open or time.time() - last < LOSS_REPORT_S):
            covered = "; gap markers cover them" if self._markers else ""
            return [
                f"writer lost {self.rows_lost} rows: the database, the spill and the queue "
                f"were all full ({self.last_loss_reason}){covered}"
            ]
        return []
