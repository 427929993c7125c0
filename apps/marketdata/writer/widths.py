"""Integer widths: every write method refuses a row whose integer does not fit its column.

Binary ``COPY`` would store 2^32 + 11 in an ``int4`` column as 11, so the ranges are checked
before anything is written (from the model fields, as the database stores them), and the COPY
type of each integer column is checked against the column once, when a method is built. The
checks import Django's ORM inside their functions (they run in the writer's thread).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, Final

from apps.marketdata.writer.errors import describe_int
from apps.marketdata.writer.tables import TableSpec

_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1
# The binary COPY type that carries each PostgreSQL integer column type exactly.
_PG_COPY_INT_TYPES: Final = {"smallint": "int2", "integer": "int4", "bigint": "int8"}


@dataclass(frozen=True)
class IntegerColumn:
    """An integer column of a table: its index in the row and the range the column holds."""

    index: int
    name: str
    low: int
    high: int


def integer_columns(spec: TableSpec, *, using: str = "default") -> tuple[IntegerColumn, ...]:
    """The integer columns of ``spec`` with their ranges, from the model's fields as the
    database ``using`` stores them (``integer_field_range``), not from a hand-written list."""
    from django.apps import apps
    from django.db import connections, models

    ops = connections[using].ops
    # By name, not position: a row may or may not carry the model's primary key (auto_pk).
    by_name = {f.attname: f for f in apps.get_model(spec.model_label)._meta.concrete_fields}
    columns = []
    for index, name in enumerate(spec.columns):
        model_field = by_name[name]
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


def bad_integers(
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
                    f"{spec.db_table}.{column.name} = {describe_int(value)} does not fit the "
                    f"column ({column.low}..{column.high}): refused, never stored as another value",
                )
    return bad


def check_copy_types(model: Any, spec: TableSpec, using: str) -> None:
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
                f"{spec.pg_types[column.index]!r} (want {wanted!r}); update the pg_types of its "
                "TableSpec"
            )
