"""Loading recorded history from the database into :class:`RecordedHistory` (the DB shell).

On PostgreSQL the deltas stream through a binary ``COPY ... TO STDOUT`` whose fixed-width rows
are decoded in chunks by numpy, so no Python object is made per row until the replay loop
itself; a helper thread reads the stream one chunk ahead while the compiled replay (which
releases the GIL) applies the previous chunk; elsewhere (SQLite) ``values_list`` iteration
in chunks. Snapshots and markers are few and read with the ORM. Results are cached as
``.npz`` under ``var/history`` keyed by the query, the archives it read and the code version.

Archived partitions (:mod:`apps.marketdata.partitions`: old time partitions written to Parquet
and dropped) are read transparently: the window is cut at the archives' bounds; a piece no
archive covers streams from the tables as above, a covered piece reads the archive's rows
merged with any live rows of that range (late rows land in the default partition) in the
tables' (received_at, id) order. Snapshots, the connections a window involves and a
connection's last stored row come from the tables and the archives alike, so the arrays are
identical whether a range is live or archived.

A connection without a ``disconnect`` marker ended without a close record (its recorder was
killed, or has not been swept yet, see :mod:`apps.marketdata.orphans`): the end of its stored
data is treated as a disconnect, so its books are untrusted from its last stored row until
the next snapshot of a later connection, exactly as the marker a recorder's start-up sweep
writes would make them. (A recorder still running has no close record either: the tail of a
window after its last committed row is untrusted until more rows arrive, which is honest,
since nothing about it is stored yet.)
"""

from __future__ import annotations

import json
import logging
import queue
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from django.conf import settings
from django.db import connection
from django.db.models import Count
from psycopg import sql
from tqdm import tqdm

from apps.marketdata.models import OrderbookDelta, OrderbookSnapshot, RecordingEvent
from apps.marketdata.orphans import last_stored_at
from apps.marketdata.partitions import (
    Archive,
    archive_fingerprint,
    archived,
    cut_window,
    read_archive,
)
from apps.simulation.history import (
    DEFAULT_LEVELS,
    HistoryBuilder,
    RecordedHistory,
    cache_key,
)

log = logging.getLogger(__name__)
MAX_MARKETS = 10
DELTAS, SNAPSHOTS, TRADES = "rl_orderbook_deltas", "rl_orderbook_snapshots", "rl_public_trades"
_TABLES = (DELTAS, SNAPSHOTS, TRADES)
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
        archives=archive_fingerprint(_TABLES, datetime.min.replace(tzinfo=UTC), end),
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
    # One scan gives both the connections that sent deltas and the row count (progress bar).
    per_connection = dict(
        OrderbookDelta.objects.filter(
            market_ticker__in=markets, received_at__gte=first_ts, received_at__lt=end
        )
        .order_by()  # no default ordering: GROUP BY must not drag received_at along
        .values_list("connection_id")
        .annotate(rows=Count("id"))
    )
    markers = _marker_events(markets, first_ts, end, set(per_connection))
    side_events = sorted(snapshots + markers, key=lambda e: e[0])
    total = sum(per_connection.values())
    total += sum(a.rows for a in archived(DELTAS, first_ts, end))  # at most: whole partitions
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
        # Archives newest first: the first one holding such a snapshot has the latest.
        for item in reversed(archived(SNAPSHOTS, hi=start + timedelta(microseconds=1))):
            if before is not None and item.hi <= before:
                break
            rows = read_archive(item, ["received_at", "as_of_sid"], markets=[market], at_most=start)
            times = [t for t, sid in zip(*_columns(rows), strict=True) if sid is not None]
            if times:
                before = max(max(times), before) if before is not None else max(times)
                break
        if before is not None and before < earliest:
            earliest = before
    return earliest


def _columns(table: Any) -> list[list[Any]]:
    """A pyarrow table's columns as Python lists (timestamps as aware datetimes)."""
    return [table.column(i).to_pylist() for i in range(table.num_columns)]


Event = tuple[int, Callable[[HistoryBuilder], None]]


def _snapshot_events(markets: list[str], first: datetime, end: datetime) -> list[Event]:
    events: list[Event] = []
    live = (
        OrderbookSnapshot.objects.filter(
            market_ticker__in=markets, received_at__gte=first, received_at__lt=end
        )
        .exclude(as_of_sid=None)
        .values_list(
            "received_at",
            "id",
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
    rows = list(live.iterator(chunk_size=2000))
    for item in archived(SNAPSHOTS, first, end):
        names = ["received_at", "id", "market_ticker", "connection_id", "as_of_sid"]
        names += ["as_of_seq", "yes_levels", "no_levels", "source"]
        table = read_archive(item, names, markets=markets, lo=first, hi=end)
        for at, id_, market, conn, sid, seq, yes, no, source in zip(*_columns(table), strict=True):
            if sid is not None:
                rows.append(
                    (at, id_, market, uuid.UUID(bytes=conn), sid, seq, json.loads(yes),
                     json.loads(no), source)
                )  # fmt: skip
    if len(rows) > 1:
        rows.sort(key=lambda r: (r[0], r[1]))
    for received_at, _id, market, conn, sid, seq, yes, no, source in rows:
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


def _marker_events(
    markets: list[str],
    first: datetime,
    end: datetime,
    connections: set[uuid.UUID] | None = None,
) -> list[Event]:
    """Markers of the connections involved in the window and the ends of those without a
    close record. ``connections``: those that sent deltas in it, when the caller knows (the
    snapshots' and the archives' are added here)."""
    events: list[Event] = []
    if connections is None:
        connections = set(
            OrderbookDelta.objects.filter(
                market_ticker__in=markets, received_at__gte=first, received_at__lt=end
            )
            .order_by()  # no default ordering: DISTINCT must not drag received_at along
            .values_list("connection_id", flat=True)
            .distinct()
        )
    connections = set(connections)
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
    for table in (DELTAS, SNAPSHOTS):
        for item in archived(table, first, end):
            names = ["connection_id"] if table == DELTAS else ["connection_id", "as_of_sid"]
            rows_of = _columns(read_archive(item, names, markets=markets, lo=first, hi=end))
            if table == SNAPSHOTS:
                rows_of = [[c for c, sid in zip(*rows_of, strict=True) if sid is not None]]
            connections |= {uuid.UUID(bytes=c) for c in set(rows_of[0])}
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
        last = _last_stored_at(conn)
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


def _last_stored_at(conn: uuid.UUID) -> datetime | None:
    """:func:`last_stored_at` over the tables and the archives: an archive can only hold a
    later row than the tables' latest if its range ends after that."""
    latest = last_stored_at(conn)
    for table in _TABLES:
        for item in reversed(archived(table)):
            if latest is not None and item.hi <= latest:
                break
            times = _columns(read_archive(item, ["received_at"], connection_id=conn.bytes))[0]
            if times:
                latest = max(max(times), latest) if latest is not None else max(times)
                break
    return latest


def _conn_key(conn: uuid.UUID | str) -> bytes:
    return (conn if isinstance(conn, uuid.UUID) else uuid.UUID(str(conn))).bytes


# ts, market index, connection, sid, seq, is_yes, price_e4, delta_e2 (lists or arrays)
Chunk = tuple[Any, Any, Any, Any, Any, Any, Any, Any]


def _delta_chunks(
    markets: list[str], first: datetime, end: datetime, chunk_rows: int
) -> Iterator[Chunk]:
    for lo, hi, item in cut_window(first, end, archived(DELTAS, first, end)):
        if item is not None:
            yield from _archived_chunks(item, markets, lo, hi, chunk_rows)
        elif connection.vendor == "postgresql":
            yield from _copy_chunks(markets, lo, hi, chunk_rows)
        else:
            yield from _orm_chunks(markets, lo, hi, chunk_rows)


_DELTA_FIELDS = ["received_at", "id", "market_ticker", "connection_id", "sid", "seq", "side"]
_DELTA_FIELDS += ["price_e4", "delta_e2"]


def _archived_chunks(
    item: Archive, markets: list[str], lo: datetime, hi: datetime, chunk_rows: int
) -> Iterator[Chunk]:
    """The deltas of [lo, hi) from an archive plus any live rows of that range (late rows in
    the default partition), in (received_at, id) order, as COPY-like chunks."""
    import pyarrow as pa
    import pyarrow.compute as pc

    table = read_archive(item, _DELTA_FIELDS, markets=markets, lo=lo, hi=hi)
    ts = pc.cast(table.column("received_at"), "int64").to_numpy() * 1000
    ids = table.column("id").to_numpy()
    market = pc.index_in(table.column("market_ticker"), value_set=pa.array(markets, pa.string()))
    conn = np.array(table.column("connection_id").to_pylist(), dtype="V16")
    columns = [
        ts,
        market.to_numpy().astype(np.int64),
        conn,
        table.column("sid").to_numpy(),
        table.column("seq").to_numpy(),
        pc.equal(table.column("side"), "yes").to_numpy(zero_copy_only=False),
        table.column("price_e4").to_numpy().astype(np.int64),
        table.column("delta_e2").to_numpy(),
    ]
    late = list(
        OrderbookDelta.objects.filter(
            market_ticker__in=markets, received_at__gte=lo, received_at__lt=hi
        )
        .order_by("received_at", "id")
        .values_list(*_DELTA_FIELDS)
    )
    if late:
        index = {m: i for i, m in enumerate(markets)}
        extra = [
            np.array([_ns(r[0]) for r in late], dtype=np.int64),
            np.array([index[r[2]] for r in late], dtype=np.int64),
            np.array([_conn_key(r[3]) for r in late], dtype="V16"),
            *(np.array([r[k] for r in late], dtype=np.int64) for k in (4, 5)),
            np.array([r[6] == "yes" for r in late], dtype=bool),
            *(np.array([r[k] for r in late], dtype=np.int64) for k in (7, 8)),
        ]
        ids = np.concatenate([ids, np.array([r[1] for r in late], dtype=np.int64)])
        columns = [np.concatenate([a, b]) for a, b in zip(columns, extra, strict=True)]
        order = np.lexsort((ids, columns[0]))
        columns = [c[order] for c in columns]
    for at in range(0, len(columns[0]), chunk_rows):
        yield tuple(c[at : at + chunk_rows] for c in columns)  # type: ignore[misc]


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
    """The COPY stream in decoded chunks, read by a helper thread one chunk ahead: reading
    is Python work (one psycopg block per row) and the replay of the previous chunk is
    compiled code that releases the GIL, so the two overlap. The thread uses this thread's
    database session (the same transaction), which nothing else touches meanwhile."""
    query = delta_copy_query(markets, first, end)
    connection.ensure_connection()
    raw = connection.connection
    ready: queue.Queue[Any] = queue.Queue(maxsize=2)
    stop = threading.Event()
    done = object()

    def read() -> None:
        try:
            for chunk in _read_copy(raw, query, chunk_rows):
                while not stop.is_set():
                    try:
                        ready.put(chunk, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            ready.put(done)
        except BaseException as exc:  # handed to the consumer, which raises it
            ready.put(exc)

    reader = threading.Thread(target=read, name="history-copy", daemon=True)
    reader.start()
    try:
        while (item := ready.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        reader.join()


def _read_copy(raw: Any, query: sql.Composed, chunk_rows: int) -> Iterator[Chunk]:
    row_size = _COPY_ROW.itemsize
    buffer = bytearray()
    want = chunk_rows * row_size
    with raw.cursor() as cursor, cursor.copy(query) as copy:
        blocks = iter(copy)
        for block in blocks:  # until the header is complete
            buffer += block
            if len(buffer) >= _COPY_HEADER_LEN:
                ext = int.from_bytes(buffer[15:19], "big")
                del buffer[: _COPY_HEADER_LEN + ext]
                break
        # psycopg hands over one block per row: this loop runs once per row, so it does
        # as little as it can.
        for block in blocks:
            buffer += block
            if len(buffer) >= want:
                usable = (len(buffer) // row_size) * row_size
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
