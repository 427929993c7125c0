"""The real ``manage.py ingest_orderbook`` against a hostile exchange: it survives and records.

Issue 12, item 1: each of three frames made the recorder exit within seconds, and the valid
frames after them were never recorded — a size string of 4,300 digits, a ``ts_ms`` in the
year 10,000, and an unknown type nested 1,000 levels deep. Here a scripted WebSocket server
(signed handshake, Kalshi's acks) sends the three between valid deltas to the recorder
running as a subprocess on PostgreSQL. The process must stay up, every valid delta after
them must be stored (and nothing of the killers), and the malformed count and its reasons
must be reported (progress line, final line, worker heartbeat, rejected-frames file).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.db import connection

from apps.marketdata.exchange import ApiKey, ensure_dev_keys
from apps.marketdata.kalshi.rejects import read_rejected_frames
from apps.marketdata.models import OrderbookDelta, OrderbookSnapshot
from apps.workers.models import WorkerStatus
from tests.conftest import REPO_ROOT
from tests.marketdata.hostile_exchange import HostileExchange, HostileExchangeThread, Session

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

MARKET = "KXHOST-26DEC31-A"
YEAR_10000_MS = 253_402_300_800_000
REASONS = {"number_too_long": 1, "timestamp_out_of_range": 1, "too_deep": 1}


def test_the_recorder_outlives_the_three_killer_frames_and_records_what_follows(
    settings, tmp_path: Path
) -> None:
    keys = ensure_dev_keys(settings.LOCAL_EXCHANGE_KEY_DIR, announce=lambda *_: None)
    valid: list[int] = []  # seqs of the valid deltas sent on sid 1
    killers: list[str] = []

    async def script(s: Session) -> None:
        async def send_valid(count: int) -> None:
            for n in range(count):
                frame = s.delta(MARKET, 4000 + 10 * (n % 5), 100)
                valid.append(json.loads(frame)["seq"])
                await s.send(frame)

        # Built when sent, so each takes the sid's next seq as a real corrupted frame would.
        hostile = [
            lambda: s.delta(MARKET, 4100, 100, apply=False, delta_fp="1" * 4300 + ".00"),
            lambda: s.delta(MARKET, 4100, 100, apply=False, ts_ms=YEAR_10000_MS),
            lambda: (
                f'{{"type":"fill","sid":1,"seq":{s.next_seq(1)},"msg":'
                + "[" * 999
                + "]" * 999
                + "}"
            ),
        ]
        await send_valid(3)
        for build in hostile:
            killers.append(build())
            await s.send(killers[-1])
            await send_valid(5)
        await send_valid(20)

    exchange = HostileExchange(
        [MARKET], keys=(ApiKey(public_key=keys.public_key_path, key_id=keys.key_id),), script=script
    )
    db = connection.settings_dict
    var_dir = tmp_path / "var"
    env = {
        **os.environ,
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:"
        f"{db['PORT'] or 5432}/{db['NAME']}",
        "LOCAL_EXCHANGE_KEY_DIR": str(settings.LOCAL_EXCHANGE_KEY_DIR),
        "RL_VAR_DIR": str(var_dir),
    }
    runner = HostileExchangeThread(exchange)
    with runner as url:
        proc = subprocess.Popen(
            [
                sys.executable,
                "manage.py",
                "ingest_orderbook",
                "--ws-url",
                url,
                "--markets",
                MARKET,
                "--progress-interval",
                "0.5",
                "--flush-interval",
                "0.2",
                "--snapshot-interval",
                "0",
            ],
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            deadline = time.monotonic() + 25
            stored: list[int] = []
            while not runner.script_finished() or sorted(stored) != valid:
                assert proc.poll() is None, f"the recorder exited: {proc.stdout.read()[-3000:]}"
                assert time.monotonic() < deadline, (stored, valid)
                time.sleep(0.2)
                stored = list(OrderbookDelta.objects.values_list("seq", flat=True))
            assert exchange.script_error is None, exchange.script_error
            time.sleep(1.2)  # two more progress lines, and the process is still up
            assert proc.poll() is None
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()

    assert proc.returncode == 0, out
    # Every valid delta is stored once, nothing of the killer frames is.
    assert sorted(OrderbookDelta.objects.values_list("seq", flat=True)) == valid
    assert len(valid) == 3 + 3 * 5 + 20
    # The killers took seqs, so the recorder saw gaps and resynced; the resync was answered.
    assert OrderbookSnapshot.objects.filter(source="resync").exists()
    # The malformed frames are reported with their reasons, wherever the recorder reports.
    summary = "malformed 3 (number_too_long 1, timestamp_out_of_range 1, too_deep 1)"
    assert any(line.endswith(summary) for line in out.splitlines()), out
    assert "malformed 3" in next(ln for ln in out.splitlines() if ln.startswith("done in"))
    heartbeat = WorkerStatus.objects.get(kind="ingest")
    assert heartbeat.counters["client"]["malformed"] == 3
    assert heartbeat.counters["client"]["malformed_reasons"] == REASONS
    records = read_rejected_frames(var_dir / "rejected-frames")
    assert [r["code"] for r in records] == list(REASONS)
    assert [r["raw"] for r in records] == killers
