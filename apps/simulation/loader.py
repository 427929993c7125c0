"""Loading recorded history from the database into :class:`RecordedHistory` (the DB shell).

On PostgreSQL the deltas stream through a binary ``COPY ... TO STDOUT`` whose fixed-width rows
are decoded in chunks by numpy, so no Python object is made per row until the replay loop
itself; elsewhere (SQLite) ``values_list`` iteration in chunks. Snapshots and markers are few
and read with the ORM. Results are cached as ``.npz`` under ``var/history`` keyed by the query
and the code version.

A connection without a ``disconnect`` marker ended without a close record (its recorder was
killed, or has not been swept yet, see :mod:`apps.marketdata.orphans`): the end of its stored
data is treated as a disconnect, so its books are untrusted from its last stored row until
the next snapshot of a later connection, exactly as the marker a recorder's start-up sweep
writes would make them. (A recorder still running has no close record either: the tail of a
window after its last committed row is untrusted until more rows arrive, which is honest,
since nothing about it is stored yet.)
"""

from __future__ import annotations

import logging
import sys
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from django.conf import settings
from django.db import connection
from psycopg import sql
from tqdm import tqdm

from apps.marketdata.models import OrderbookDelta, OrderbookSnapshot, RecordingEvent
from apps.marketdata.orphans import last_stored_at
from apps.simulation.history import (
    DEFAULT_LEVELS,
    HistoryBuilder,
    RecordedHistory,
    cache_key,
)

log = logging.getLogger(__name__)
MAX_MARKETS = 10
UNTRUSTING_EVENTS = ("gap", "resync", "crossed", "sub_error", "disconnect")

# One COPY BINARY row: field count, then (length, value) per column, big-endian.
_COPY_ROW = np.dtype(
    [
        ("nfields", ">i2"),
        ("l_ts", ">i4"),
        ("ts", ">i8"),
        ("l_market", ">i4"),
        ("market", ">i4"),
        ("l_conn", ">i4"),
        ("conn", "V16"),
        ("l_sid", ">i4"),
        ("sid", ">i8"),
        ("l_seq", ">i4"),
        ("seq", ">i8"),
        ("l_side", ">i4"),
        ("is_yes", "u1"),
        ("l_price", ">i4"),
        ("price", ">i4"),
        ("l_delta", ">i4"),
        ("delta", ">i8"),
    ]
)
_COPY_HEADER_LEN = 19  # signature (11) + flags (4) + header extension length (4)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _ns(dt: datetime) -> int:
    # Exact integer microseconds (a float timestamp can round down by one), so a marker put
    # at a row's receive time sorts exactly where the COPY stream puts that row.
    return (dt - _EPOCH) // timedelta(microseconds=1) * 1000


def load(
    markets: list[str],
    start: datetime,
    end: datetime,
    *,
    step_s: float = 1.0,
    levels: int = DEFAULT_LEVELS,
    use_cache: bool = True,
    progress: bool | None = None,
    chunk_rows: int = 50_000,
) -> RecordedHistory:
    """Rebuild the books of ``markets`` (at most 10) and sample them every ``step_s`` seconds
    over [start, end). Returns arrays and a data-quality report (gaps, crossed, stale)."""
    if not 1 <= len(markets) <= MAX_MARKETS:
        raise ValueError(f"history loads 1 to {MAX_MARKETS} markets, got {len(markets)}")
    if end <= start:
        raise ValueError("end must be after start")
    step_ns = int(step_s * 1e9)
    if step_ns <= 0:
        raise ValueError("step_s must be positive")
    key = cache_key(
        markets=markets,
        start=start.isoformat(),
        end=end.isoformat(),
        step_ns=step_ns,
        levels=levels,
        db=settings.DATABASES["default"]["NAME"],
        last_delta=_last_delta_id(markets, end),
    )
    cache_path = Path(settings.VAR_DIR) / "history" / f"{key}.npz"
    if use_cache and cache_path.exists():
        log.info("history cache hit %s", cache_path)
        return RecordedHistory.load_npz(cache_path)
    builder = HistoryBuilder(
        markets, start_ns=_ns(start), end_ns=_ns(end), step_ns=step_ns, levels=levels
    )
    # The last snapshot before the window starts each book, so the window begins trusted.
    first_ts = _prime_start(markets, start)
    snapshots = _snapshot_events(markets, first_ts, end)
    markers = _marker_events(markets, first_ts, end)
    side_events = sorted(snapshots + markers, key=lambda e: e[0])
    total = OrderbookDelta.objects.filter(
        market_ticker__in=markets, received_at__gte=first_ts, received_at__lt=end
    ).count()
    show = progress if progress is not None else sys.stderr.isatty()
    bar = tqdm(total=total, unit="rows", desc="loading history", disable=not show)
    pending = iter(side_events)
    nxt = next(pending, None)
    for raw in _delta_chunks(markets, first_ts, end, chunk_rows):
        rows = len(raw[0])
        chunk = _as_arrays(builder, raw)
        ts = chunk[0]
        # Side events (snapshots, markers) go in before any delta received after them.
        while nxt is not None and (not len(ts) or nxt[0] <= ts[-1]):
            cut = int(np.searchsorted(ts, nxt[0], side="right")) if len(ts) else 0
            if cut:
                builder.deltas_arrays(*(col[:cut] for col in chunk))
                chunk = tuple(col[cut:] for col in chunk)
                ts = chunk[0]
            nxt[1](builder)
            nxt = next(pending, None)
        if len(ts):
            builder.deltas_arrays(*chunk)
        bar.update(rows)
    while nxt is not None:
        nxt[1](builder)
        nxt = next(pending, None)
    bar.close()
    history = builder.finish()
    if use_cache:
        history.save(cache_path)
    return history


def _last_delta_id(markets: list[str], end: datetime) -> int | None:
    """Part of the cache key: new rows in the window make a new key."""
    return (
        OrderbookDelta.objects.filter(market_ticker__in=markets, received_at__lt=end)
        .order_by("-id")
        .values_list("id", flat=True)
        .first()
    )


def _prime_start(markets: list[str], start: datetime) -> datetime:
    earliest = start
    for market in markets:
        before = (
            OrderbookSnapshot.objects.filter(market_ticker=market, received_at__lte=start)
            .exclude(as_of_sid=None)
            .order_by("-received_at")
            .values_list("received_at", flat=True)
            .first()
        )
        if before is not None and before < earliest:
            earliest = before
    return earliest


Event = tuple[int, Callable[[HistoryBuilder], None]]


def _snapshot_events(markets: list[str], first: datetime, end: datetime) -> list[Event]:
    events: list[Event] = []
    rows = (
        OrderbookSnapshot.objects.filter(
            market_ticker__in=markets, received_at__gte=first, received_at__lt=end
        )
        .exclude(as_of_sid=None)
        .values_list(
            "received_at",
            "market_ticker",
            "connection_id",
            "as_of_sid",
            "as_of_seq",
            "yes_levels",
            "no_levels",
            "source",
        )
        .order_by("received_at", "id")
    )
    for received_at, market, conn, sid, seq, yes, no, source in rows.iterator(chunk_size=2000):
        events.append(
            (
                _ns(received_at),
                _snapshot_call(
                    _ns(received_at),
                    market,
                    _conn_key(conn),
                    sid,
                    seq,
                    yes,
                    no,
                    source == "periodic",
                ),
            )
        )
    return events


def _snapshot_call(
    ts: int,
    market: str,
    conn: bytes,
    sid: int,
    seq: int,
    yes: list[list[int]],
    no: list[list[int]],
    periodic: bool,
) -> Callable[[HistoryBuilder], None]:
    def apply(builder: HistoryBuilder) -> None:
        builder.snapshot(
            ts,
            market,
            connection=conn,
            as_of_sid=sid,
            as_of_seq=seq,
            yes=[(p, q) for p, q in yes],
            no=[(p, q) for p, q in no],
            periodic=periodic,
        )

    return apply


def _marker_events(markets: list[str], first: datetime, end: datetime) -> list[Event]:
    events: list[Event] = []
    connections = set(
        OrderbookDelta.objects.filter(
            market_ticker__in=markets, received_at__gte=first, received_at__lt=end
        )
        .order_by()  # no default ordering: DISTINCT must not drag received_at along
        .values_list("connection_id", flat=True)
        .distinct()
    )
    # A quiet market's book may come from a connection that sent no delta in the window: its
    # markers (and its end) matter just as much.
    connections |= set(
        OrderbookSnapshot.objects.filter(
            market_ticker__in=markets, received_at__gte=first, received_at__lt=end
        )
        .exclude(as_of_sid=None)
        .order_by()
        .values_list("connection_id", flat=True)
        .distinct()
    )
    rows = list(
        RecordingEvent.objects.filter(
            connection_id__in=connections, kind__in=UNTRUSTING_EVENTS, at__gte=first, at__lt=end
        ).values_list("at", "kind", "connection_id", "sid", "market_ticker")
    )
    # A connection that never got a close record ends, for history, at its last stored row.
    closed = set(
        RecordingEvent.objects.filter(connection_id__in=connections, kind="disconnect")
        .order_by()
        .values_list("connection_id", flat=True)
        .distinct()
    )
    for conn in connections - closed:
        last = last_stored_at(conn)
        if last is not None and first <= last < end:
            rows.append((last, "disconnect", conn, None, ""))
    for at, kind, conn, sid, market in rows:
        ts = _ns(at)
        events.append(
            (
                ts,
                lambda b, ts=ts, kind=kind, conn=conn, sid=sid, market=market: b.marker(
                    ts, kind=kind, connection=_conn_key(conn), sid=sid, market=market
                ),
            )
        )
    return events


def _conn_key(conn: uuid.UUID | str) -> bytes:
    return (conn if isinstance(conn, uuid.UUID) else uuid.UUID(str(conn))).bytes


# ts, market index, connection, sid, seq, is_yes, price_e4, delta_e2 (lists or arrays)
Chunk = tuple[Any, Any, Any, Any, Any, Any, Any, Any]


def _delta_chunks(
    markets: list[str], first: datetime, end: datetime, chunk_rows: int
) -> Iterator[Chunk]:
    if connection.vendor == "postgresql":
        yield from _copy_chunks(markets, first, end, chunk_rows)
    else:
        yield from _orm_chunks(markets, first, end, chunk_rows)


def delta_copy_query(markets: list[str], first: datetime, end: datetime) -> sql.Composed:
    """The binary COPY the loader streams (fixed-width rows matching ``_COPY_ROW``)."""
    return sql.SQL(
        "COPY (SELECT (extract(epoch FROM received_at) * 1000000)::int8 * 1000,"
        " (array_position({markets}::text[], market_ticker) - 1)::int4,"
        " connection_id, sid, seq, side = 'yes', price_e4, delta_e2"
        " FROM rl_orderbook_deltas"
        " WHERE market_ticker = ANY({markets}::text[])"
        " AND received_at >= {first} AND received_at < {end}"
        " ORDER BY received_at, id) TO STDOUT (FORMAT BINARY)"
    ).format(markets=sql.Literal(markets), first=sql.Literal(first), end=sql.Literal(end))


def _copy_chunks(
    markets: list[str], first: datetime, end: datetime, chunk_rows: int
) -> Iterator[Chunk]:
    query = delta_copy_query(markets, first, end)
    row_size = _COPY_ROW.itemsize
    buffer = bytearray()
    header_done = False
    connection.ensure_connection()
    with connection.connection.cursor() as cursor, cursor.copy(query) as copy:
        for block in copy:
            buffer += block
            if not header_done:
                if len(buffer) < _COPY_HEADER_LEN:
                    continue
                ext = int.from_bytes(buffer[15:19], "big")
                del buffer[: _COPY_HEADER_LEN + ext]
                header_done = True
            usable = (len(buffer) // row_size) * row_size
            if usable >= chunk_rows * row_size:
                yield _decode(buffer[:usable])
                del buffer[:usable]
    usable = (len(buffer) // row_size) * row_size
    if usable:
        yield _decode(buffer[:usable])


def _decode(data: bytes | bytearray) -> Chunk:
    rows = np.frombuffer(bytes(data), dtype=_COPY_ROW)
    if rows.size and int(rows["nfields"][0]) != 8:
        raise RuntimeError("unexpected COPY row layout")
    return (
        rows["ts"].astype(np.int64),
        rows["market"].astype(np.int64),
        rows["conn"],
        rows["sid"].astype(np.int64),
        rows["seq"].astype(np.int64),
        rows["is_yes"].astype(bool),
        rows["price"].astype(np.int64),
        rows["delta"].astype(np.int64),
    )


def _as_arrays(builder: HistoryBuilder, chunk: Chunk) -> tuple[np.ndarray, ...]:
    """A chunk as int64/bool arrays for the compiled replay, connections as the builder's
    ids: one lookup per distinct connection (a recording has few), not one per row."""
    conn = chunk[2]
    if isinstance(conn, np.ndarray):  # COPY: raw 16-byte UUIDs
        distinct, index = np.unique(conn, return_inverse=True)
        keys = [bytes(c) for c in distinct]
    else:  # ORM: bytes keys from _conn_key
        keys = list(dict.fromkeys(conn))
        position = {k: i for i, k in enumerate(keys)}
        index = np.fromiter((position[c] for c in conn), np.int64, len(conn))
    ids = np.array([builder.connection_id(k) for k in keys], dtype=np.int64)
    columns = [np.asarray(c) for c in chunk]
    columns[2] = ids[index] if len(keys) else np.zeros(0, dtype=np.int64)
    return tuple(columns)


def _orm_chunks(
    markets: list[str], first: datetime, end: datetime, chunk_rows: int
) -> Iterator[Chunk]:
    index = {m: i for i, m in enumerate(markets)}
    rows = (
        OrderbookDelta.objects.filter(
            market_ticker__in=markets, received_at__gte=first, received_at__lt=end
        )
        .order_by("received_at", "id")
        .values_list(
            "received_at",
            "market_ticker",
            "connection_id",
            "sid",
            "seq",
            "side",
            "price_e4",
            "delta_e2",
        )
    )
    cols: list[list] = [[] for _ in range(8)]
    for received_at, market, conn, sid, seq, side, price, delta in rows.iterator(
        chunk_size=chunk_rows
    ):
        cols[0].append(_ns(received_at))
        cols[1].append(index[market])
        cols[2].append(_conn_key(conn))
        cols[3].append(sid)
        cols[4].append(seq)
        cols[5].append(side == "yes")
        cols[6].append(price)
        cols[7].append(delta)
        if len(cols[0]) >= chunk_rows:
            yield tuple(cols)  # type: ignore[misc]
            cols = [[] for _ in range(8)]
    if cols[0]:
        yield tuple(cols)  # type: ignore[misc]
