"""What the batched writer writes: row types, table keys and the table specs.

A row is a plain tuple in the fixed column order of its table (the model's field order, less an
auto ``id``); the ``*Row`` named tuples below document and construct the recorder's rows. Each
:class:`TableSpec` says everything the writer needs about one table: its model, the binary COPY
type of each column, which column times a row, and how a write treats a row already stored
(its unique key, the ``ON CONFLICT`` target, and what an upsert updates). :data:`TABLES` are
the recorder's tables; another user of the writer (the paper trader's decisions) declares its
own specs and passes them to :class:`~apps.marketdata.writer.writer.RecordWriter`.

Timestamps are timezone-aware ``datetime`` values (UTC), prices ``*_e4`` and sizes ``*_e2``
integers, ``connection_id`` a ``uuid.UUID``. Pure Python: no Django.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Sized
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, NamedTuple


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


class LifecycleRow(NamedTuple):
    """One ``market_lifecycle_v2`` channel frame -> ``rl_market_lifecycle`` (raw + parsed)."""

    connection_id: uuid.UUID
    sid: int
    seq: int | None
    local_seq: int
    kind: str
    event_type: str
    market_ticker: str
    event_ticker: str
    series_ticker: str
    result: str
    settlement_value_e4: int | None
    open_ts: datetime | None
    close_ts: datetime | None
    event_ts: datetime | None
    is_deactivated: bool | None
    can_close_early: bool | None
    price_level_structure: str
    fee_type: str
    fee_multiplier_e4: int | None
    exchange_ts: datetime | None
    received_at: datetime
    raw: str


class MarketInfoRow(NamedTuple):
    """A market's REST description -> ``rl_markets`` (upserted on ticker, newest wins)."""

    ticker: str
    event_ticker: str
    series_ticker: str
    status: str
    open_time: datetime | None
    close_time: datetime | None
    can_close_early: bool | None
    result: str
    settlement_value_e4: int | None
    price_level_structure: str
    price_ranges: list[dict[str, str]]
    raw: str
    fetched_at: datetime


class SeriesFeesRow(NamedTuple):
    """A series' fee settings -> ``rl_series_fees`` (upserted on series, newest wins)."""

    series_ticker: str
    fee_type: str
    fee_multiplier_e4: int
    raw: str
    fetched_at: datetime


class FeeChangeRow(NamedTuple):
    """A scheduled series fee change -> ``rl_series_fee_changes`` (upserted on its id)."""

    change_id: str
    series_ticker: str
    fee_type: str
    fee_multiplier_e4: int
    scheduled_ts: datetime
    fetched_at: datetime


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
LIFECYCLE: Final = "lifecycle"
EVENT: Final = "event"
# Recording metadata, written through the same queue and spill as the market data so that
# nothing on the recorder's event loop ever waits on the database for it. Keys name spill
# files: lowercase letters only.
CONNECTION: Final = "connection"  # a connection opened: inserted, never overwritten
CONNECTION_CLOSE: Final = "connclose"  # its close record: inserted or sets closed_at/reason
WORKER_STATUS: Final = "workerstatus"  # a heartbeat: the latest per worker name wins
MARKET_INFO: Final = "marketinfo"  # REST metadata of a market: the latest fetch wins
SERIES_FEES: Final = "seriesfees"  # a series' fee settings: the latest fetch wins
FEE_CHANGE: Final = "feechange"  # a scheduled fee change: the latest fetch wins


@dataclass(frozen=True)
class TableSpec:
    """What the writer needs to know about one table (its key is what ``enqueue`` takes).

    How a write treats rows that may already be stored (a retried batch, a replayed spill) is
    data of the spec, not code in a write method:

    * ``conflict_columns`` (the table's unique key, the ``ON CONFLICT`` target): a row whose key
      is stored is skipped (``DO NOTHING``); with ``update_columns`` the table is an **upsert**:
      rows with equal keys are one record, a write keeps the newest row of a batch per key and
      stores it with ``ON CONFLICT (conflict_columns) DO UPDATE SET update_columns``, only where
      it is not older by ``newer_column`` (spilled heartbeats replayed after live ones must not
      turn the clock back);
    * no ``conflict_columns`` (a table without a unique key): a row is inserted only where an
      identical row is not stored; ``lookup_columns`` narrow that search (indexed columns).
    """

    key: str  # lowercase letters only: it names spill files
    db_table: str
    model_label: str
    row_type: type
    pg_types: list[str]  # PostgreSQL type of each column, for binary COPY
    time_index: int | None  # the column holding the local receive time (lag is measured from
    # it); None for metadata, whose age says nothing about the writer's lag
    exchange_ts_index: int | None  # the column holding the exchange's timestamp, if any
    conflict_columns: tuple[str, ...] = ()
    update_columns: tuple[str, ...] = ()
    newer_column: str | None = None
    lookup_columns: tuple[str, ...] = ()
    auto_pk: bool = True  # the model's ``id`` is generated by the database, not in the row
    metadata: bool = False  # not market data: left out of ``rows_written``

    def __post_init__(self) -> None:
        columns = self.columns
        if len(self.pg_types) != len(columns):
            raise ValueError(
                f"{self.key}: {len(self.pg_types)} pg_types for {len(columns)} columns"
            )
        named = (*self.conflict_columns, *self.update_columns, *self.lookup_columns)
        unknown = [c for c in (*named, self.newer_column) if c is not None and c not in columns]
        if unknown:
            raise ValueError(f"{self.key}: no column(s) {unknown} in {columns}")
        if (self.update_columns or self.newer_column) and not self.conflict_columns:
            raise ValueError(f"{self.key}: an upsert needs its conflict_columns")
        if self.newer_column and not self.update_columns:
            raise ValueError(f"{self.key}: newer_column only applies to updates")
        if not self.conflict_columns and not self.lookup_columns:
            raise ValueError(f"{self.key}: a table without a unique key needs lookup_columns")

    @property
    def columns(self) -> tuple[str, ...]:
        return self.row_type._fields  # type: ignore[attr-defined]

    @property
    def upsert(self) -> bool:
        """Rows with equal keys are one record, updated in place (the newest wins)."""
        return bool(self.update_columns)


# rl_*_unique_message. The receive time is part of the key because the tables are partitioned
# by it on PostgreSQL (a partitioned table's unique keys must hold the partition key); a
# message's received_at is stamped once and travels unchanged through retries and the spill,
# so a message written twice still conflicts with itself.
_MESSAGE_KEY: Final = ("connection_id", "sid", "seq", "received_at")

_CONNECTION_OPEN: Final = TableSpec(
    CONNECTION,
    "rl_recording_connections",
    "marketdata.RecordingConnection",
    ConnectionRow,
    "uuid varchar varchar jsonb bool varchar int4 timestamptz timestamptz varchar".split(),
    time_index=None,
    exchange_ts_index=None,
    conflict_columns=("id",),
    auto_pk=False,
    metadata=True,
)

TABLES: Final[dict[str, TableSpec]] = {
    MARKET_INFO: TableSpec(
        MARKET_INFO,
        "rl_markets",
        "marketdata.MarketInfo",
        MarketInfoRow,
        (
            "varchar varchar varchar varchar timestamptz timestamptz bool varchar int4 "
            "varchar jsonb text timestamptz"
        ).split(),
        time_index=None,
        exchange_ts_index=None,
        conflict_columns=("ticker",),
        newer_column="fetched_at",
        update_columns=MarketInfoRow._fields[1:],
        metadata=True,
    ),
    SERIES_FEES: TableSpec(
        SERIES_FEES,
        "rl_series_fees",
        "marketdata.SeriesFees",
        SeriesFeesRow,
        "varchar varchar int4 text timestamptz".split(),
        time_index=None,
        exchange_ts_index=None,
        conflict_columns=("series_ticker",),
        newer_column="fetched_at",
        update_columns=SeriesFeesRow._fields[1:],
        metadata=True,
    ),
    FEE_CHANGE: TableSpec(
        FEE_CHANGE,
        "rl_series_fee_changes",
        "marketdata.SeriesFeeChange",
        FeeChangeRow,
        "varchar varchar varchar int4 timestamptz timestamptz".split(),
        time_index=None,
        exchange_ts_index=None,
        conflict_columns=("change_id",),
        newer_column="fetched_at",
        update_columns=FeeChangeRow._fields[1:],
        metadata=True,
    ),
    DELTA: TableSpec(
        DELTA,
        "rl_orderbook_deltas",
        "marketdata.OrderbookDelta",
        DeltaRow,
        "uuid varchar int8 int8 varchar int4 int8 timestamptz timestamptz".split(),
        time_index=8,
        exchange_ts_index=7,
        conflict_columns=_MESSAGE_KEY,
    ),
    SNAPSHOT: TableSpec(
        SNAPSHOT,
        "rl_orderbook_snapshots",
        "marketdata.OrderbookSnapshot",
        SnapshotRow,
        "uuid varchar int8 int8 jsonb jsonb timestamptz timestamptz varchar int8 int8".split(),
        time_index=7,
        exchange_ts_index=6,
        conflict_columns=_MESSAGE_KEY,
    ),
    TRADE: TableSpec(
        TRADE,
        "rl_public_trades",
        "marketdata.PublicTrade",
        TradeRow,
        "uuid varchar int8 int8 varchar int4 int4 int8 varchar timestamptz timestamptz".split(),
        time_index=10,
        exchange_ts_index=9,
        conflict_columns=_MESSAGE_KEY,
    ),
    LIFECYCLE: TableSpec(
        LIFECYCLE,
        "rl_market_lifecycle",
        "marketdata.MarketLifecycle",
        LifecycleRow,
        (
            "uuid int8 int8 int8 varchar varchar varchar varchar varchar varchar int4 "
            "timestamptz timestamptz timestamptz bool bool varchar varchar int4 "
            "timestamptz timestamptz text"
        ).split(),
        time_index=20,
        exchange_ts_index=19,
        conflict_columns=("connection_id", "local_seq"),
    ),
    EVENT: TableSpec(
        EVENT,
        "rl_recording_events",
        "marketdata.RecordingEvent",
        EventRow,
        "uuid varchar varchar int8 int8 int8 varchar timestamptz".split(),
        time_index=7,
        exchange_ts_index=None,
        lookup_columns=("connection_id", "at"),  # no unique key: stored only if not there
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


def row_shape_error(tables: dict[str, TableSpec], table: str, row: object) -> str:
    """Why ``row`` is not a row of ``tables[table]`` (an unknown table, or its width)."""
    spec = tables.get(table)
    if spec is None:
        return f"unknown table {table!r}: use one of {', '.join(tables)}"
    return (
        f"a {table} row has {len(spec.columns)} columns {spec.columns}, "
        f"got {len(row) if isinstance(row, Sized) else type(row).__name__}"
    )
