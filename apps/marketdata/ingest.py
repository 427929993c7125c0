"""The recorder: Kalshi client -> in-memory books -> batched writer, plus its housekeeping.

``run_ingest()`` is what ``manage.py ingest_orderbook`` and the Channels worker both run.
The socket's task only decodes, applies and enqueues (O(1)); every database write happens in
the writer's thread or in short ``asyncio.to_thread`` calls for metadata and heartbeats.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import connections
from django.utils import timezone

from apps.dashboard.services import report_worker_status, worker_name
from apps.marketdata.book import OrderBook
from apps.marketdata.kalshi.client import ClientConfig, FeedSink, KalshiClient
from apps.marketdata.kalshi.messages import OrderbookDelta, OrderbookSnapshot, Trade
from apps.marketdata.kalshi.signer import KalshiSigner, SignerError
from apps.marketdata.models import OrderbookSnapshot as SnapshotModel
from apps.marketdata.models import RecordingConnection
from apps.marketdata.writer import (
    DELTA,
    EVENT,
    SNAPSHOT,
    TRADE,
    DeltaRow,
    EventRow,
    RecordWriter,
    SnapshotRow,
    TradeRow,
    utc_from_ms,
    utc_from_ns,
)
from kalshiflow_site.shutdown import install_stop_handlers, remove_stop_handlers

log = logging.getLogger(__name__)

EXCHANGE_WS_URLS = {
    "demo": "wss://external-api-ws.demo.kalshi.co/trade-api/ws/v2",
    "prod": "wss://external-api-ws.kalshi.com/trade-api/ws/v2",
}
EXCHANGE_REST_URLS = {
    "demo": "https://external-api.demo.kalshi.co/trade-api/v2",
    "prod": "https://external-api.kalshi.com/trade-api/v2",
}


class IngestError(Exception):
    """A configuration or start-up problem the user must fix (the message says how)."""


@dataclass
class IngestOptions:
    """What to record and how. Times in seconds; 0 duration = until stopped."""

    markets: list[str] = field(default_factory=list)
    series: list[str] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    exchange: str = "local"
    ws_url: str = ""
    duration_s: float = 0.0
    use_yes_price: bool = False
    record_trades: bool = True
    snapshot_interval_s: float = 60.0
    progress_interval_s: float = 5.0
    publish_interval_s: float = 0.5
    status_interval_s: float = 2.0
    batch_rows: int | None = None
    flush_interval_s: float | None = None
    latency_sample_every: int = 0


class RecorderSink(FeedSink):
    """Turns client callbacks into writer rows and connection bookkeeping."""

    def __init__(self, writer: RecordWriter, *, exchange: str, use_yes_price: bool) -> None:
        self.writer = writer
        self.exchange = exchange
        self.use_yes_price = use_yes_price
        self._periodic_seq: dict[uuid.UUID, int] = {}
        self.unnumbered_trades = 0
        self._background: set[asyncio.Future] = set()

    def _in_thread(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run a short ORM call off the socket's task; failures are logged, data is unaffected."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            fn(*args)
            return
        task = loop.run_in_executor(None, _logged(fn), *args)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def drain_background(self, timeout_s: float = 10.0) -> None:
        if self._background:
            await asyncio.wait(list(self._background), timeout=timeout_s)

    def on_connect(self, connection_id: uuid.UUID, url: str, markets: list[str]) -> None:
        self._periodic_seq[connection_id] = 0
        self._in_thread(
            _open_connection, connection_id, self.exchange, url, markets, self.use_yes_price
        )

    def on_snapshot(
        self, connection_id: uuid.UUID, msg: OrderbookSnapshot, received_ns: int, source: str
    ) -> None:
        self.writer.enqueue(
            SNAPSHOT,
            SnapshotRow(
                connection_id,
                msg.market_ticker,
                msg.sid,
                msg.seq,
                [list(level) for level in msg.yes],
                [list(level) for level in msg.no],
                utc_from_ms(msg.sending_ts_ms),
                utc_from_ns(received_ns),
                source,
                msg.sid,
                msg.seq,
            ),
        )

    def on_delta(self, connection_id: uuid.UUID, msg: OrderbookDelta, received_ns: int) -> None:
        self.writer.enqueue(
            DELTA,
            DeltaRow(
                connection_id,
                msg.market_ticker,
                msg.sid,
                msg.seq,
                msg.side,
                msg.price_e4,
                msg.delta_e2,
                utc_from_ms(msg.ts_ms if msg.ts_ms is not None else msg.sending_ts_ms),
                utc_from_ns(received_ns),
            ),
        )

    def on_trade(self, connection_id: uuid.UUID, msg: Trade, received_ns: int) -> None:
        if msg.seq is None:
            # Identity is (connection, sid, seq); Kalshi numbers trade frames in practice, and
            # a frame without a number cannot be stored idempotently: count it, keep going.
            self.unnumbered_trades += 1
            return
        self.writer.enqueue(
            TRADE,
            TradeRow(
                connection_id,
                msg.market_ticker,
                msg.sid,
                msg.seq,
                msg.trade_id,
                msg.yes_price_e4,
                msg.no_price_e4,
                msg.count_e2,
                msg.taker_side,
                utc_from_ms(msg.ts_ms),
                utc_from_ns(received_ns),
            ),
        )

    def on_event(
        self,
        connection_id: uuid.UUID,
        kind: str,
        *,
        market_ticker: str = "",
        sid: int | None = None,
        expected_seq: int | None = None,
        got_seq: int | None = None,
        detail: str = "",
    ) -> None:
        self.writer.enqueue(
            EVENT,
            EventRow(
                connection_id,
                kind,
                market_ticker,
                sid,
                expected_seq,
                got_seq,
                detail[:500],
                utc_from_ns(time.time_ns()),
            ),
        )

    def on_disconnect(self, connection_id: uuid.UUID, reason: str) -> None:
        self._in_thread(_close_connection, connection_id, reason)

    def periodic_snapshot(
        self, connection_id: uuid.UUID, book: OrderBook, position: tuple[int, int]
    ) -> None:
        """A snapshot of our own book: sid 0 and a per-connection counter as its identity,
        ``position`` = the (sid, seq) of the last frame the book includes."""
        seq = self._periodic_seq.get(connection_id, 0) + 1
        self._periodic_seq[connection_id] = seq
        yes, no = book.snapshot_levels()
        self.writer.enqueue(
            SNAPSHOT,
            SnapshotRow(
                connection_id,
                book.market_ticker,
                SnapshotModel.PERIODIC_SID,
                seq,
                [list(level) for level in yes],
                [list(level) for level in no],
                None,
                utc_from_ns(time.time_ns()),
                "periodic",
                position[0],
                position[1],
            ),
        )


def _logged(fn: Callable[..., Any]) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # a metadata write must never take the recorder down
            log.warning("background write %s failed: %s", fn.__name__, exc)
            return None
        finally:
            # Executor threads are reused by anything: leave no connection open behind us.
            connections.close_all()

    return call


def _open_connection(
    connection_id: uuid.UUID, exchange: str, url: str, markets: list[str], use_yes_price: bool
) -> None:
    import os
    import socket

    RecordingConnection.objects.update_or_create(
        id=connection_id,
        defaults={
            "exchange": exchange,
            "ws_url": url[:300],
            "markets": markets,
            "use_yes_price": use_yes_price,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "opened_at": timezone.now(),
        },
    )


def _close_connection(connection_id: uuid.UUID, reason: str) -> None:
    RecordingConnection.objects.filter(id=connection_id).update(
        closed_at=timezone.now(), close_reason=reason[:200]
    )


# -- configuration --------------------------------------------------------------------------


def load_signer(*, exchange: str) -> KalshiSigner:
    """The development key for the bundled local exchange; your Kalshi key for demo / prod.

    The local exchange only knows the development key pair it generated under var/keys, so
    a real Kalshi key configured in the environment is never sent to it.
    """
    if exchange == "local":
        from apps.marketdata.exchange import ensure_dev_keys

        keys = ensure_dev_keys(Path(settings.LOCAL_EXCHANGE_KEY_DIR), announce=log.info)
        return KalshiSigner.from_file(key_id=keys.key_id, path=keys.private_key_path)
    key_id = settings.KALSHI_API_KEY_ID
    pem = settings.KALSHI_PRIVATE_KEY_PEM
    path = settings.KALSHI_PRIVATE_KEY_PATH
    try:
        if key_id and pem:
            return KalshiSigner.from_pem(key_id=key_id, pem=pem)
        if key_id and path:
            return KalshiSigner.from_file(key_id=key_id, path=path)
    except SignerError as exc:
        raise IngestError(str(exc)) from None
    raise IngestError(
        f"--exchange {exchange} needs your Kalshi API key: set KALSHI_API_KEY_ID and "
        "KALSHI_PRIVATE_KEY_PATH (or KALSHI_PRIVATE_KEY_PEM)."
    )


def resolve_ws_url(options: IngestOptions) -> str:
    if options.ws_url:
        if not options.ws_url.startswith(("ws://", "wss://")):
            raise IngestError(f"--ws-url {options.ws_url!r} must start with ws:// or wss://")
        return options.ws_url
    if options.exchange == "local":
        host, port = settings.LOCAL_EXCHANGE_HOST, settings.LOCAL_EXCHANGE_PORT
        return f"ws://{host}:{port}/trade-api/ws/v2"
    try:
        return EXCHANGE_WS_URLS[options.exchange]
    except KeyError:
        raise IngestError(
            f"--exchange must be local, demo or prod, not {options.exchange!r}"
        ) from None


def rest_base_for(ws_url: str, exchange: str) -> str:
    if exchange in EXCHANGE_REST_URLS and not ws_url.startswith("ws://"):
        return EXCHANGE_REST_URLS[exchange]
    parsed = urllib.parse.urlsplit(ws_url)
    scheme = "https" if parsed.scheme == "wss" else "http"
    return f"{scheme}://{parsed.netloc}/trade-api/v2"


def list_markets(rest_base: str, **query: str) -> list[str]:
    """Open market tickers from GET /markets (cursor pagination)."""
    tickers: list[str] = []
    cursor = ""
    while True:
        params = {"limit": "1000", "status": "open", **query}
        if cursor:
            params["cursor"] = cursor
        url = f"{rest_base}/markets?{urllib.parse.urlencode(params)}"
        if not url.startswith(("http://", "https://")):
            raise IngestError(f"refusing to fetch {url!r}")
        with urllib.request.urlopen(url, timeout=15) as response:  # noqa: S310 (scheme checked)
            body = json.load(response)
        tickers += [m["ticker"] for m in body.get("markets", [])]
        cursor = body.get("cursor") or ""
        if not cursor:
            return tickers


def resolve_markets(options: IngestOptions, ws_url: str) -> list[str]:
    markets = list(dict.fromkeys(m.strip().upper() for m in options.markets if m.strip()))
    if options.series or options.events or not markets:
        rest = rest_base_for(ws_url, options.exchange)
        try:
            for series in options.series:
                markets += list_markets(rest, series_ticker=series)
            for event in options.events:
                markets += list_markets(rest, event_ticker=event)
            if not markets:
                markets = list_markets(rest)
        except OSError as exc:
            raise IngestError(f"could not list markets from {rest}: {exc}") from None
    markets = list(dict.fromkeys(markets))
    if not markets:
        raise IngestError("no markets to record: pass --markets, --series or --event")
    return markets


# -- the loop --------------------------------------------------------------------------------


@dataclass
class IngestResult:
    markets: list[str]
    client: dict[str, Any]
    writer: dict[str, Any]
    books: dict[str, OrderBook]
    elapsed_s: float
    connection_id: uuid.UUID | None = None
    client_latency_ns: list[int] = field(default_factory=list)


def _counters(client: KalshiClient, writer: RecordWriter) -> dict[str, Any]:
    stats = client.stats.as_dict()
    return {"client": stats, "writer": writer.stats_dict()}


def _problems(client: KalshiClient, writer: RecordWriter, started: float) -> list[str]:
    problems = []
    now = time.time()
    silent_s = now - (client.stats.last_message_at or started)
    if silent_s > getattr(settings, "RL_FEED_SILENT_S", 30):
        problems.append(f"no frame from the exchange for {silent_s:.0f}s")
    if writer.is_stuck():
        problems.append("writer is stuck: queue not draining")
    problems.extend(writer.problems())  # rows being lost, or about to be
    return problems


async def run_ingest_async(
    options: IngestOptions,
    *,
    progress: Callable[[str], None] | None = None,
    stop_event: asyncio.Event | None = None,
    install_signal_handlers: bool = True,
) -> IngestResult:
    """Record until ``duration_s`` passes, ``stop_event`` is set, or SIGTERM/SIGINT."""
    ws_url = resolve_ws_url(options)
    signer = load_signer(exchange=options.exchange)
    # Full garbage collections over Django's start-up heap stall every thread for tens of
    # milliseconds (measured in the writer's outage test); freezing that heap keeps the
    # socket's task responsive. It only moves today's objects out of the collector's way.
    gc.freeze()
    markets = await asyncio.to_thread(resolve_markets, options, ws_url)
    writer = RecordWriter(batch_rows=options.batch_rows, flush_interval_s=options.flush_interval_s)
    writer.start()
    sink = RecorderSink(writer, exchange=options.exchange, use_yes_price=options.use_yes_price)
    channels = ("orderbook_delta", "trade") if options.record_trades else ("orderbook_delta",)
    client = KalshiClient(
        ClientConfig(
            ws_url=ws_url,
            markets=markets,
            channels=channels,
            use_yes_price=options.use_yes_price,
            latency_sample_every=options.latency_sample_every,
        ),
        signer=signer,
        sink=sink,
    )
    loop = asyncio.get_running_loop()
    installed = install_stop_handlers(loop, client.stop) if install_signal_handlers else []
    say = progress or (lambda line: log.info("%s", line))
    say(f"recording {len(markets)} markets from {ws_url}")
    status_name = worker_name(kind="ingest")
    started_at = timezone.now()
    started = time.time()
    client_task = asyncio.create_task(client.run(), name="kalshi-client")
    housekeeping = asyncio.create_task(
        _housekeeping(options, client, writer, sink, say, status_name, started_at, started)
    )
    waiters: list[asyncio.Future] = [client_task]
    if stop_event is not None:
        waiters.append(asyncio.create_task(stop_event.wait()))
    try:
        await asyncio.wait(
            waiters,
            timeout=options.duration_s or None,
            return_when=asyncio.FIRST_COMPLETED,
        )
    finally:
        client.stop()
        await asyncio.gather(client_task, return_exceptions=True)
        housekeeping.cancel()
        await asyncio.gather(housekeeping, return_exceptions=True)
        remove_stop_handlers(loop, installed)
        await sink.drain_background()
        say("stopping: flushing every accepted row to the database")
        await asyncio.to_thread(writer.close)
        await asyncio.to_thread(
            _logged(report_worker_status),
            name=status_name,
            kind="ingest",
            started_at=started_at,
            counters=_counters(client, writer),
            problems=[],
            stopped=True,
        )
    if client_task.done() and not client_task.cancelled() and client_task.exception():
        raise IngestError(str(client_task.exception()))
    return IngestResult(
        markets=markets,
        client=client.stats.as_dict(),
        writer=writer.stats_dict(),
        books=client.books,
        elapsed_s=time.time() - started,
        connection_id=client.connection_id,
        client_latency_ns=list(client.stats.latency_ns),
    )


async def _housekeeping(
    options: IngestOptions,
    client: KalshiClient,
    writer: RecordWriter,
    sink: RecorderSink,
    say: Callable[[str], None],
    status_name: str,
    started_at: datetime,
    started: float,
) -> None:
    """Periodic snapshots, top-of-book publishing, progress lines and heartbeats."""
    from apps.marketdata.live import BookPublisher

    publisher = BookPublisher()
    tick = 0.1
    next_snapshot = time.monotonic() + options.snapshot_interval_s
    next_progress = time.monotonic() + options.progress_interval_s
    next_status = time.monotonic()
    next_publish = time.monotonic()
    last_messages, last_time = 0, time.monotonic()
    while True:
        await asyncio.sleep(tick)
        now = time.monotonic()
        if options.snapshot_interval_s and now >= next_snapshot and client.connection_id:
            next_snapshot = now + options.snapshot_interval_s
            for market, book in client.books.items():
                position = client.book_position(market)
                if position is not None:
                    sink.periodic_snapshot(client.connection_id, book, position)
        if now >= next_publish:
            next_publish = now + options.publish_interval_s
            await publisher.publish_changed(client.books, trusted=client.is_trusted)
        if now >= next_progress:
            next_progress = now + options.progress_interval_s
            stats, w = client.stats, writer.stats_dict()
            rate = (stats.messages - last_messages) / max(now - last_time, 1e-9)
            last_messages, last_time = stats.messages, now
            say(
                f"{rate:8.0f} msg/s | messages {stats.messages} | rows written "
                f"{w.get('rows_written', 0)} | queue {w.get('queue_depth', 0)} | spilled "
                f"{w.get('spilled_rows', 0)} | gaps {stats.gaps} | resyncs {stats.resyncs} | "
                f"reconnects {stats.reconnects} | malformed {stats.malformed}"
            )
        if now >= next_status:
            next_status = now + options.status_interval_s
            await asyncio.to_thread(
                _logged(report_worker_status),
                name=status_name,
                kind="ingest",
                started_at=started_at,
                counters=_counters(client, writer),
                problems=_problems(client, writer, started),
            )


def run_ingest(options: IngestOptions, **kwargs: Any) -> IngestResult:
    """Synchronous entry point for management commands."""
    if options.exchange not in ("local", "demo", "prod"):
        raise IngestError(f"--exchange must be local, demo or prod, not {options.exchange!r}")
    try:
        return asyncio.run(run_ingest_async(options, **kwargs))
    except ImproperlyConfigured as exc:
        raise IngestError(str(exc)) from None
