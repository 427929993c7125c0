"""Time partitions of the recorded tables on PostgreSQL, and their retention (archive, drop).

On PostgreSQL the snapshot, delta and trade tables are declaratively partitioned by
``RANGE (received_at)`` (migration 0007): one partition per interval (setting
``RL_PARTITION_INTERVAL``: ``day`` or ``week``, UTC boundaries, weeks start on Monday) named
``<table>_p<YYYYMMDD>`` after its first day, plus a ``<table>_default`` partition that takes
any row outside the created ranges, so a write is never refused for its time. SQLite (the
embedded default) keeps plain tables and every function here is a no-op on it.

* :func:`ensure` creates the partitions from a start (default: the current interval) through
  ``RL_PARTITION_AHEAD`` intervals ahead; the recorder calls it at start and on its
  housekeeping tick, ``manage.py partitions ensure`` does the same. Rows that already sit in
  the default partition inside a new range are moved into the new partition in the same
  transaction (PostgreSQL refuses to create a range the default partition holds rows of).
  Concurrent callers (several recorders) serialise on an advisory lock.
* :func:`archive` writes one partition to a zstd-compressed Parquet file under
  ``RL_ARCHIVE_DIR`` (rows in ``(received_at, id)`` order), checks the file's row count
  against the table's, then detaches and drops the partition in the same transaction that
  locked it against writes; a JSON manifest beside the file (table, range, rows, sha256)
  is published once the drop is committed. A crash between commit and publication leaves a
  ``.pending`` manifest that :func:`settle_pending` (run by every command and the recorder's
  ensure) publishes if the partition is gone, or deletes with its file if it is not.
* :func:`drop` detaches and drops partitions without keeping their rows.

Archives are data only: Parquet columns and a JSON manifest, never pickles; the history
loader (:mod:`apps.simulation.loader`) reads the archived ranges it needs through
:func:`archived` and :func:`read_archive`.

Identity on a partitioned table: PostgreSQL needs the partition key in every unique index, so
the primary key there is ``(id, received_at)`` (``id`` still comes from the table's one
identity sequence, so it stays unique, and Django keeps ``id`` as the model's primary key:
the admin refuses composite keys) and a message is unique on
``(connection, sid, seq, received_at)``. Every write of one message carries the same receive
time (it is stamped once, when the frame arrives, and travels with the row through the queue,
the spill's exact JSON timestamps and every retry), so retried writes still conflict and are
ignored.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Final

from django.conf import settings
from django.db import connections, transaction
from psycopg import sql

log = logging.getLogger(__name__)

# The partitioned tables and their partition key. (A lifecycle table joins here when it exists.)
PARTITIONED: Final[dict[str, str]] = {
    "rl_orderbook_deltas": "received_at",
    "rl_orderbook_snapshots": "received_at",
    "rl_public_trades": "received_at",
}
INTERVALS: Final = ("day", "week")
# Columns stored as JSON text in Parquet (jsonb in PostgreSQL).
_JSON_COLUMNS: Final = {"yes_levels", "no_levels"}
_FETCH_ROWS: Final = 50_000
LOCK_TIMEOUT_S: Final = 5.0


class PartitionError(Exception):
    """A partition operation that cannot be done (unknown table, unsafe archive, ...)."""


@dataclass(frozen=True)
class Partition:
    table: str
    name: str
    lo: datetime | None  # None for the default partition
    hi: datetime | None
    rows: int | None = None  # exact count, when asked for

    @property
    def is_default(self) -> bool:
        return self.lo is None


@dataclass(frozen=True)
class Archive:
    """One archived partition: its Parquet file and what its manifest says about it."""

    table: str
    partition: str
    lo: datetime
    hi: datetime
    rows: int
    sha256: str
    path: Path

    def manifest(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(lo=self.lo.isoformat(), hi=self.hi.isoformat(), path=self.path.name)
        return data


# -- settings and ranges ---------------------------------------------------------------------


def interval_setting() -> str:
    value = str(getattr(settings, "RL_PARTITION_INTERVAL", "day")).strip().lower()
    if value not in INTERVALS:
        raise PartitionError(f"RL_PARTITION_INTERVAL must be day or week, not {value!r}")
    return value


def archive_dir() -> Path:
    return Path(getattr(settings, "RL_ARCHIVE_DIR", Path(settings.VAR_DIR) / "archive"))


def floor_interval(at: datetime, interval: str) -> datetime:
    """The start (UTC midnight; Monday for weeks) of the interval holding ``at``."""
    day = at.astimezone(UTC).date()
    if interval == "week":
        day -= timedelta(days=day.weekday())
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def step(lo: datetime, interval: str) -> datetime:
    return lo + (timedelta(days=7) if interval == "week" else timedelta(days=1))


def partition_name(table: str, lo: datetime) -> str:
    return f"{table}_p{lo:%Y%m%d}"


def is_partitioned(table: str, using: str = "default") -> bool:
    conn = connections[using]
    if conn.vendor != "postgresql":
        return False
    with conn.cursor() as cursor:
        cursor.execute(
            "SELECT 1 FROM pg_partitioned_table p JOIN pg_class c ON c.oid = p.partrelid "
            "WHERE c.relname = %s AND pg_table_is_visible(c.oid)",
            [table],
        )
        return cursor.fetchone() is not None


def _check_table(table: str) -> None:
    if table not in PARTITIONED:
        raise PartitionError(f"{table!r} is not a partitioned table ({', '.join(PARTITIONED)})")


_BOUND = re.compile(r"FROM \('([^']+)'\) TO \('([^']+)'\)")


def _parse_ts(text: str) -> datetime:
    # pg_get_expr prints bounds in the session's time zone, e.g. '2026-12-01 00:00:00+00'.
    if re.search(r"[+-]\d\d$", text):
        text += ":00"
    return datetime.fromisoformat(text).astimezone(UTC)


def partitions(table: str, *, using: str = "default", count: bool = False) -> list[Partition]:
    """The partitions of ``table`` ordered by range (the default partition last)."""
    _check_table(table)
    conn = connections[using]
    if not is_partitioned(table, using):
        return []
    with conn.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i "
            "JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent "
            "WHERE p.relname = %s AND pg_table_is_visible(p.oid)",
            [table],
        )
        found = cursor.fetchall()
        result = []
        for name, bound in found:
            match = _BOUND.search(bound or "")
            lo, hi = (_parse_ts(match[1]), _parse_ts(match[2])) if match else (None, None)
            rows = None
            if count:
                cursor.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(name)))
                rows = cursor.fetchone()[0]
            result.append(Partition(table, name, lo, hi, rows))
    far = datetime.max.replace(tzinfo=UTC)
    return sorted(result, key=lambda p: p.lo or far)


# -- ensure ----------------------------------------------------------------------------------


def _lock(cursor: Any, table: str) -> None:
    """Serialise partition DDL on one table across processes and hosts (transaction-scoped),
    and bound how long the DDL may wait for its table locks: creating, attaching or
    detaching a partition takes a lock on the parent that queues every writer behind it, so
    waiting on a long history load would stall the recorders. Past ``LOCK_TIMEOUT_S`` the
    step fails cleanly (nothing changed) and is retried later (the recorder's next tick)."""
    cursor.execute(
        "SELECT pg_advisory_xact_lock(%s)", [zlib.crc32(f"rl-partitions:{table}".encode())]
    )
    cursor.execute(f"SET LOCAL lock_timeout = '{int(LOCK_TIMEOUT_S * 1000)}ms'")


def create_partition(table: str, lo: datetime, interval: str, *, using: str = "default") -> bool:
    """Create the partition of ``table`` for the interval starting at ``lo``; False if it
    exists already. Rows of the range held by the default partition move into it."""
    _check_table(table)
    hi = step(lo, interval)
    name = partition_name(table, lo)
    conn = connections[using]
    with transaction.atomic(using=using), conn.cursor() as cursor:
        _lock(cursor, table)
        existing = partitions(table, using=using)
        if any(p.name == name for p in existing):
            return False
        for p in existing:
            if not p.is_default and p.lo < hi and lo < p.hi:
                raise PartitionError(f"{name} [{lo}, {hi}) overlaps {p.name} [{p.lo}, {p.hi})")
        key = sql.Identifier(PARTITIONED[table])
        ident, new = sql.Identifier(table), sql.Identifier(name)
        default = sql.Identifier(f"{table}_default")
        cursor.execute(
            sql.SQL("SELECT EXISTS (SELECT 1 FROM {} WHERE {} >= %s AND {} < %s)").format(
                default, key, key
            ),
            [lo, hi],
        )
        if not cursor.fetchone()[0]:
            cursor.execute(
                sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM (%s) TO (%s)").format(
                    new, ident
                ),
                [lo, hi],
            )
            return True
        # The default partition holds rows of this range: move them into a new table that is
        # then attached (PostgreSQL builds its indexes on attach), all in this transaction.
        cursor.execute(
            sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)").format(
                new, ident
            )
        )
        cursor.execute(
            sql.SQL(
                "WITH moved AS (DELETE FROM {} WHERE {} >= %s AND {} < %s RETURNING *) "
                "INSERT INTO {} SELECT * FROM moved"
            ).format(default, key, key, new),
            [lo, hi],
        )
        moved = cursor.rowcount
        cursor.execute(
            sql.SQL("ALTER TABLE {} ATTACH PARTITION {} FOR VALUES FROM (%s) TO (%s)").format(
                ident, new
            ),
            [lo, hi],
        )
        log.info("partitions.moved_from_default table=%s partition=%s rows=%s", table, name, moved)
        return True


def ensure(
    tables: Iterable[str] | None = None,
    *,
    start: datetime | None = None,
    ahead: int | None = None,
    now: datetime | None = None,
    using: str = "default",
) -> list[str]:
    """Create the missing partitions from ``start`` (default: now) through ``ahead``
    intervals past now (default ``RL_PARTITION_AHEAD``). Archived ranges are not recreated
    (a late row for one stays in the default partition, where the loader finds it).
    Returns the names created; [] on SQLite or unpartitioned tables."""
    if connections[using].vendor != "postgresql":
        return []
    interval = interval_setting()
    now = now or datetime.now(UTC)
    ahead = int(getattr(settings, "RL_PARTITION_AHEAD", 3) if ahead is None else ahead)
    last = floor_interval(now, interval)
    for _ in range(ahead):
        last = step(last, interval)
    settle_pending(using=using)
    created = []
    for table in tables or PARTITIONED:
        if not is_partitioned(table, using):
            continue
        done = {a.lo for a in archived(table)}
        lo = floor_interval(start or now, interval)
        while lo <= last:
            if lo not in done and create_partition(table, lo, interval, using=using):
                created.append(partition_name(table, lo))
            lo = step(lo, interval)
    if created:
        log.info("partitions.created %s", " ".join(created))
    return created


# -- archive and drop ------------------------------------------------------------------------


def _columns(cursor: Any, table: str) -> list[tuple[str, str]]:
    cursor.execute(
        "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
        "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
        [table],
    )
    return list(cursor.fetchall())


def _arrow_type(pg_type: str) -> Any:
    import pyarrow as pa

    if pg_type.startswith("timestamp"):
        return pa.timestamp("us", tz="UTC")
    return {
        "bigint": pa.int64(),
        "integer": pa.int32(),
        "smallint": pa.int16(),
        "boolean": pa.bool_(),
        "uuid": pa.binary(16),
    }.get(pg_type, pa.string())


def _arrow_value(value: Any, pg_type: str) -> Any:
    if value is None:
        return None
    if pg_type == "uuid":
        return value.bytes
    if pg_type == "jsonb":  # Django's connection hands jsonb over as its JSON text already
        return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    return value


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_parquet(cursor: Any, meta_cursor: Any, table: str, name: str, path: Path) -> int:
    """Write every row of partition ``name`` (ordered by time, then id) to ``path``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = _columns(meta_cursor, name)
    schema = pa.schema([(c, _arrow_type(t)) for c, t in columns])
    key = PARTITIONED[table]
    written = 0
    with pq.ParquetWriter(path, schema, compression="zstd") as out:
        cursor.execute(
            sql.SQL("SELECT {} FROM {} ORDER BY {}, id").format(
                sql.SQL(", ").join(sql.Identifier(c) for c, _ in columns),
                sql.Identifier(name),
                sql.Identifier(key),
            )
        )
        while rows := cursor.fetchmany(_FETCH_ROWS):
            arrays = [
                pa.array([_arrow_value(r[i], t) for r in rows], type=schema.field(i).type)
                for i, (_, t) in enumerate(columns)
            ]
            out.write_table(pa.Table.from_arrays(arrays, schema=schema))
            written += len(rows)
    return written


def _manifest_path(path: Path, pending: bool = False) -> Path:
    return path.with_suffix(".json.pending" if pending else ".json")


def archive(
    table: str, name: str, *, using: str = "default", folder: Path | None = None
) -> Archive:
    """Archive partition ``name`` of ``table`` to Parquet, verify it, then drop it."""
    _check_table(table)
    found = {p.name: p for p in partitions(table, using=using)}
    part = found.get(name)
    if part is None or part.is_default:
        raise PartitionError(f"{name!r} is not a range partition of {table}")
    folder = folder or archive_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.parquet"
    if _manifest_path(path).exists():
        raise PartitionError(f"{path} is archived already; the partition {name} still exists")
    tmp = path.with_suffix(".parquet.tmp")
    conn = connections[using]
    try:
        with transaction.atomic(using=using), conn.cursor() as cursor:
            _lock(cursor, table)
            # Writers of rows in this (old) range wait until the drop commits; then their
            # rows go to the default partition, where the loader reads them too.
            cursor.execute(sql.SQL("LOCK TABLE {} IN SHARE MODE").format(sql.Identifier(name)))
            cursor.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(name)))
            rows = cursor.fetchone()[0]
            # A server-side cursor: a partition may hold more rows than fit in memory.
            with conn.connection.cursor(name=f"rl_archive_{name}") as rows_cursor:
                written = _write_parquet(rows_cursor, cursor.cursor, table, name, tmp)
            import pyarrow.parquet as pq

            stored = pq.ParquetFile(tmp).metadata.num_rows
            if not rows == written == stored:
                raise PartitionError(
                    f"{name}: {rows} rows in the table, {written} written, {stored} in the "
                    "Parquet file; nothing dropped"
                )
            with tmp.open("rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
            result = Archive(table, name, part.lo, part.hi, rows, _sha256(path), path)
            pending = _manifest_path(path, pending=True)
            pending.write_text(json.dumps(result.manifest(), indent=1))
            cursor.execute(
                sql.SQL("ALTER TABLE {} DETACH PARTITION {}").format(
                    sql.Identifier(table), sql.Identifier(name)
                )
            )
            cursor.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(name)))
    except BaseException:
        tmp.unlink(missing_ok=True)
        if not _manifest_path(path).exists():
            _manifest_path(path, pending=True).unlink(missing_ok=True)
            path.unlink(missing_ok=True)
        raise
    os.replace(_manifest_path(path, pending=True), _manifest_path(path))
    log.info("partitions.archived table=%s partition=%s rows=%s path=%s", table, name, rows, path)
    return result


def drop(table: str, name: str, *, using: str = "default") -> int:
    """Detach and drop partition ``name`` of ``table`` (its rows are gone); returns its rows."""
    _check_table(table)
    part = {p.name: p for p in partitions(table, using=using)}.get(name)
    if part is None or part.is_default:
        raise PartitionError(f"{name!r} is not a range partition of {table}")
    with transaction.atomic(using=using), connections[using].cursor() as cursor:
        _lock(cursor, table)
        cursor.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(name)))
        rows = cursor.fetchone()[0]
        cursor.execute(
            sql.SQL("ALTER TABLE {} DETACH PARTITION {}").format(
                sql.Identifier(table), sql.Identifier(name)
            )
        )
        cursor.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(name)))
    log.info("partitions.dropped table=%s partition=%s rows=%s", table, name, rows)
    return rows


def older_than(table: str, before: datetime, *, using: str = "default") -> list[Partition]:
    """The range partitions of ``table`` that end at or before ``before``."""
    return [p for p in partitions(table, using=using) if not p.is_default and p.hi <= before]


def settle_pending(*, using: str = "default", folder: Path | None = None) -> None:
    """Finish archives interrupted between the drop's commit and the manifest's publication."""
    folder = folder or archive_dir()
    if not folder.is_dir():
        return
    for pending in folder.glob("*.json.pending"):
        data = json.loads(pending.read_text())
        names = {p.name for p in partitions(data["table"], using=using)}
        if data["partition"] in names:  # the drop did not commit: the rows are still live
            pending.unlink()
            (folder / data["path"]).unlink(missing_ok=True)
        else:
            os.replace(pending, folder / pending.name.removesuffix(".pending"))


# -- reading archives --------------------------------------------------------------------------


def archived(
    table: str,
    lo: datetime | None = None,
    hi: datetime | None = None,
    *,
    folder: Path | None = None,
) -> list[Archive]:
    """The published archives of ``table`` overlapping [lo, hi), oldest first."""
    folder = folder or archive_dir()
    return [
        item
        for item in _manifests(folder)
        if item.table == table and (lo is None or item.hi > lo) and (hi is None or item.lo < hi)
    ]


_MANIFESTS: dict[Path, tuple[Any, list[Archive]]] = {}


def _manifests(folder: Path) -> list[Archive]:
    """Every published archive in ``folder``, oldest first; re-read only when the folder's
    list of manifests changes (a load asks many times, a folder may hold years of
    partitions; a published manifest is never rewritten, only renamed into place)."""
    try:
        stamp = (folder.stat().st_mtime_ns, tuple(sorted(p.name for p in folder.glob("*.json"))))
    except FileNotFoundError:
        return []
    cached = _MANIFESTS.get(folder)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    found = []
    for manifest in folder.glob("*.json"):
        data = json.loads(manifest.read_text())
        if data.get("table") not in PARTITIONED:
            continue
        found.append(
            Archive(
                table=str(data["table"]),
                partition=str(data["partition"]),
                lo=datetime.fromisoformat(data["lo"]),
                hi=datetime.fromisoformat(data["hi"]),
                rows=int(data["rows"]),
                sha256=str(data["sha256"]),
                path=folder / Path(str(data["path"])).name,
            )
        )
    found.sort(key=lambda a: (a.table, a.lo))
    _MANIFESTS[folder] = (stamp, found)
    return found


def read_archive(
    item: Archive,
    columns: list[str],
    *,
    markets: list[str] | None = None,
    lo: datetime | None = None,
    hi: datetime | None = None,
    at_most: datetime | None = None,
    connection_id: bytes | None = None,
) -> Any:
    """The rows of an archive as a ``pyarrow.Table`` in stored (time, id) order, filtered to
    ``markets``, ``lo <= received_at < hi`` (or ``<= at_most``) and one connection."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    key = pc.field(PARTITIONED[item.table])
    conditions = []
    if markets is not None:
        conditions.append(pc.field("market_ticker").isin(markets))
    if lo is not None:
        conditions.append(key >= lo)
    if hi is not None:
        conditions.append(key < hi)
    if at_most is not None:
        conditions.append(key <= at_most)
    if connection_id is not None:
        conditions.append(pc.field("connection_id") == connection_id)
    where = None
    for condition in conditions:
        where = condition if where is None else where & condition
    return pq.read_table(item.path, columns=columns, filters=where)


def archive_fingerprint(tables: Iterable[str], lo: datetime, hi: datetime) -> list[str]:
    """The sha256 of every archive of ``tables`` overlapping [lo, hi) (for cache keys)."""
    return [a.sha256 for table in tables for a in archived(table, lo, hi)]


def cut_window(
    lo: datetime, hi: datetime, covered: list[Archive]
) -> Iterator[tuple[datetime, datetime, Archive | None]]:
    """[lo, hi) cut at the archives' bounds: (piece start, piece end, its archive or None)."""
    at = lo
    for item in sorted(covered, key=lambda a: a.lo):
        if item.hi <= at or item.lo >= hi:
            continue
        if item.lo > at:
            yield at, item.lo, None
            at = item.lo
        end = min(item.hi, hi)
        yield at, end, item
        at = end
    if at < hi:
        yield at, hi, None


def day_of(text: str) -> datetime:
    """A ``YYYY-MM-DD`` (UTC) argument as an aware datetime."""
    parsed = date.fromisoformat(text)
    return datetime(parsed.year, parsed.month, parsed.day, tzinfo=UTC)


# -- the recorder's housekeeping -------------------------------------------------------------


def ensure_in_background(previous: threading.Thread | None = None) -> threading.Thread | None:
    """Run :func:`ensure` in a daemon thread (the recorder's loop never waits on the
    database; a hung database leaves the thread waiting, not the recorder, and a recorder
    that stops does not wait for it). Skipped while ``previous`` still runs. Failures are
    logged: until the partitions exist, rows go to the default partition, never refused."""
    if previous is not None and previous.is_alive():
        return previous

    def run() -> None:
        try:
            ensure()
        except Exception:  # the recorder must go on recording whatever this hits
            log.warning("partitions.ensure_failed", exc_info=True)
        finally:
            connections.close_all()

    thread = threading.Thread(target=run, name="rl-partitions-ensure", daemon=True)
    thread.start()
    return thread
