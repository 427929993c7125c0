"""Integer widths agree end to end: no value is ever stored as a different value (issue 12.2).

Binary COPY writes an ``int4`` by keeping its low 32 bits, so before the fix a delta on sid
2^32 + 11, seq 506 was stored as (11, 506) and the genuine (11, 506) was then dropped as a
duplicate. Now sids are ``bigint`` like seqs, and every write method refuses (into the
rejected file, counted) a row holding any integer that does not fit its column, with the
column widths taken from the model fields.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apps.marketdata.models import OrderbookDelta, PublicTrade, RecordingEvent
from apps.marketdata.writer import (
    DELTA,
    SNAPSHOT,
    TABLES,
    TRADE,
    CopyMethod,
    SnapshotRow,
    TradeRow,
)
from apps.marketdata.writer.widths import IntegerColumn, bad_integers, integer_columns
from tests.marketdata import test_writer
from tests.marketdata.test_writer import METHODS, T0, TICKER, deltas, wait_until

# The writer tests' fixtures: a started writer on the test database, its spill directory and
# a recording connection.
make_writer = test_writer.make_writer
spill_dir = test_writer.spill_dir
conn_id = test_writer.conn_id

INT4_MAX = 2**31 - 1
INT8_MAX = 2**63 - 1


def stored_deltas(conn: uuid.UUID) -> list[tuple[int, int, int]]:
    return list(
        OrderbookDelta.objects.filter(connection_id=conn)
        .order_by("sid", "seq")
        .values_list("sid", "seq", "price_e4")
    )


def rejected_lines(spill_dir: Path) -> list[dict]:
    return [json.loads(line) for p in (spill_dir / "rejected").glob("*.jsonl") for line in p.open()]


@pytest.mark.postgres  # the ranges are the backend's: SQLite stores 64 bits in any column
@pytest.mark.django_db
def test_integer_ranges_come_from_the_model_fields() -> None:
    by_name = {c.name: (c.low, c.high) for c in integer_columns(TABLES[DELTA])}
    assert by_name["sid"] == (-(2**63), INT8_MAX)
    assert by_name["seq"] == (-(2**63), INT8_MAX)
    assert by_name["price_e4"] == (-(2**31), INT4_MAX)
    assert by_name["delta_e2"] == (-(2**63), INT8_MAX)
    snapshot = {c.name for c in integer_columns(TABLES[SNAPSHOT])}
    assert snapshot == {"sid", "seq", "as_of_sid", "as_of_seq"}


@pytest.mark.postgres
@pytest.mark.django_db
def test_a_copy_type_narrower_or_wider_than_its_column_is_refused_at_start() -> None:
    spec = TABLES[DELTA]
    narrow = list(spec.pg_types)
    narrow[spec.columns.index("sid")] = "int4"  # what the writer used before: it wraps
    with pytest.raises(RuntimeError, match=r"OrderbookDelta.sid is bigint .* COPY type is 'int4'"):
        CopyMethod(
            using="default",
            batch_rows=10,
            tables={DELTA: dataclasses.replace(spec, pg_types=narrow)},
        )
    wide = list(spec.pg_types)
    wide[spec.columns.index("price_e4")] = "int8"
    with pytest.raises(RuntimeError, match=r"price_e4 is integer .* COPY type is 'int8'"):
        CopyMethod(
            using="default", batch_rows=10, tables={DELTA: dataclasses.replace(spec, pg_types=wide)}
        )
    CopyMethod(using="default", batch_rows=10)  # the recorder's specs as they are: fine


@pytest.mark.postgres
@pytest.mark.django_db
def test_a_conflict_target_that_is_not_a_unique_key_is_refused_at_start() -> None:
    spec = dataclasses.replace(TABLES[DELTA], conflict_columns=("connection_id", "seq"))
    with pytest.raises(RuntimeError, match=r"has no unique key \('connection_id', 'seq'\)"):
        CopyMethod(using="default", batch_rows=10, tables={DELTA: spec})


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
@METHODS
def test_a_sid_beyond_32_bits_is_stored_as_itself_beside_its_low_bits_twin(
    method: str, make_writer, conn_id: uuid.UUID
) -> None:
    writer = make_writer(method=method)
    (high,) = deltas(conn_id, range(506, 507), sid=2**32 + 11)
    (low,) = deltas(conn_id, range(506, 507), sid=11)
    (top,) = deltas(conn_id, range(1, 2), sid=INT8_MAX)
    top = top._replace(seq=INT8_MAX, delta_e2=-INT8_MAX)
    for row in (high, low, top):
        writer.enqueue(DELTA, row)
    assert writer.flush(timeout_s=10)
    assert stored_deltas(conn_id) == [
        (11, 506, low.price_e4),
        (2**32 + 11, 506, high.price_e4),
        (INT8_MAX, INT8_MAX, top.price_e4),
    ]
    assert OrderbookDelta.objects.get(sid=INT8_MAX).delta_e2 == -INT8_MAX
    assert writer.stats().rejected_rows == 0


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
@METHODS
def test_a_value_beyond_its_column_is_rejected_never_wrapped(
    method: str, make_writer, conn_id: uuid.UUID, spill_dir: Path
) -> None:
    writer = make_writer(method=method)
    rows = deltas(conn_id, range(1, 101))
    # 2^32 + 5000 would be stored as 5000 by binary COPY into int4: a valid-looking price.
    rows[10] = rows[10]._replace(price_e4=2**32 + 5000)
    rows[20] = rows[20]._replace(seq=INT8_MAX + 1)
    rows[30] = rows[30]._replace(delta_e2=-(10**5000))  # too long even to print
    trade = TradeRow(conn_id, TICKER, 2, 7, "t-1", 2**31, 0, 100, "yes", None, T0)
    snapshot = SnapshotRow(conn_id, TICKER, 0, 3, [], [], None, T0, "periodic", -(2**64), 1)
    for row in rows:
        writer.enqueue(DELTA, row)
    writer.enqueue(TRADE, trade)
    writer.enqueue(TRADE, trade._replace(seq=8, yes_price_e4=INT4_MAX))
    writer.enqueue(SNAPSHOT, snapshot)
    assert writer.flush(timeout_s=10)

    expected = [(1, r.seq, r.price_e4) for i, r in enumerate(rows) if i not in (10, 20, 30)]
    assert stored_deltas(conn_id) == expected
    assert list(PublicTrade.objects.values_list("seq", "yes_price_e4")) == [(8, INT4_MAX)]
    # Missing from their tables all the same: history untrusts the market from the first.
    assert wait_until(lambda: RecordingEvent.objects.filter(kind="gap").exists(), timeout_s=5)
    (marker,) = RecordingEvent.objects.filter(kind="gap")
    assert (marker.market_ticker, marker.at) == (TICKER, T0)
    assert marker.detail.startswith("writer dropped 5 rows received")
    assert writer.flush(timeout_s=10)
    stats = writer.stats()
    assert stats.rejected_rows == 5
    assert stats.rows_written == 97 + 1 + 1  # deltas, the trade, the marker
    reasons = sorted(line["reason"] for line in rejected_lines(spill_dir))
    assert len(reasons) == 5
    assert all("does not fit the column" in r for r in reasons)
    assert any(f"rl_orderbook_deltas.price_e4 = {2**32 + 5000}" in r for r in reasons)
    assert any(f"rl_orderbook_deltas.seq = {INT8_MAX + 1}" in r for r in reasons)
    assert any("rl_orderbook_deltas.delta_e2 = an integer of 16610 bits" in r for r in reasons)
    assert any(f"rl_public_trades.yes_price_e4 = {2**31}" in r for r in reasons)
    assert any(f"rl_orderbook_snapshots.as_of_sid = {-(2**64)}" in r for r in reasons)


# Integers near every width's edges, and far beyond them.
EDGES = [0, 2**15, 2**31, 2**32, 2**63, 2**64]
NEAR_EDGES = st.builds(
    lambda edge, offset, sign: sign * (edge + offset),
    st.sampled_from(EDGES),
    st.integers(-2, 2),
    st.sampled_from([1, -1]),
)
INTS = st.one_of(NEAR_EDGES, st.integers(), st.integers(-(10**40), 10**40), st.none())


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(INTS, INTS), min_size=1, max_size=30))
def test_exactly_the_rows_with_a_value_outside_its_column_are_named(rows: list) -> None:
    spec = TABLES[DELTA]
    columns = [
        IntegerColumn(0, "sid", -(2**63), INT8_MAX),
        IntegerColumn(1, "p", -(2**31), INT4_MAX),
    ]
    bad = bad_integers(spec, columns, rows)

    def fits(value: int | None, column: IntegerColumn) -> bool:
        return value is None or column.low <= value <= column.high

    expected = {k for k, row in enumerate(rows) if not all(map(fits, row, columns))}
    assert set(bad) == expected
    assert all("does not fit the column" in reason for reason in bad.values())
