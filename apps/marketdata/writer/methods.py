"""How a batch reaches the database: the write methods (``copy``, ``bulk_create``), and
writing a batch so that a row the database refuses is set aside alone.

Both methods write every row of a batch in ONE transaction, idempotently, as the rows'
:class:`~apps.marketdata.writer.tables.TableSpec` says (its conflict columns are the ``ON
CONFLICT`` target). ``copy`` (psycopg binary ``COPY``; PostgreSQL only) first copies straight
into the table inside a savepoint, which is as fast as a raw ``COPY``; on a unique violation (a
retried batch) it copies into a TEMP staging table and runs ``INSERT ... SELECT ... ON CONFLICT
(key) DO NOTHING`` (or ``DO UPDATE`` for an upsert) instead. ``bulk_create`` is Django's
``bulk_create(ignore_conflicts=True)`` (or ``update_conflicts``): portable, slower.
``benchmarks/bench_writer.py`` compares both with a raw ``COPY`` of the same rows.

Runs in the writer's thread; Django is imported inside the functions.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from apps.marketdata.writer.errors import IntegerOutOfRange, safe_error
from apps.marketdata.writer.tables import TABLES, TableSpec
from apps.marketdata.writer.widths import (
    IntegerColumn,
    bad_integers,
    check_copy_types,
    integer_columns,
)


class BatchWriteMethod:
    """How a batch reaches the database. Subclasses implement :meth:`write`.

    Every method refuses a batch holding an integer that does not fit its column
    (:class:`IntegerOutOfRange`, before writing anything): binary ``COPY`` would otherwise
    store 2^32 + 11 in an ``int4`` column as 11. Building a method checks every spec of
    ``tables`` against its model (column order, conflict target, COPY types), so a model
    change that the spec does not follow fails at start, not on the first row.
    """

    name = ""

    def __init__(
        self, *, using: str, batch_rows: int, tables: Mapping[str, TableSpec] = TABLES
    ) -> None:
        from django.apps import apps

        self.using = using
        self.batch_rows = batch_rows
        self.tables = dict(tables)
        self._models = {key: apps.get_model(spec.model_label) for key, spec in tables.items()}
        for key, model in self._models.items():
            _check_column_order(model, tables[key])
            _check_conflict_target(model, tables[key])
        self.integer_columns: dict[str, tuple[IntegerColumn, ...]] = {
            key: integer_columns(spec, using=using) for key, spec in tables.items()
        }

    def check_integers(self, batch: Mapping[str, Sequence[tuple]]) -> None:
        """Raise :class:`IntegerOutOfRange` naming every row with an out-of-range integer."""
        bad = {}
        for key, rows in batch.items():
            found = bad_integers(self.tables[key], self.integer_columns[key], rows)
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

    def _insert_absent(self, key: str, rows: Sequence[tuple]) -> None:
        """Insert the rows of a table without a unique key that are not already stored (the
        search narrowed by the spec's ``lookup_columns``)."""
        spec, model = self.tables[key], self._models[key]
        lookup = {
            f"{name}__in": {row[spec.columns.index(name)] for row in rows}
            for name in spec.lookup_columns
        }
        existing = set(model.objects.using(self.using).filter(**lookup).values_list(*spec.columns))
        fresh = []
        for row in rows:
            key_ = tuple(row)
            if key_ not in existing:
                existing.add(key_)
                fresh.append(_instance(model, spec, row))
        if fresh:
            model.objects.using(self.using).bulk_create(fresh, batch_size=self.batch_rows)


def _instance(model: Any, spec: TableSpec, row: tuple) -> Any:
    # Positional init in field order is several times faster than keywords.
    return model(None, *row) if spec.auto_pk else model(*row)


def _check_column_order(model: Any, spec: TableSpec) -> None:
    names = tuple(f.attname for f in model._meta.concrete_fields)
    expected = ("id", *spec.columns) if spec.auto_pk else spec.columns
    if names != expected:
        raise RuntimeError(
            f"{spec.model_label} fields {names} no longer match the writer's {spec.key} columns "
            f"{expected}; update {spec.row_type.__name__} and its TableSpec"
        )


def unique_keys(model: Any) -> list[frozenset[str]]:
    r"""The column sets (attnames) that ``model`` declares unique: its unique fields (the
    primary key too), ``unique_together`` and unconditional field ``UniqueConstraint``\ s."""
    from django.db import models

    meta = model._meta
    keys = [frozenset({f.attname}) for f in meta.concrete_fields if f.unique]
    for names in meta.unique_together:
        keys.append(frozenset(meta.get_field(n).attname for n in names))
    for constraint in meta.constraints:
        if (
            isinstance(constraint, models.UniqueConstraint)
            and constraint.fields
            and constraint.condition is None
        ):
            keys.append(frozenset(meta.get_field(n).attname for n in constraint.fields))
    return keys


def _check_conflict_target(model: Any, spec: TableSpec) -> None:
    """``ON CONFLICT (conflict_columns)`` needs a unique index on exactly those columns."""
    if spec.conflict_columns and frozenset(spec.conflict_columns) not in unique_keys(model):
        raise RuntimeError(
            f"{spec.model_label} has no unique key {spec.conflict_columns} (the {spec.key} "
            f"spec's conflict_columns); it has {[tuple(sorted(k)) for k in unique_keys(model)]}"
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


class BulkCreateMethod(BatchWriteMethod):
    """Django ``bulk_create(ignore_conflicts=True)``: portable (SQLite too), the slower one."""

    name = "bulk_create"

    def write(self, batch: Mapping[str, Sequence[tuple]], *, expect_conflicts: bool) -> None:
        from django.db import transaction

        self.check_integers(batch)
        with transaction.atomic(using=self.using):
            for key, rows in batch.items():
                spec = self.tables[key]
                if not spec.conflict_columns:
                    self._insert_absent(key, rows)
                    continue
                model = self._models[key]
                if spec.upsert:
                    fresh = _drop_stale(model, spec, _latest_per_key(spec, rows), self.using)
                    model.objects.using(self.using).bulk_create(
                        [_instance(model, spec, row) for row in fresh],
                        batch_size=self.batch_rows,
                        update_conflicts=True,
                        unique_fields=spec.conflict_columns,
                        update_fields=spec.update_columns,
                    )
                    continue
                model.objects.using(self.using).bulk_create(
                    [_instance(model, spec, row) for row in rows],
                    batch_size=self.batch_rows,
                    ignore_conflicts=True,
                )


class CopyMethod(BatchWriteMethod):
    """psycopg binary ``COPY``: straight into the table, or via staging when rows may repeat."""

    name = "copy"

    def __init__(
        self, *, using: str, batch_rows: int, tables: Mapping[str, TableSpec] = TABLES
    ) -> None:
        super().__init__(using=using, batch_rows=batch_rows, tables=tables)
        from psycopg import sql

        self._sql: dict[str, dict[str, Any]] = {}
        for key, spec in self.tables.items():
            check_copy_types(self._models[key], spec, using)
            if not spec.conflict_columns:
                continue  # written by _insert_absent
            cols = sql.SQL(", ").join(map(sql.Identifier, spec.columns))
            target = sql.Identifier(spec.db_table)
            stage = sql.Identifier(f"rl_stage_{key}")
            conflict = sql.SQL(", ").join(map(sql.Identifier, spec.conflict_columns))
            on_conflict = sql.SQL("ON CONFLICT ({}) DO NOTHING").format(conflict)
            if spec.upsert:
                on_conflict = sql.SQL("ON CONFLICT ({}) DO UPDATE SET {}").format(
                    conflict,
                    sql.SQL(", ").join(
                        sql.SQL("{} = EXCLUDED.{}").format(sql.Identifier(c), sql.Identifier(c))
                        for c in spec.update_columns
                    ),
                )
                if spec.newer_column:
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
                spec = self.tables[key]
                if not spec.conflict_columns:
                    self._insert_absent(key, rows)
                    continue
                if spec.upsert:  # upserts always go through staging
                    self._via_staging(conn, key, _latest_per_key(spec, rows))
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
        types = self.tables[key].pg_types
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


METHOD_CLASSES: Final = {"copy": CopyMethod, "bulk_create": BulkCreateMethod}


def is_data_error(exc: BaseException) -> bool:
    """Errors that belong to particular rows (retrying the same rows would fail again)."""
    from django.db import DataError, IntegrityError

    return isinstance(exc, DataError | IntegrityError | TypeError | ValueError | OverflowError)


class Outage(Exception):
    """The database failed (not the rows): ``unresolved`` still need writing."""

    def __init__(self, cause: BaseException, unresolved: dict[str, list[tuple]]) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.unresolved = unresolved


def write_isolating_bad_rows(
    method: BatchWriteMethod,
    batch: dict[str, list[tuple]],
    *,
    expect_conflicts: bool,
    reject: Callable[[str, tuple, str], None],
) -> collections.Counter[str]:
    """Write the batch in one transaction; if rows are refused, bisect to find them.

    Each refused row goes to ``reject(table, row, reason)``; returns how many rows of each
    table were refused. Raises :class:`Outage` (with the rows not yet committed) when the
    database fails.
    """
    rejected: collections.Counter[str] = collections.Counter()

    def set_aside(table: str, row: tuple, reason: str) -> None:
        reject(table, row, reason)
        rejected[table] += 1

    try:
        method.write(batch, expect_conflicts=expect_conflicts)
        return rejected
    except IntegerOutOfRange as exc:
        # The method named the rows that cannot be stored as they are: keep them aside
        # and write the others (no bisecting needed for these).
        rest: dict[str, list[tuple]] = {}
        for table, rows in batch.items():
            reasons = exc.bad.get(table, {})
            for k, row in enumerate(rows):
                reason = reasons.get(k)
                if reason is None:
                    rest.setdefault(table, []).append(row)
                else:
                    set_aside(table, row, reason)
        batch = rest
        if not batch:
            return rejected
        try:
            method.write(batch, expect_conflicts=expect_conflicts)
            return rejected
        except Exception as again:
            if not is_data_error(again):
                raise Outage(again, batch) from again
    except Exception as exc:
        if not is_data_error(exc):
            raise Outage(exc, batch) from exc
    # Some row is refused: halve until each bad row stands alone; keep those aside.
    stack = [(table, rows) for table, rows in batch.items()]
    while stack:
        table, rows = stack.pop()
        try:
            method.write({table: rows}, expect_conflicts=True)
        except Exception as exc:
            if not is_data_error(exc):
                unresolved: dict[str, list[tuple]] = {}
                for t, r in [*stack, (table, rows)]:
                    unresolved.setdefault(t, []).extend(r)
                raise Outage(exc, unresolved) from exc
            if len(rows) == 1:
                set_aside(table, rows[0], safe_error(exc))
                continue
            half = len(rows) // 2
            stack.append((table, rows[half:]))
            stack.append((table, rows[:half]))
    return rejected
