"""A hung database does not stop the recorder's housekeeping, and loses none of its rows.

The real ``manage.py ingest_orderbook`` runs in a subprocess with its database behind
:class:`tests.tcp_proxy.TcpProxy`; the proxy then hangs (connections stay open, nothing is
answered, no TCP timeout fires) for a few seconds while the exchange drops the socket, so
the recorder reconnects during the hang. Progress lines and live publishing must keep their
rhythm throughout; once the database answers again, the close record and disconnect marker
of the old connection, the new connection's row and connected marker, the periodic snapshots
taken during the hang and the heartbeat are all stored.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from channels.layers import get_channel_layer
from django.db import connection
from django.utils import timezone

from apps.marketdata.exchange import ExchangeThread
from apps.marketdata.live import book_group
from apps.marketdata.models import (
    OrderbookDelta,
    OrderbookSnapshot,
    RecordingConnection,
    RecordingEvent,
)
from apps.workers.models import WorkerStatus
from tests.marketdata.recorder_support import Recorder, database_url
from tests.marketdata.test_ingest import dev_key_exchange
from tests.tcp_proxy import TcpProxy

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.django_db(transaction=True)]
HANG_S = 6.0
EVERY_S = 0.5  # progress lines, periodic snapshots
# Allowed delay of a progress line on this loaded 2-core machine (the old recorder's was the
# whole hang: it awaited the heartbeat write).
MAX_GAP_S = 2.0


class PublishedBooks:
    """Listens to the live page's groups (the Redis channel layer) and notes arrival times."""

    def __init__(self, tickers: list[str]) -> None:
        self.tickers = tickers
        self.arrivals: list[float] = []
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._listen()), daemon=True)

    def __enter__(self) -> PublishedBooks:
        self._thread.start()
        assert self._ready.wait(10), "could not join the live groups"
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    async def _listen(self) -> None:
        layer = get_channel_layer()
        channel = await layer.new_channel()
        for ticker in self.tickers:
            await layer.group_add(book_group(ticker), channel)
        self._ready.set()
        while not self._stop.is_set():
            try:
                message = await asyncio.wait_for(layer.receive(channel), 0.2)
            except TimeoutError:
                continue
            if message.get("type") == "book.update":
                self.arrivals.append(time.monotonic())
        for ticker in self.tickers:
            await layer.group_discard(book_group(ticker), channel)


def largest_gap(times: list[float], start: float, end: float) -> float:
    inside = [t for t in times if start <= t <= end]
    edges = [start, *inside, end]
    return max(b - a for a, b in itertools.pairwise(edges))


def test_housekeeping_keeps_time_while_the_database_hangs_and_loses_nothing(settings) -> None:
    if "RedisChannelLayer" not in settings.CHANNEL_LAYERS["default"]["BACKEND"]:
        pytest.skip("needs REDIS_URL: live publishing is observed through Redis")
    exchange = dev_key_exchange(settings, markets=3, rate=1000)
    port = int(connection.settings_dict["PORT"] or 5432)
    thread = ExchangeThread(exchange)
    with TcpProxy(target_port=port) as proxy, thread as url:
        recorder = Recorder(
            Path(settings.VAR_DIR),
            url,
            database_url(proxy.port),
            "--flush-interval", "0.25",
            "--progress-interval", str(EVERY_S),
            "--snapshot-interval", str(EVERY_S),
        )  # fmt: skip
        try:
            with PublishedBooks(exchange.tickers()) as published:
                recorder.wait_for(
                    lambda: OrderbookDelta.objects.count() >= 1000, 90, "1000 stored deltas"
                )
                first = RecordingConnection.objects.get(pid=recorder.pid)
                proxy.hang()
                hang_started, hang_started_at = time.monotonic(), timezone.now()
                time.sleep(0.5)
                stored_at_hang = OrderbookDelta.objects.count()
                time.sleep(1.0)
                assert thread.call(exchange.drop_connections) == 1  # reconnect during the hang
                time.sleep(HANG_S - 1.5)
                stored_before_resume = OrderbookDelta.objects.count()
                hang_ended, hang_ended_at = time.monotonic(), timezone.now()
                proxy.resume()
                recorder.wait_for(
                    lambda: RecordingConnection.objects.filter(pid=recorder.pid).count() == 2,
                    30,
                    "the rows of the hang stored",
                )
                time.sleep(1.0)
            assert recorder.stop() == 0, recorder.output[-3000:]
        finally:
            recorder.ensure_dead()

    assert stored_before_resume == stored_at_hang, "the database did not hang"
    # The event loop kept its rhythm through the hang.
    progress = [t for t, line in recorder.lines if "msg/s" in line]
    assert largest_gap(progress, hang_started, hang_ended) < MAX_GAP_S, recorder.output
    assert largest_gap(published.arrivals, hang_started, hang_ended) < MAX_GAP_S
    # Everything queued during the hang is stored now.
    first.refresh_from_db()
    assert hang_started_at < first.closed_at < hang_ended_at, first.closed_at
    second = RecordingConnection.objects.filter(pid=recorder.pid).exclude(id=first.id).get()
    assert hang_started_at < second.opened_at < hang_ended_at
    assert second.closed_at is not None and second.close_reason == "stopped"
    assert RecordingEvent.objects.filter(connection_id=first.id, kind="disconnect").exists()
    assert RecordingEvent.objects.filter(connection_id=second.id, kind="connected").exists()
    periodic = OrderbookSnapshot.objects.filter(
        source="periodic",
        received_at__gte=hang_started_at,
        received_at__lt=hang_ended_at,
    )
    for ticker in exchange.tickers():
        times = sorted(periodic.filter(market_ticker=ticker).values_list("received_at", flat=True))
        # One every EVERY_S while the book was trusted (the reconnect costs a few).
        assert len(times) >= (HANG_S - 2.0) / EVERY_S - 2, (ticker, len(times))
    status = WorkerStatus.objects.get(pid=recorder.pid)
    assert status.stopped_at is not None and status.updated_at > hang_ended_at
    assert status.counters["client"]["connections"] == 2
    delayed = OrderbookDelta.objects.filter(
        received_at__gte=hang_started_at + timedelta(seconds=0.5), received_at__lt=hang_ended_at
    )
    assert delayed.count() > 0, "the frames of the hang are stored too"
