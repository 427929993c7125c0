"""The writer in a separate process, as the recorder runs it: a database outage and SIGTERM.

Each test starts this module as a script (``python -m tests.marketdata.test_writer_outage``)
that feeds delta rows from an asyncio task at a steady rate into a real
:class:`~apps.marketdata.writer.RecordWriter`, measures how late the event loop runs and the
process's resident memory, closes the writer, and prints one JSON line of results.

The outage test points the child at PostgreSQL through :class:`tests.tcp_proxy.TcpProxy`, cuts
the proxy (every connection dropped, new ones refused) for ``RL_TEST_OUTAGE_S`` seconds
(default 8 to keep the suite quick; run with ``RL_TEST_OUTAGE_S=30`` for the issue's 30 s),
then restores it. Nothing may be lost or stored twice, the loop may never stall, memory
stays bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
OUTAGE_S = float(os.environ.get("RL_TEST_OUTAGE_S", "8"))
RATE_ROWS_PER_S = 5000
MAX_LOOP_LAG_S = 0.05
MAX_RSS_MB = 300


# --------------------------------------------------------------------------------------------
# The child process
# --------------------------------------------------------------------------------------------


def _rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


async def _feed(args: argparse.Namespace) -> dict:
    from apps.marketdata.writer import DELTA, DeltaRow, RecordWriter, WriterConfig

    writer = RecordWriter(
        WriterConfig.from_settings(
            spill_dir=Path(args.spill_dir),
            batch_rows=args.batch_rows,
            flush_interval_s=args.flush_interval_s,
            db_timeout_s=2.0,
            retry_max_s=1.0,
        )
    ).start()
    conn = uuid.UUID(args.conn)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    rss_start_mb = _rss_mb()
    rss_samples: list[float] = []
    # Peak memory is sampled by a thread every 20 ms, through the outage and the final close.
    # (ru_maxrss is no use here: Linux carries the forking parent's high-water mark over
    # exec, so a child of a large pytest process would report the parent's size.)
    peak = {"mb": rss_start_mb}
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.wait(0.02):
            peak["mb"] = max(peak["mb"], _rss_mb())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    accepted = 0
    max_lag_s = 0.0
    max_enqueue_s = 0.0
    tick_s = 0.01
    print("ready", flush=True)
    started = time.monotonic()
    next_tick = started
    while not stop.is_set() and time.monotonic() - started < args.seconds:
        next_tick += tick_s
        await asyncio.sleep(max(0.0, next_tick - time.monotonic()))
        now = time.monotonic()
        max_lag_s = max(max_lag_s, now - next_tick)  # how late the loop woke this task
        due = int((now - started) * args.rate) - accepted
        received_at = datetime.now(UTC)
        for _ in range(due):
            accepted += 1
            row = DeltaRow(conn, "M", 1, accepted, "yes", 100, 100, None, received_at)
            t = time.perf_counter()
            writer.enqueue(DELTA, row)
            max_enqueue_s = max(max_enqueue_s, time.perf_counter() - t)
        if accepted % 2500 < due:
            rss_samples.append(round(_rss_mb(), 1))
    stats_before_close = writer.stats_dict()
    close_ok = await asyncio.to_thread(writer.close, 60.0)
    sampling.set()
    sampler.join(1)
    return {
        "accepted_rows": accepted,
        "close_ok": close_ok,
        "max_loop_lag_s": max_lag_s,
        "max_enqueue_s": max_enqueue_s,
        "rss_start_mb": round(rss_start_mb, 1),
        "rss_end_mb": round(_rss_mb(), 1),
        "max_rss_mb": round(max(peak["mb"], _rss_mb()), 1),
        "rss_samples_mb": rss_samples,
        "stats_before_close": stats_before_close,
        "stats": writer.stats_dict(),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--conn", required=True)
    parser.add_argument("--spill-dir", required=True)
    parser.add_argument("--rate", type=float, default=RATE_ROWS_PER_S)
    parser.add_argument("--seconds", type=float, default=3600)
    parser.add_argument("--batch-rows", type=int, default=None)
    parser.add_argument("--flush-interval-s", type=float, default=None)
    args = parser.parse_args()
    import gc

    import django

    django.setup()
    # As a long-running recorder should: move the start-up heap (Django, psycopg, ...) out of
    # the collector's sight, so a full collection scans only recent objects. Without it a
    # full collection triggered by the rows' allocations holds the GIL for 30-60 ms.
    gc.freeze()
    result = asyncio.run(_feed(args))
    print(json.dumps(result), flush=True)


# --------------------------------------------------------------------------------------------
# The tests
# --------------------------------------------------------------------------------------------


def _start_child(tmp_path: Path, database_url: str, *args: str) -> subprocess.Popen:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "kalshiflow_site.settings",
        "DATABASE_URL": database_url,
        "RL_VAR_DIR": str(tmp_path / "var"),
        "LOG_LEVEL": "WARNING",
    }
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.marketdata.test_writer_outage", *args],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = child.stdout.readline().strip()
    if line != "ready":
        child.kill()
        pytest.fail(f"the feeding process did not start: {line!r} {child.stderr.read()[-3000:]}")
    return child


def _result(child: subprocess.Popen, timeout_s: float) -> dict:
    try:
        out, err = child.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        child.kill()
        out, err = child.communicate()
        pytest.fail(f"the feeding process did not finish in {timeout_s}s: {err[-3000:]}")
    assert child.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def _stored(conn: uuid.UUID) -> tuple[int, int, int, int]:
    """(rows, distinct seqs, min seq, max seq) of the connection's deltas."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*), count(DISTINCT seq), coalesce(min(seq), 0), coalesce(max(seq), 0) "
            "FROM rl_orderbook_deltas WHERE connection_id = %s",
            [conn],
        )
        return cursor.fetchone()


def _database_url(port: int) -> str:
    from django.db import connection

    return f"postgres://postgres@127.0.0.1:{port}/{connection.settings_dict['NAME']}"


@pytest.fixture
def conn_id() -> uuid.UUID:
    from apps.marketdata.models import RecordingConnection

    return RecordingConnection.objects.create(
        exchange="local", ws_url="ws://127.0.0.1/", opened_at=datetime.now(UTC)
    ).id


@pytest.mark.postgres
@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_database_outage_loses_nothing_stalls_nothing_and_memory_stays_bounded(
    tmp_path: Path, conn_id: uuid.UUID
) -> None:
    from django.db import connection

    from tests.tcp_proxy import TcpProxy

    before_s, after_s = 2.0, 3.0
    with TcpProxy(target_port=int(connection.settings_dict["PORT"] or 5432)) as proxy:
        child = _start_child(
            tmp_path,
            _database_url(proxy.port),
            f"--conn={conn_id}",
            f"--spill-dir={tmp_path / 'spill'}",
            f"--seconds={before_s + OUTAGE_S + after_s}",
        )
        time.sleep(before_s)
        proxy.stop()
        time.sleep(OUTAGE_S)
        proxy.start()
        result = _result(child, timeout_s=after_s + 90)

    summary = {k: v for k, v in result.items() if not k.startswith("stats")}
    print(f"outage_s={OUTAGE_S}", json.dumps(summary))  # shown with -s: the figures seen
    accepted = result["accepted_rows"]
    expected_rows = RATE_ROWS_PER_S * (before_s + OUTAGE_S + after_s)
    assert accepted >= 0.95 * expected_rows
    during = result["stats_before_close"]
    assert during["retries"] >= 1, "the outage was not noticed"
    assert during["spilled_rows"] >= RATE_ROWS_PER_S * OUTAGE_S * 0.5, "rows did not spill"
    assert result["close_ok"], result["stats"]
    assert _stored(conn_id) == (accepted, accepted, 1, accepted)  # none missing, none twice
    assert not list((tmp_path / "spill").glob("w-*/*.jsonl"))
    assert result["max_loop_lag_s"] < MAX_LOOP_LAG_S, result
    assert result["max_rss_mb"] < MAX_RSS_MB, result


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_signal_stores_every_accepted_row_before_the_process_exits(
    tmp_path: Path, conn_id: uuid.UUID, signum: int
) -> None:
    from django.db import connection

    child = _start_child(
        tmp_path,
        _database_url(int(connection.settings_dict["PORT"] or 5432)),
        f"--conn={conn_id}",
        f"--spill-dir={tmp_path / 'spill'}",
        # Nothing is written on its own before the signal: only close() can store the rows.
        "--batch-rows=100000",
        "--flush-interval-s=60",
    )
    time.sleep(1.5)
    assert _stored(conn_id)[0] == 0
    child.send_signal(signum)
    result = _result(child, timeout_s=60)
    accepted = result["accepted_rows"]
    assert accepted >= 5000
    assert result["close_ok"]
    assert _stored(conn_id) == (accepted, accepted, 1, accepted)


if __name__ == "__main__":
    main()
