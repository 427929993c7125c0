"""The history loader gives identical arrays from a partitioned table, from one whose oldest
partitions were archived to Parquet, and from the unpartitioned SQLite path (issue 16)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from apps.marketdata import partitions
from apps.marketdata.models import (
    OrderbookDelta,
    OrderbookSnapshot,
    PublicTrade,
    RecordingConnection,
    RecordingEvent,
)
from apps.simulation.history import RecordedHistory
from apps.simulation.loader import load
from tests.conftest import REPO_ROOT
from tests.partition_support import _drop_new_partitions  # noqa: F401 (autouse)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.postgres]

DAY0 = datetime(2026, 11, 16, tzinfo=UTC)  # a Monday, so week partitions line up too
MARKETS = ["KXPART-A", "KXPART-B"]
ARRAYS = ("yes_px", "yes_sz", "no_px", "no_sz", "trusted", "updates", "times_ns")


def record_three_days(seed: int = 7) -> None:
    """Two connections over three days: the first is killed on day 0 (no close record, its
    last row a trade), the second starts on day 1, has a sequence gap on day 2 and ends with
    a disconnect marker. Books move by deltas that never take a level below zero."""
    rng = random.Random(seed)
    killed, later = uuid.uuid4(), uuid.uuid4()
    for conn, opened in ((killed, DAY0), (later, DAY0 + timedelta(days=1, hours=1))):
        RecordingConnection.objects.create(
            id=conn, exchange="local", ws_url="ws://local", opened_at=opened
        )
    snaps, deltas, trades, events = [], [], [], []
    spans = [(killed, DAY0 + timedelta(hours=2), DAY0 + timedelta(hours=20))]
    spans.append((later, DAY0 + timedelta(days=1, hours=1), DAY0 + timedelta(days=2, hours=22)))
    for conn, begin, stop in spans:
        seq = 0
        books = {m: {"yes": {}, "no": {}} for m in MARKETS}
        for m in MARKETS:
            seq += 1
            book = books[m]
            book["yes"] = {p: rng.randint(1, 50) * 100 for p in range(3000, 4600, 100)}
            book["no"] = {p: rng.randint(1, 50) * 100 for p in range(4000, 5500, 100)}
            snaps.append(
                OrderbookSnapshot(
                    connection_id=conn, market_ticker=m, sid=1, seq=seq,
                    yes_levels=sorted([p, q] for p, q in book["yes"].items()),
                    no_levels=sorted([p, q] for p, q in book["no"].items()),
                    received_at=begin + timedelta(microseconds=seq), source="ws",
                    as_of_sid=1, as_of_seq=seq,
                )
            )  # fmt: skip
        at = begin + timedelta(seconds=1)
        periodic = 0
        gap_done = False
        while at < stop:
            m = rng.choice(MARKETS)
            side = rng.choice(["yes", "no"])
            levels = books[m][side]
            # New levels stay below the other side's best, so books do not cross.
            top = 45 if side == "yes" else 54
            price = rng.choice(list(levels)) if rng.random() < 0.8 else rng.randrange(1, top) * 100
            held = levels.get(price, 0)
            change = rng.randint(-held, 3000) if held else rng.randint(1, 3000)
            levels[price] = held + change
            seq += 1
            deltas.append(
                OrderbookDelta(
                    connection_id=conn, market_ticker=m, sid=1, seq=seq, side=side,
                    price_e4=price, delta_e2=change, received_at=at,
                )
            )  # fmt: skip
            if rng.random() < 0.02:
                trades.append(
                    PublicTrade(
                        connection_id=conn, market_ticker=m, sid=2, seq=seq, trade_id=str(seq),
                        yes_price_e4=price, no_price_e4=10_000 - price, count_e2=100,
                        taker_side="yes", received_at=at + timedelta(microseconds=3),
                    )
                )  # fmt: skip
            if conn == later and not gap_done and at > DAY0 + timedelta(days=2, hours=3):
                gap_done = True
                events.append(
                    RecordingEvent(
                        connection_id=conn, kind="gap", sid=1, expected_seq=seq + 1,
                        got_seq=seq + 5, at=at + timedelta(microseconds=5),
                    )
                )  # fmt: skip
                seq += 4
            if at > begin + timedelta(hours=6 * (periodic + 1)):
                periodic += 1  # the recorder's periodic snapshots (sid 0)
                for pm in MARKETS:
                    snaps.append(
                        OrderbookSnapshot(
                            connection_id=conn, market_ticker=pm, sid=0, seq=periodic * 10 + MARKETS.index(pm),  # noqa: E501
                            yes_levels=sorted([p, q] for p, q in books[pm]["yes"].items() if q),
                            no_levels=sorted([p, q] for p, q in books[pm]["no"].items() if q),
                            received_at=at + timedelta(microseconds=7), source="periodic",
                            as_of_sid=1, as_of_seq=seq,
                        )
                    )  # fmt: skip
            at += timedelta(seconds=rng.randint(5, 90))
        if conn == killed:
            trades.append(
                PublicTrade(
                    connection_id=conn, market_ticker="KXPART-B", sid=2, seq=seq + 1,
                    trade_id="last", yes_price_e4=4000, no_price_e4=6000, count_e2=100,
                    taker_side="no", received_at=stop + timedelta(minutes=10),
                )
            )  # fmt: skip
        else:
            events.append(RecordingEvent(connection_id=conn, kind="disconnect", at=stop))
    OrderbookSnapshot.objects.bulk_create(snaps)
    OrderbookDelta.objects.bulk_create(deltas, batch_size=5000)
    PublicTrade.objects.bulk_create(trades)
    RecordingEvent.objects.bulk_create(events)


def window_load(**kwargs) -> RecordedHistory:
    return load(
        MARKETS,
        DAY0 + timedelta(hours=3),
        DAY0 + timedelta(days=2, hours=23),
        step_s=60,
        use_cache=False,
        progress=False,
        **kwargs,
    )


def assert_identical(a: RecordedHistory, b: RecordedHistory) -> None:
    for name in ARRAYS:
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert a.quality_report() == b.quality_report()


def sqlite_history(tmp_path: Path) -> RecordedHistory:
    """The same rows through a fresh SQLite database and the loader's ORM path."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    rows = tmp_path / "rows.json"
    dump = {
        model._meta.label: [
            {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in row.items()}
            for row in model.objects.order_by("pk").values(
                *(f.attname for f in model._meta.concrete_fields)
            )
        ]
        for model in (
            RecordingConnection, OrderbookSnapshot, OrderbookDelta, PublicTrade, RecordingEvent
        )
    }  # fmt: skip
    rows.write_text(json.dumps(dump, default=str))
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env["RL_VAR_DIR"] = str(tmp_path / "sqlite-var")
    out = tmp_path / "sqlite.npz"
    start, end = DAY0 + timedelta(hours=3), DAY0 + timedelta(days=2, hours=23)
    result = subprocess.run(
        [sys.executable, "-m", "tests.simulation.sqlite_load", str(rows), str(out),
         ",".join(MARKETS), start.isoformat(), end.isoformat(), "60"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return RecordedHistory.load_npz(out)


def test_partitioned_archived_and_sqlite_loads_are_identical(tmp_path, settings) -> None:
    settings.RL_ARCHIVE_DIR = tmp_path / "archive"
    record_three_days()
    # The rows landed in the default partition (no range existed): ensure moves them out.
    created = partitions.ensure(start=DAY0, now=DAY0 + timedelta(days=2), ahead=1)
    assert "rl_orderbook_deltas_p20261116" in created
    by_name = {p.name: p for p in partitions.partitions("rl_orderbook_deltas", count=True)}
    assert by_name["rl_orderbook_deltas_default"].rows == 0
    spanned = [
        n
        for n in ("p20261116", "p20261117", "p20261118")
        if by_name[f"rl_orderbook_deltas_{n}"].rows
    ]
    assert len(spanned) == 3, by_name
    total = OrderbookDelta.objects.count()

    partitioned = window_load()
    assert partitioned.trusted.any() and (~partitioned.trusted).any()
    assert_identical(partitioned, sqlite_history(tmp_path / "sqlite"))

    # Archive day 0 of all three tables: rows leave the database, the loader reads Parquet.
    for table in partitions.PARTITIONED:
        (oldest,) = partitions.older_than(table, DAY0 + timedelta(days=1))
        done = partitions.archive(table, oldest.name)
        assert done.path.exists() and done.rows > 0
    assert OrderbookDelta.objects.count() < total
    assert not OrderbookDelta.objects.filter(received_at__lt=DAY0 + timedelta(days=1)).exists()
    archived = window_load()
    assert_identical(partitioned, archived)


def test_a_late_row_in_an_archived_range_is_merged_in_order(tmp_path, settings) -> None:
    settings.RL_ARCHIVE_DIR = tmp_path / "archive"
    record_three_days(seed=11)
    partitions.ensure(start=DAY0, now=DAY0 + timedelta(days=2), ahead=1)
    first = OrderbookDelta.objects.filter(received_at__lt=DAY0 + timedelta(days=1)).order_by(
        "received_at"
    )[200]
    # A row that arrives late (a spill replayed after the archive) with the same time as an
    # archived row: the tables' order is (received_at, id), and so is the merge.
    late = dict(
        connection_id=first.connection_id, market_ticker=first.market_ticker, sid=1,
        seq=10_000_000, side=first.side, price_e4=first.price_e4, delta_e2=7,
        received_at=first.received_at,
    )  # fmt: skip
    row = OrderbookDelta.objects.create(**late)
    expected = window_load()
    row.delete()
    for table in partitions.PARTITIONED:
        (oldest,) = partitions.older_than(table, DAY0 + timedelta(days=1))
        partitions.archive(table, oldest.name)
    OrderbookDelta.objects.create(id=row.id, **late)  # into the default partition now
    default = partitions.partitions("rl_orderbook_deltas", count=True)[-1]
    assert default.is_default and default.rows == 1
    assert_identical(expected, window_load())
