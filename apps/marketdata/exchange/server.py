"""``LocalExchange``: a Kalshi-compatible WebSocket + REST server for offline use and tests.

One port serves ``/trade-api/ws/v2`` (signed WebSocket upgrade, §2–§4) and the public REST
reads under ``/trade-api/v2`` (§7). This module only serves: it authenticates upgrades, routes
REST reads, opens a ``Session`` per connection and runs the source. Markets, books, the
subscription index and fan-out live in the ``Venue`` (``venue.py``), the runtime fault knobs in
``FaultInjector`` (``faults.py``); the methods below that name them delegate, so tests and
scripts keep one handle on the exchange.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import logging
from collections.abc import AsyncIterator, Iterable, Mapping
from http import HTTPStatus
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from apps.marketdata.kalshi.signer import WS_PATH

from . import rest
from .auth import HandshakeAuth
from .config import ExchangeConfig, FaultConfig
from .faults import FaultInjector
from .markets import Market
from .session import Session
from .sources import MarketDataSource, SyntheticSource
from .stats import ExchangeStats
from .venue import Venue

logger = logging.getLogger(__name__)


def _json_response(status: int, body: Any) -> Response:
    payload = json.dumps(body, separators=(",", ":")).encode()
    headers = Headers(
        [
            ("Date", email.utils.formatdate(usegmt=True)),
            ("Connection", "close"),
            ("Content-Length", str(len(payload))),
            ("Content-Type", "application/json"),
        ]
    )
    return Response(status, HTTPStatus(status).phrase, headers, payload)


class LocalExchange:
    """The bundled exchange. Use ``async with exchange.running(host, port) as url``.

    ``source``: where book events come from; None = ``SyntheticSource()`` with defaults.
    """

    def __init__(self, config: ExchangeConfig, source: MarketDataSource | None = None) -> None:
        self.config = config
        self.stats = ExchangeStats()
        self.source: MarketDataSource = source or SyntheticSource()
        self.venue = Venue(self.stats, start_paused=config.start_paused)
        self.fault_injector = FaultInjector(self.venue, config.faults, self.stats)
        self._auth = (
            HandshakeAuth(config.keys, max_clock_skew_s=config.max_clock_skew_s)
            if config.require_auth
            else None
        )
        self._prepared = False
        self._session_count = 0
        self._source_done: asyncio.Event | None = None
        self._server: Server | None = None
        self.url: str | None = None
        self.rest_url: str | None = None

    async def prepare(self) -> None:
        """Load the source's markets into the venue (idempotent; ``running()`` calls it)."""
        if self._prepared:
            return
        markets = await self.source.prepare()
        series, fee_changes = self.source.describe_series()
        for one in series:
            self.venue.add_series(one)
        self.venue.fee_changes.extend(fee_changes)
        for market in markets:
            self.venue.add_market(market)
        self._prepared = True

    async def wait_source_done(self, timeout_s: float | None = None) -> None:
        """Wait until the source's ``run()`` returned (e.g. ``max_messages`` reached)."""
        if self._source_done is None:
            raise RuntimeError("the exchange is not running")
        async with asyncio.timeout(timeout_s):
            await self._source_done.wait()

    # ---- the venue, for callers outside the event flow (tests, scripts) -------------------

    def markets(self) -> list[Market]:
        return self.venue.markets()

    def market(self, ticker: str) -> Market:
        return self.venue.market(ticker)

    def tickers(self) -> list[str]:
        return self.venue.tickers()

    def book_levels(self, ticker: str) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """See ``Venue.book_levels``."""
        return self.venue.book_levels(ticker)

    def apply_delta(
        self, ticker: str, side: str, price_e4: int, delta_e2: int, *, ts_ms: int | None = None
    ) -> None:
        """See ``Venue.apply_delta``."""
        self.venue.apply_delta(ticker, side, price_e4, delta_e2, ts_ms=ts_ms)

    def apply_trade(
        self,
        ticker: str,
        *,
        yes_price_e4: int,
        count_e2: int,
        taker_side: str,
        ts_ms: int | None = None,
        trade_id: str | None = None,
    ) -> None:
        """See ``Venue.apply_trade``."""
        self.venue.apply_trade(
            ticker,
            yes_price_e4=yes_price_e4,
            count_e2=count_e2,
            taker_side=taker_side,
            ts_ms=ts_ms,
            trade_id=trade_id,
        )

    def set_book(
        self,
        ticker: str,
        *,
        yes: Iterable[tuple[int, int]] | Mapping[int, int] | None,
        no: Iterable[tuple[int, int]] | Mapping[int, int] | None,
        ts_ms: int | None = None,
    ) -> int:
        """See ``Venue.set_book``."""
        return self.venue.set_book(ticker, yes=yes, no=no, ts_ms=ts_ms)

    @property
    def paused(self) -> bool:
        return self.venue.paused

    async def pause(self) -> None:
        """See ``Venue.pause``."""
        await self.venue.pause()

    async def resume(self) -> None:
        await self.venue.resume()

    async def flush(self, timeout_s: float = 10.0) -> None:
        """See ``Venue.flush``."""
        await self.venue.flush(timeout_s)

    @property
    def connection_count(self) -> int:
        return self.venue.connection_count

    # ---- fault knobs at runtime (see ``FaultInjector``) -----------------------------------

    @property
    def faults(self) -> FaultConfig:
        """The fault knobs in force now."""
        return self.fault_injector.faults

    def set_faults(self, **changes: Any) -> FaultConfig:
        return self.fault_injector.set_faults(**changes)

    def drop_connections(self, *, after_messages: int = 0) -> int:
        return self.fault_injector.drop_connections(after_messages=after_messages)

    def inject_seq_gap(self, *, sid: int | None = None) -> int:
        return self.fault_injector.inject_seq_gap(sid=sid)

    def send_malformed(self, kind: str = "garbage") -> int:
        return self.fault_injector.send_malformed(kind)

    def stall(self, seconds: float, *, ignore_pings: bool = False) -> int:
        return self.fault_injector.stall(seconds, ignore_pings=ignore_pings)

    def emit_subscription_error(self, *, code: int = 25, sid: int | None = None) -> int:
        return self.fault_injector.emit_subscription_error(code=code, sid=sid)

    def rate_limit_rest(self, requests: int) -> None:
        """The next ``requests`` REST requests are answered 429 (Kalshi's token bucket)."""
        self.fault_injector.rate_limit_rest(requests)

    # ---- serving --------------------------------------------------------------------------

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path, _, query = request.path.partition("?")
        if path == WS_PATH:
            if self._auth is not None:
                reason = self._auth.check(request.headers)
                if reason is not None:
                    self.stats.auth_failures[reason] += 1
                    return connection.respond(HTTPStatus.UNAUTHORIZED, f"Unauthorized: {reason}\n")
            return None  # proceed with the WebSocket upgrade
        self.stats.rest_requests += 1
        if path == rest.REST_PREFIX or path.startswith(rest.REST_PREFIX + "/"):
            limited = self.fault_injector.take_rest_rate_limit()
            if limited:
                self.stats.rest_rate_limited += 1
            status, body = rest.route(self.venue, request.method, path, query, rate_limited=limited)
            return _json_response(status, body)
        return _json_response(404, {"error": {"code": "not_found", "message": "not found"}})

    async def _handle(self, ws: ServerConnection) -> None:
        self._session_count += 1
        session = Session(
            self.venue,
            ws,
            self._session_count,
            stats=self.stats,
            faults=self.fault_injector.faults,
            max_queue_frames=self.config.max_queue_frames,
        )
        self.venue.join(session)
        self.stats.connections_opened += 1
        self.stats.connections_open += 1
        tasks = [asyncio.create_task(session.writer())]
        if self.config.ping_interval_s is not None:
            tasks.append(
                asyncio.create_task(
                    session.heartbeat(self.config.ping_interval_s, self.config.pong_timeout_s)
                )
            )
        try:
            async for raw in ws:
                session.handle_message(raw)
        except ConnectionClosed:
            pass
        finally:
            session.close()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.venue.leave(session)
            self.stats.connections_open -= 1

    async def _run_source(self) -> None:
        try:
            await self.source.run(self.venue)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("the local exchange's market data source failed")
            raise
        finally:
            if self._source_done is not None:
                self._source_done.set()

    @contextlib.asynccontextmanager
    async def running(self, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
        """Serve until the block exits; yields the WebSocket URL (port 0 = a free port)."""
        if self._server is not None:
            raise RuntimeError("this LocalExchange is already running")
        await self.prepare()
        ws_logger = logging.getLogger(f"{__name__}.ws")
        if ws_logger.level == logging.NOTSET:
            # websockets logs every connection and every REST response at INFO; keep that
            # out of the product's logs unless someone configures this logger explicitly.
            ws_logger.setLevel(logging.WARNING)
        self._source_done = asyncio.Event()
        server = await serve(
            self._handle,
            host,
            port,
            process_request=self._process_request,
            ping_interval=None,  # we send Kalshi's own b"heartbeat" pings instead
            compression="deflate" if self.config.compression else None,
            max_size=2**20,
            write_limit=2**20,
            # A client that stopped reading never sees our close frame; don't let it hold up
            # shutdown for websockets' default 10 s.
            close_timeout=2.0,
            logger=ws_logger,
        )
        self._server = server
        bound_port = server.sockets[0].getsockname()[1]
        netloc = f"[{host}]:{bound_port}" if ":" in host else f"{host}:{bound_port}"
        self.url = f"ws://{netloc}{WS_PATH}"
        self.rest_url = f"http://{netloc}{rest.REST_PREFIX}"
        source_task = asyncio.create_task(self._run_source())
        try:
            yield self.url
        finally:
            source_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await source_task
            server.close()
            await server.wait_closed()
            self._server = None
            self.url = self.rest_url = None
