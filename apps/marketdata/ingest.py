"""The recorder: Kalshi client -> in-memory books -> batched writer, plus its housekeeping.

``run_ingest()`` is what ``manage.py ingest_orderbook`` and the Channels worker both run.
The socket's task only decodes, applies and enqueues (O(1)). Nothing on the event loop waits
on the database: market data, markers, connection open and close records, heartbeats and
periodic snapshots all go through the writer's queue (and its spill while the database is down
or hung), so housekeeping (snapshots, progress lines, live publishing) keeps its rhythm and an
outage loses none of them. On start-up a background thread closes the connections that dead
recorders left open (:mod:`apps.marketdata.orphans`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
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
from django.utils import timezone

from apps.marketdata.endpoints import (
    EndpointError,
    check_exchange,
    key_source,
    resolve_endpoint,
    rest_base_for,
)
from apps.marketdata.kalshi.book import OrderBook
from apps.marketdata.kalshi.client import ClientConfig, FeedSink, HandshakeRejected, KalshiClient
from apps.marketdata.kalshi.messages import Lifecycle, OrderbookDelta, OrderbookSnapshot, Trade
from apps.marketdata.kalshi.rest import KalshiRest, RestError
from apps.marketdata.kalshi.units import utc_from_ms, utc_from_ns
from apps.marketdata.metadata import fetch_metadata
from apps.marketdata.models import OrderbookSnapshot as SnapshotModel
from apps.marketdata.orphans import start_sweep
from apps.marketdata.partitions import ensure_in_background
from apps.marketdata.writer import (
    CONNECTION,
    CONNECTION_CLOSE,
    DELTA,
    EVENT,
    FEE_CHANGE,
    LIFECYCLE,
    MARKET_INFO,
    SERIES_FEES,
    SNAPSHOT,
    TRADE,
    WORKER_STATUS,
    ConnectionRow,
    DeltaRow,
    EventRow,
    LifecycleRow,
    RecordWriter,
    SnapshotRow,
    TradeRow,
    WorkerStatusRow,
    WriterClosed,
)
from apps.workers.runtime import (
    Periodic,
    feed_silence,
    freeze_startup_heap,
    progress_sink,
    run_until_stopped,
    stop_signals,
    ticks,
)
from apps.workers.services import heartbeat_fields, worker_name

log = logging.getLogger(__name__)


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
    # The market_lifecycle_v2 channel (every market: it takes no filter; every message is
    # kept, see MarketLifecycle).
    record_lifecycle: bool = True
    # Market metadata and series fees over REST: at start, then every this many seconds
    # (0 = at start only).
    metadata_interval_s: float = 300.0
    metadata_retry_s: float = 15.0  # after a failed fetch
    snapshot_interval_s: float = 60.0
    progress_interval_s: float = 5.0
    publish_interval_s: float = 0.5
    status_interval_s: float = 2.0
    batch_rows: int | None = None
    flush_interval_s: float | None = None
    latency_sample_every: int = 0


class RecorderSink(FeedSink):
    """Turns client callbacks into writer rows: data, markers and connection records."""

    def __init__(self, writer: RecordWriter, *, exchange: str, use_yes_price: bool) -> None:
        self.writer = writer
        self.exchange = exchange
        self.use_yes_price = use_yes_price
        self._periodic_seq: dict[uuid.UUID, int] = {}
        self._lifecycle_seq: dict[uuid.UUID, int] = {}
        self._connections: dict[uuid.UUID, ConnectionRow] = {}
        self.unnumbered_trades = 0

    def on_connect(self, connection_id: uuid.UUID, url: str, markets: list[str]) -> None:
        self._periodic_seq[connection_id] = 0
        now = utc_from_ns(time.time_ns())
        row = ConnectionRow(
            connection_id,
            self.exchange,
            url[:300],
            list(markets),
            self.use_yes_price,
            socket.gethostname(),
            os.getpid(),
            now,
            None,
            "",
        )
        self._connections[connection_id] = row
        # Through the queue, ahead of the connection's first frame: never waits on the DB.
        self.writer.enqueue(CONNECTION, row)
        self.on_event(connection_id, "connected", detail=f"{len(markets)} markets")

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

    def on_lifecycle(self, connection_id: uuid.UUID, msg: Lifecycle, received_ns: int) -> None:
        # Identity: this connection's own arrival count (the channel's frames carry no seq).
        local_seq = self._lifecycle_seq.get(connection_id, 0) + 1
        self._lifecycle_seq[connection_id] = local_seq
        self.writer.enqueue(
            LIFECYCLE,
            LifecycleRow(
                connection_id,
                msg.sid,
                msg.seq,
                local_seq,
                msg.kind,
                msg.event_type,
                msg.market_ticker,
                msg.event_ticker,
                msg.series_ticker,
                msg.result,
                msg.settlement_value_e4,
                utc_from_ms(msg.open_ts_ms),
                utc_from_ms(msg.close_ts_ms),
                utc_from_ms(msg.ts_ms),
                msg.is_deactivated,
                msg.can_close_early,
                msg.price_level_structure,
                msg.fee_type,
                msg.fee_multiplier_e4,
                utc_from_ms(msg.sending_ts_ms),
                utc_from_ns(received_ns),
                msg.raw,
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
        opened = self._connections.pop(connection_id, None)
        if opened is None:
            return
        # The full row: if it is stored before the open row (spill replay order), it is the
        # record; a late open row then changes nothing.
        self.writer.enqueue(
            CONNECTION_CLOSE,
            opened._replace(closed_at=utc_from_ns(time.time_ns()), close_reason=reason[:200]),
        )

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


def worker_status_row(
    name: str,
    *,
    started_at: datetime,
    counters: dict[str, Any],
    problems: list[str],
    stopped: bool = False,
) -> WorkerStatusRow:
    """This recorder's heartbeat, as ``apps.workers.services.report_worker_status`` would
    store it (the same columns: :func:`~apps.workers.services.heartbeat_fields`), for the
    writer's queue."""
    fields = heartbeat_fields(
        kind="ingest", started_at=started_at, counters=counters, problems=problems, stopped=stopped
    )
    return WorkerStatusRow(name=name, **fields)


# -- configuration --------------------------------------------------------------------------


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
        page = body.get("markets") if isinstance(body, dict) else None
        if not isinstance(page, list) or not all(
            isinstance(m, dict) and isinstance(m.get("ticker"), str) for m in page
        ):
            raise ValueError(f"{rest_base}/markets did not answer with a market list")
        tickers += [m["ticker"] for m in page]
        cursor = body.get("cursor") or ""
        if not cursor:
            return tickers


def resolve_markets(options: IngestOptions, ws_url: str) -> list[str]:
    """The tickers to record: ``--markets`` (each checked to be open on the exchange), every
    open market of each ``--series`` / ``--event`` (one that matches nothing is an error, never
    "all markets"), or every open market when none of the three is given."""
    explicit = list(dict.fromkeys(m.strip().upper() for m in options.markets if m.strip()))
    rest = rest_base_for(ws_url, options.exchange)
    markets = list(explicit)
    try:
        for flag, key, values in (
            ("--series", "series_ticker", options.series),
            ("--event", "event_ticker", options.events),
        ):
            for value in values:
                found = list_markets(rest, **{key: value})
                if not found:
                    raise IngestError(f"{flag} {value} matches no open market on {rest}")
                markets += found
        if not markets:
            markets = list_markets(rest)
    except (OSError, ValueError) as exc:
        raise IngestError(f"could not list markets from {rest}: {exc}") from None
    unknown = _unknown_markets(rest, explicit)
    if unknown:
        raise IngestError(
            f"not open on the exchange ({rest}): {', '.join(unknown)}; check the tickers "
            "(GET /markets?tickers=...)"
        )
    markets = list(dict.fromkeys(markets))
    if not markets:
        raise IngestError("no markets to record: pass --markets, --series or --event")
    return markets


def _unknown_markets(rest: str, tickers: list[str], chunk: int = 100) -> list[str]:
    """The tickers the exchange's REST market list does not show as open. An endpoint without
    that REST view (or unreachable) cannot be asked: then nothing is reported here and the
    subscription's own errors (code 16, "market not found") are the check."""
    known: set[str] = set()
    try:
        for lo in range(0, len(tickers), chunk):
            known.update(list_markets(rest, tickers=",".join(tickers[lo : lo + chunk])))
    except (OSError, ValueError, IngestError) as exc:
        log.info("could not check --markets at %s (%s): subscribing anyway", rest, exc)
        return []
    return [t for t in tickers if t not in known]


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


@dataclass
class MetadataStats:
    fetches: int = 0
    failures: int = 0
    markets: int = 0
    series: int = 0
    fee_changes: int = 0
    skipped: int = 0
    rest_requests: int = 0
    rest_rate_limited: int = 0
    last_error: str = ""


def _counters(
    client: KalshiClient, writer: RecordWriter, metadata: MetadataStats | None = None
) -> dict[str, Any]:
    stats = client.stats.as_dict()
    counters = {"client": stats, "writer": writer.stats_dict()}
    if metadata is not None:
        counters["metadata"] = dict(metadata.__dict__)
    return counters


async def _metadata_loop(
    options: IngestOptions,
    rest: KalshiRest,
    markets: list[str],
    writer: RecordWriter,
    stats: MetadataStats,
    say: Callable[[str], None],
) -> None:
    """Fetch the recorded markets' metadata and fees now and on a schedule, into the writer."""
    while True:
        try:
            result = await asyncio.to_thread(fetch_metadata, rest, markets)
        except RestError as exc:
            stats.failures += 1
            stats.last_error = str(exc)[:300]
            log.warning("market metadata not fetched (%s); retrying", exc)
            delay = options.metadata_retry_s
        else:
            stats.fetches += 1
            for table, rows in (
                (MARKET_INFO, result.markets),
                (SERIES_FEES, result.series),
                (FEE_CHANGE, result.fee_changes),
            ):
                for row in rows:
                    writer.enqueue(table, row)
            stats.markets, stats.series = len(result.markets), len(result.series)
            stats.fee_changes, stats.skipped = len(result.fee_changes), len(result.skipped)
            for reason in result.skipped[:5]:
                log.warning("metadata skipped: %s", reason)
            if stats.fetches == 1:
                say(
                    f"metadata: {len(result.markets)} markets, {len(result.series)} series "
                    f"fees, {len(result.fee_changes)} scheduled fee changes"
                )
            if not options.metadata_interval_s:
                return
            delay = options.metadata_interval_s
        finally:
            stats.rest_requests = rest.stats.requests
            stats.rest_rate_limited = rest.stats.rate_limited
        await asyncio.sleep(delay)


def _problems(client: KalshiClient, writer: RecordWriter, started: float) -> list[str]:
    problems = []
    silence = feed_silence(client.stats.last_message_at, since=started)
    if silence:
        problems.append(silence)
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
    try:
        endpoint = resolve_endpoint(exchange=options.exchange, ws_url=options.ws_url)
    except EndpointError as exc:
        raise IngestError(str(exc)) from None
    ws_url = endpoint.ws_url
    freeze_startup_heap()
    markets = await asyncio.to_thread(resolve_markets, options, ws_url)
    writer = RecordWriter(batch_rows=options.batch_rows, flush_interval_s=options.flush_interval_s)
    writer.start()
    sweeper, stop_sweep = start_sweep(writer, say=progress or log.warning)
    sink = RecorderSink(writer, exchange=options.exchange, use_yes_price=options.use_yes_price)
    channels: tuple[str, ...] = ("orderbook_delta",)
    if options.record_trades:
        channels += ("trade",)
    if options.record_lifecycle:
        channels += ("market_lifecycle_v2",)
    client = KalshiClient(
        ClientConfig(
            ws_url=ws_url,
            markets=markets,
            channels=channels,
            use_yes_price=options.use_yes_price,
            latency_sample_every=options.latency_sample_every,
            rejected_frames_dir=Path(settings.VAR_DIR) / "rejected-frames",
        ),
        signer=endpoint.signer,
        sink=sink,
    )
    stopping = asyncio.Event()
    say = progress_sink(progress, log)
    say(f"recording {len(markets)} markets from {client.display_url}")
    status_name = worker_name(kind="ingest")
    started_at = timezone.now()
    started = time.time()
    client_task = asyncio.create_task(client.run(), name="kalshi-client")
    metadata_stats = MetadataStats()
    rest = KalshiRest(rest_base_for(ws_url, options.exchange), endpoint.signer)
    metadata_task = asyncio.create_task(
        _metadata_loop(options, rest, markets, writer, metadata_stats, say), name="metadata"
    )
    housekeeping = asyncio.create_task(
        _housekeeping(
            options, client, writer, sink, say, status_name, started_at, started, metadata_stats
        )
    )
    try:
        with stop_signals(stopping, enabled=install_signal_handlers):
            try:
                await run_until_stopped(
                    [client_task], stop=stopping, duration_s=options.duration_s, outside=stop_event
                )
            finally:
                client.stop()
                await asyncio.gather(client_task, return_exceptions=True)
                housekeeping.cancel()
                metadata_task.cancel()
                await asyncio.gather(housekeeping, metadata_task, return_exceptions=True)
    finally:
        stop_sweep.set()
        # A sweep that found its orphans enqueues their close rows in moments; one stuck on
        # a hung database is abandoned (the next recorder closes them).
        await asyncio.to_thread(sweeper.join, 2.0)
        say("stopping: flushing every accepted row to the database")
        _enqueue_status(
            writer,
            worker_status_row(
                status_name,
                started_at=started_at,
                counters=_counters(client, writer, metadata_stats),
                problems=[],
                stopped=True,
            ),
        )
        await asyncio.to_thread(writer.close)
    if client_task.done() and not client_task.cancelled() and client_task.exception():
        exc = client_task.exception()
        if isinstance(exc, HandshakeRejected):
            raise IngestError(
                f"{exc}: the key id comes from "
                f"{key_source(exchange=options.exchange, ws_url=options.ws_url)}; check that "
                "it and its private key belong to this exchange (Kalshi's demo and prod keys "
                "differ) and that the machine's clock is right (signatures carry a timestamp)"
            )
        raise IngestError(str(exc))
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
    metadata: MetadataStats | None = None,
) -> None:
    """Periodic snapshots, top-of-book publishing, progress lines, heartbeats and time
    partitions created ahead."""
    from apps.marketdata.live import BookPublisher

    publisher = BookPublisher()
    snapshots = Periodic(options.snapshot_interval_s)
    progress = Periodic(options.progress_interval_s)
    status = Periodic(options.status_interval_s, first_in_s=0)
    publish = Periodic(options.publish_interval_s, first_in_s=0)
    # Time partitions ahead of now (PostgreSQL): at start, then every RL_PARTITION_ENSURE_S.
    partitions = Periodic(settings.RL_PARTITION_ENSURE_S, first_in_s=0)
    partitioner = None
    last_messages, last_time = 0, time.monotonic()
    async for now in ticks(0.1):
        if partitions.due(now):
            partitioner = ensure_in_background(partitioner)
        if options.snapshot_interval_s and client.connection_id and snapshots.due(now):
            for market, book in client.books.items():
                position = client.book_position(market)
                if position is not None:
                    sink.periodic_snapshot(client.connection_id, book, position)
        if publish.due(now):
            await publisher.publish_changed(client.books, trusted=client.is_trusted)
        if progress.due(now):
            stats, w = client.stats, writer.stats_dict()
            rate = (stats.messages - last_messages) / max(now - last_time, 1e-9)
            last_messages, last_time = stats.messages, now
            say(
                f"{rate:8.0f} msg/s | messages {stats.messages} | rows written "
                f"{w.get('rows_written', 0)} | queue {w.get('queue_depth', 0)} | spilled "
                f"{w.get('spilled_rows', 0)} | gaps {stats.gaps} | resyncs {stats.resyncs} | "
                f"reconnects {stats.reconnects} | malformed {stats.malformed_summary()}"
            )
        if status.due(now):
            # Through the writer: a hung database must not stall this loop (the heartbeat
            # waits in the queue or the spill; only the newest one per worker is kept).
            _enqueue_status(
                writer,
                worker_status_row(
                    status_name,
                    started_at=started_at,
                    counters=_counters(client, writer, metadata),
                    problems=_problems(client, writer, started),
                ),
            )


def _enqueue_status(writer: RecordWriter, row: WorkerStatusRow) -> None:
    try:
        writer.enqueue(WORKER_STATUS, row)
    except WriterClosed:  # the writer's thread died: a heartbeat must not take us down too
        log.error("heartbeat not recorded: the writer is not running")


def run_ingest(options: IngestOptions, **kwargs: Any) -> IngestResult:
    """Synchronous entry point for management commands."""
    try:
        check_exchange(options.exchange)
    except EndpointError as exc:
        raise IngestError(str(exc)) from None
    try:
        return asyncio.run(run_ingest_async(options, **kwargs))
    except ImproperlyConfigured as exc:
        raise IngestError(str(exc)) from None
