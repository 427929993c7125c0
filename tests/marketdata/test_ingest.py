"""The recorder end to end on the real PostgreSQL: lossless through drops, gaps and garbage."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import pytest
from django.db import connection

from apps.marketdata.exchange import (
    ApiKey,
    ExchangeConfig,
    ExchangeThread,
    FaultConfig,
    LocalExchange,
    SyntheticConfig,
    SyntheticSource,
    ensure_dev_keys,
)
from apps.marketdata.ingest import IngestOptions, run_ingest_async
from apps.marketdata.models import (
    OrderbookDelta,
    OrderbookSnapshot,
    PublicTrade,
    RecordingEvent,
)
from apps.marketdata.selectors import rebuild_latest_book
from apps.workers.models import WorkerStatus
from tests.conftest import REPO_ROOT

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def dev_key_exchange(settings, *, markets: int, rate: float, faults=None) -> LocalExchange:
    """An exchange that trusts the development key the recorder uses for --exchange local."""
    keys = ensure_dev_keys(settings.LOCAL_EXCHANGE_KEY_DIR, announce=lambda *_: None)
    return LocalExchange(
        ExchangeConfig(
            keys=(ApiKey(public_key=keys.public_key_path, key_id=keys.key_id),),
            faults=faults or FaultConfig(),
        ),
        source=SyntheticSource(SyntheticConfig(markets=markets, rate=rate, seed=3)),
    )


async def record_until(exchange, url, settle, **options):
    stop = asyncio.Event()
    task = asyncio.create_task(
        run_ingest_async(
            IngestOptions(ws_url=url, exchange="local", **options),
            stop_event=stop,
            install_signal_handlers=False,
        )
    )
    async with asyncio.timeout(60):
        while not settle():  # noqa: ASYNC110 (polling exchange counters)
            await asyncio.sleep(0.05)
    return stop, task


def test_books_rebuilt_from_the_database_equal_the_exchange_after_drops_gaps_and_garbage(
    settings,
) -> None:
    faults = FaultConfig(drop_after_messages=2500, seq_gap_every=700, malformed_every=500)
    exchange = dev_key_exchange(settings, markets=4, rate=3000, faults=faults)
    thread = ExchangeThread(exchange)
    with thread as url:

        async def scenario():
            stop, task = await record_until(
                exchange,
                url,
                lambda: exchange.stats.connections_opened >= 4,
                snapshot_interval_s=0.5,
                progress_interval_s=60,
            )
            # Freeze the exchange, let every resync land, then stop the recorder.
            await asyncio.to_thread(thread.call, exchange.pause)
            await asyncio.sleep(1.5)
            stop.set()
            return await task

        result = asyncio.run(scenario())
        final = {t: exchange.book_levels(t) for t in exchange.tickers()}

    client, writer = result.client, result.writer
    assert client["reconnects"] >= 3 and client["gaps"] > 0 and client["malformed"] > 0
    assert writer["spill_pending_rows"] == 0 and writer["rejected_rows"] == 0
    # Nothing the client accepted is missing and nothing is stored twice (the unique
    # constraint makes a duplicate impossible, so equal counts mean an exact match).
    assert OrderbookDelta.objects.count() == client["deltas"]
    exchange_snapshots = OrderbookSnapshot.objects.exclude(source="periodic").count()
    assert exchange_snapshots == client["snapshots"]
    assert PublicTrade.objects.count() == client["trades"]
    assert RecordingEvent.objects.filter(kind="gap").count() == client["gaps"]
    assert RecordingEvent.objects.filter(kind="disconnect").count() >= 3
    assert OrderbookSnapshot.objects.filter(source="periodic").exists()
    assert OrderbookSnapshot.objects.filter(source="resync").exists()
    heartbeat = WorkerStatus.objects.get(kind="ingest")
    assert heartbeat.stopped_at is not None
    assert heartbeat.counters["client"]["messages"] == client["messages"]
    assert heartbeat.counters["writer"]["rows_written"] > 0
    for ticker, levels in final.items():
        rebuilt = rebuild_latest_book(market_ticker=ticker, connection_id=result.connection_id)
        assert rebuilt.trusted, (ticker, rebuilt.reason)
        assert rebuilt.book.snapshot_levels() == levels, ticker
        assert result.books[ticker].snapshot_levels() == levels, ticker


def test_sigterm_leaves_every_accepted_row_in_the_database(settings) -> None:
    exchange = dev_key_exchange(settings, markets=3, rate=2000)
    db = connection.settings_dict
    host, port = db["HOST"] or "127.0.0.1", db["PORT"] or 5432
    env = {
        **os.environ,
        "DATABASE_URL": f"postgres://{db['USER']}@{host}:{port}/{db['NAME']}",
        "LOCAL_EXCHANGE_KEY_DIR": str(settings.LOCAL_EXCHANGE_KEY_DIR),
        "RL_VAR_DIR": str(settings.LOCAL_EXCHANGE_KEY_DIR.parent),
    }
    with ExchangeThread(exchange) as url:
        proc = subprocess.Popen(
            [
                sys.executable,
                "manage.py",
                "ingest_orderbook",
                "--ws-url",
                url,
                "--progress-interval",
                "1",
                "--flush-interval",
                "1",
            ],
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            deadline = time.monotonic() + 60
            while exchange.stats.messages_sent.get("orderbook_delta", 0) < 3000:
                assert proc.poll() is None, proc.stdout.read()
                assert time.monotonic() < deadline
                time.sleep(0.1)
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0, out
    done = [line for line in out.splitlines() if line.startswith("done in")]
    assert done, out
    written = int(done[0].split(" rows written")[0].rsplit(" ", 1)[1])
    stored = (
        OrderbookDelta.objects.count()
        + OrderbookSnapshot.objects.count()
        + PublicTrade.objects.count()
        + RecordingEvent.objects.count()
    )
    assert written > 3000
    assert stored == written
