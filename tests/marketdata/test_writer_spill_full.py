"""A full or unwritable spill disk never crashes the writer; unavoidable loss is explicit
(issue 12.3).

Before the fix, with the spill on a 2 MB filesystem during a database outage, the writer's
thread died on ENOSPC 2.6 s in and the recorder exited. Here "disk full" is a small
``spill_max_bytes`` cap, a free-space guard set above the real free space, or ``os.write``
failing with ENOSPC; the end-to-end tests run the real writer thread against PostgreSQL
behind a proxy that the test switches off and on, and rebuild history from what was stored.
"""

from __future__ import annotations

import collections
import errno
import json
import logging
import os
import shutil
import subprocess
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from django.core.exceptions import ImproperlyConfigured

from apps.marketdata.ingest import _problems
from apps.marketdata.kalshi.ratelog import RateLimitedLog
from apps.marketdata.models import OrderbookDelta, OrderbookSnapshot, RecordingEvent
from apps.marketdata.writer import (
    DELTA,
    SNAPSHOT,
    TABLES,
    WORKER_STATUS,
    DeltaRow,
    RecordWriter,
    SnapshotRow,
    SpillRefused,
    SpillStore,
    WorkerStatusRow,
    WriterConfig,
)
from apps.marketdata.writer.loss import LossLedger
from apps.simulation.loader import load
from tests.conftest import REPO_ROOT
from tests.marketdata import test_writer
from tests.marketdata.test_writer import T0, deltas, wait_until

# The writer tests' fixtures: a started writer on the test database, its spill directory, a
# recording connection and a TCP proxy in front of PostgreSQL.
make_writer = test_writer.make_writer
spill_dir = test_writer.spill_dir
conn_id = test_writer.conn_id
proxy = test_writer.proxy

MARKETS = ["KXTEST-A", "KXTEST-B"]
NS = 1_000_000_000


def read_back(store: SpillStore) -> list[tuple]:
    store.seal_all()
    rows = []
    while (chunk := store.next_chunk(10_000)) is not None:
        rows += chunk.rows
        store.commit_chunk(chunk)
    return rows


class FailingWrites:
    """``os.write`` that writes half of what it is given, then fails with ENOSPC."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.real = os.write
        self.calls = 0
        monkeypatch.setattr(os, "write", self)

    def __call__(self, fd: int, data: bytes) -> int:
        self.calls += 1
        if self.calls % 2:
            return self.real(fd, bytes(data)[: max(1, len(data) // 2)])
        raise OSError(errno.ENOSPC, "No space left on device")


# --------------------------------------------------------------------------------------------
# The spill store (no database)
# --------------------------------------------------------------------------------------------


def test_the_spill_refuses_past_its_cap_and_takes_rows_again_once_replayed(
    tmp_path: Path,
) -> None:
    rows = deltas(uuid.uuid4(), range(1, 101))
    store = SpillStore(tmp_path, max_bytes=10_000)
    accepted = []
    with pytest.raises(SpillRefused, match=r"spill full: \d+ bytes wait .* cap 10000"):
        for row in rows:
            store.append(DELTA, [row])
            accepted.append(row)
    assert 0 < len(accepted) < len(rows)
    assert store.pending_bytes <= 10_000
    assert store.refusing.startswith("spill full")
    assert read_back(store) == accepted  # nothing of the refused row was written
    store.append(DELTA, rows[-1:])  # replayed: room again
    assert store.refusing == ""
    assert read_back(store) == rows[-1:]
    store.close()


def test_the_free_space_guard_refuses_before_the_disk_is_full(tmp_path: Path) -> None:
    free = shutil.disk_usage(tmp_path).free
    store = SpillStore(tmp_path, min_free_bytes=free + 2**40)
    with pytest.raises(
        SpillRefused, match=r"disk nearly full: .*\(RL_WRITER_SPILL_MIN_FREE_BYTES\)"
    ):
        store.append(DELTA, deltas(uuid.uuid4(), range(1, 3)))
    assert store.spilled_rows == 0
    store.min_free_bytes = 1
    store.append(DELTA, deltas(uuid.uuid4(), range(1, 3)))
    assert store.spilled_rows == 2
    store.close()


def test_enospc_mid_write_is_refused_and_leaves_no_torn_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn = uuid.uuid4()
    store = SpillStore(tmp_path)
    store.append(DELTA, deltas(conn, range(1, 11)))
    failing = FailingWrites(monkeypatch)
    with pytest.raises(SpillRefused, match=r"spill write failed: OSError: \[Errno 28\]"):
        store.append(DELTA, deltas(conn, range(11, 21)))
    assert failing.calls == 2  # half the batch reached the file before the disk filled up
    monkeypatch.undo()
    store.append(DELTA, deltas(conn, range(21, 31)))  # a new segment: the disk has room again
    assert read_back(store) == deltas(conn, range(1, 11)) + deltas(conn, range(21, 31))
    assert store.rejected_rows == 0  # the torn half line was cut off, not left to be read
    store.close()


def test_a_spill_path_that_cannot_be_a_directory_is_refused_not_raised(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    store = SpillStore(blocker / "spill")
    with pytest.raises(SpillRefused, match="spill directory unusable: NotADirectoryError"):
        store.append(DELTA, deltas(uuid.uuid4(), range(1, 2)))


def test_a_writer_on_an_unusable_spill_directory_fails_to_start_with_one_clear_line(
    tmp_path: Path,
) -> None:
    # Tests run as root, for whom chmod 0500 does not stop writes: a path under a regular
    # file is unusable for everyone.
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    writer = RecordWriter(WriterConfig(spill_dir=blocker / "spill"))
    with pytest.raises(ImproperlyConfigured) as caught:
        writer.start()
    message = str(caught.value)
    assert "\n" not in message
    assert f"spill directory {blocker / 'spill'} is not usable" in message
    assert "RL_WRITER_SPILL_DIR" in message
    assert not writer.stats().running


def test_a_row_json_cannot_hold_goes_to_the_rejected_file_and_the_rest_spills(
    tmp_path: Path,
) -> None:
    rows = deltas(uuid.uuid4(), range(1, 4))
    rows[1] = rows[1]._replace(delta_e2=10**5000)
    store = SpillStore(tmp_path)
    store.append(DELTA, rows)
    assert read_back(store) == [rows[0], rows[2]]
    assert store.rejected_rows == 1
    (rejected,) = (tmp_path / "rejected").glob("*.jsonl")
    record = json.loads(rejected.read_text())
    assert "an integer of 16610 bits" in record["row"]
    store.close()


def test_the_recorder_command_names_an_unusable_spill_directory_in_one_line(
    tmp_path: Path,
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    env = {
        **os.environ,
        "RL_VAR_DIR": str(tmp_path / "var"),
        "RL_WRITER_SPILL_DIR": str(blocker / "spill"),
    }
    env.pop("DATABASE_URL", None)
    proc = subprocess.run(
        [
            sys.executable,
            "manage.py",
            "ingest_orderbook",
            "--markets",
            "KXTEST-A",
            "--ws-url",
            "ws://127.0.0.1:9/trade-api/ws/v2",
            "--duration",
            "5",
        ],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr + proc.stdout
    errors = [line for line in proc.stderr.splitlines() if line.strip() and " INFO " not in line]
    assert len(errors) == 1, proc.stderr
    assert errors[0].startswith("CommandError: ")
    assert f"{blocker / 'spill'} is not usable" in errors[0]


# --------------------------------------------------------------------------------------------
# End to end: the real writer thread, PostgreSQL down, the spill full
# --------------------------------------------------------------------------------------------


def snapshot(conn: uuid.UUID, market: str, seq: int, at_s: float, size: int) -> SnapshotRow:
    at = T0 + timedelta(seconds=at_s)
    return SnapshotRow(conn, market, 1, seq, [[4000, size]], [], None, at, "ws", 1, seq)


def delta(conn: uuid.UUID, seq: int, at_s: float) -> DeltaRow:
    at = T0 + timedelta(seconds=at_s)
    return DeltaRow(conn, MARKETS[seq % 2], 1, seq, "yes", 4000, 100, None, at)


def test_a_lost_row_without_a_receive_time_is_counted_not_raised() -> None:
    # A heartbeat (metadata: no receive-time column) lost because the queue, the database and
    # the spill were all full. The ledger read row[None] for its time and raised TypeError out
    # of enqueue, into the recorder's heartbeat; now it is counted like any lost row (there is
    # no market to mark: it has no connection).
    ledger = LossLedger(TABLES, RateLimitedLog(logging.getLogger(__name__)))
    beat = WorkerStatusRow("rec-1", "recorder", "host", 1, T0, T0, None, True, [], {})
    ledger.record(WORKER_STATUS, [beat], "spill full")
    assert (ledger.rows_lost, ledger.last_loss_reason) == (1, "spill full")
    queue: collections.deque = collections.deque()
    ledger.queue_markers(queue)
    assert not queue and not ledger.open and ledger.problems()


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("full", ["cap", "free_space", "enospc"])
def test_when_the_database_and_the_spill_are_full_loss_is_counted_reported_and_marked(
    full: str, proxy, make_writer, conn_id: uuid.UUID, spill_dir: Path, monkeypatch
) -> None:
    spill_dir.mkdir(parents=True)
    limits: dict = {"spill_max_bytes": 20_000}  # about 100 delta rows
    if full == "free_space":
        limits = {"spill_min_free_bytes": shutil.disk_usage(spill_dir).free + 2**40}
    writer = make_writer(
        batch_rows=100,
        queue_max_rows=200,
        retry_max_s=0.5,
        db_overrides={"HOST": "127.0.0.1", "PORT": proxy.port},
        db_timeout_s=2.0,
        **limits,
    )
    # Before the outage: a snapshot of each market, then deltas, all stored (books trusted).
    writer.enqueue(SNAPSHOT, snapshot(conn_id, MARKETS[0], 1, 0.0, 100))
    writer.enqueue(SNAPSHOT, snapshot(conn_id, MARKETS[1], 2, 0.0, 100))
    for seq in range(3, 103):
        writer.enqueue(DELTA, delta(conn_id, seq, 0.01 + seq / 1000))
    assert writer.flush(timeout_s=10)

    proxy.stop()
    if full == "enospc":
        FailingWrites(monkeypatch)
    outage = range(103, 2103)  # received 1.103 s .. 3.102 s
    for seq in outage:
        writer.enqueue(DELTA, delta(conn_id, seq, 1 + seq / 1000))

    def losing() -> bool:
        now = writer.stats()
        return not now.db_up and now.held_rows > 0 and now.rows_lost >= 1500

    assert wait_until(losing, timeout_s=10)
    stats = writer.stats_dict()
    assert stats["running"] and not stats["db_up"] and stats["spill_full"]
    # Each market's loss is still open (marked once rows flow again) or already marked: a row
    # accepted after a loss queues the markers first, so which one depends on timing.
    assert stats["loss_open_markets"] == 2 or stats["gap_markers"] >= 2, stats
    # Lost, queued (gap markers of an earlier loss included) or held: nothing else.
    in_memory = stats["queue_depth"] + stats["held_rows"] - stats["gap_markers"]
    assert stats["rows_lost"] + in_memory <= len(outage)
    assert stats["spill_refused"].startswith(
        {"cap": "spill full", "free_space": "disk nearly full", "enospc": "spill write failed"}[
            full
        ]
    )
    # The recorder reports it (its heartbeat's problems are what /rl/health shows).
    client = SimpleNamespace(stats=SimpleNamespace(last_message_at=time.time()))
    problems = _problems(client, writer, time.time())
    assert any(p.startswith(f"writer lost {stats['rows_lost']} rows") for p in problems)
    assert not writer.flush(timeout_s=10)  # says so once a retry fails, without waiting it out
    monkeypatch.undo()

    proxy.start()
    assert wait_until(lambda: writer.stats().loss_open_markets == 0, timeout_s=20)
    assert writer.flush(timeout_s=20)
    # After the outage: fresh snapshots (the recorder's books were complete all along).
    writer.enqueue(SNAPSHOT, snapshot(conn_id, MARKETS[0], 2103, 5.0, 7))
    writer.enqueue(SNAPSHOT, snapshot(conn_id, MARKETS[1], 2104, 5.0, 9))
    for seq in range(2105, 2125):
        writer.enqueue(DELTA, delta(conn_id, seq, 5.5 + seq / 100_000))
    assert writer.flush(timeout_s=20)
    stats = writer.stats_dict()
    assert stats["loss_open_markets"] == 0 and not stats["spill_full"]
    assert stats["rejected_rows"] == 0

    # Every outage row is stored exactly once or counted lost.
    stored = set(OrderbookDelta.objects.filter(seq__in=outage).values_list("seq", flat=True))
    lost = [seq for seq in outage if seq not in stored]
    assert OrderbookDelta.objects.filter(seq__in=outage).count() == len(stored)
    assert len(lost) == stats["rows_lost"] >= 1500
    # Gap markers (one per market and loss episode) count every lost row, the first of each
    # market sits at its first lost row, and each lost row is covered: a marker at or before
    # it with no snapshot of the market stored in between.
    markers = list(RecordingEvent.objects.filter(kind="gap").order_by("at"))
    assert len(markers) == stats["gap_markers"] >= 2
    assert sum(int(m.detail.split()[2]) for m in markers) == len(lost)
    assert all(m.detail.startswith("writer dropped ") and m.sid is None for m in markers)
    received = {seq: T0 + timedelta(seconds=1 + seq / 1000) for seq in outage}
    first_lost_at = {}
    for market in MARKETS:
        mine = [seq for seq in lost if MARKETS[seq % 2] == market]
        at = [m.at for m in markers if m.market_ticker == market]
        assert at[0] == received[mine[0]]
        first_lost_at[market] = at[0]
        snaps = OrderbookSnapshot.objects.filter(market_ticker=market)
        snap_at = list(snaps.values_list("received_at", flat=True))
        for seq in mine:
            latest = max(a for a in at if a <= received[seq])
            assert not any(latest < s <= received[seq] for s in snap_at), seq

    # History never trusts a book across the lost rows; the next snapshot restores trust.
    # (The recorder stops cleanly after the window: without that close record the loader
    # would, rightly, end the connection at its last stored row.)
    RecordingEvent.objects.create(
        connection_id=conn_id, kind="disconnect", detail="stopped", at=T0 + timedelta(seconds=7)
    )
    history = load(MARKETS, T0, T0 + timedelta(seconds=6), step_s=0.05, use_cache=False)
    times = history.times_ns - int(T0.timestamp() * NS)
    for j, market in enumerate(MARKETS):
        first_lost_s = first_lost_at[market].timestamp() - T0.timestamp()
        trusted = history.trusted[:, j]
        before = (times > 0.2 * NS) & (times < 1.0 * NS)
        across = (times > (first_lost_s + 0.06) * NS) & (times < 4.95 * NS)
        after = times > 5.06 * NS
        assert trusted[before].all(), market
        assert not trusted[across].any(), market
        assert trusted[after].all(), market
        assert np.count_nonzero(across) > 30
        assert history.quality[market].gaps >= 1
