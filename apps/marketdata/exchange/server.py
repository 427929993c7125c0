"""``LocalExchange``: a Kalshi-compatible WebSocket + REST server for offline use and tests.

One port serves ``/trade-api/ws/v2`` (signed WebSocket upgrade, §2–§4) and the public REST
reads under ``/trade-api/v2`` (§7). Books are authoritative here: a market data source changes
them through ``apply_delta`` / ``apply_trade`` / ``set_book`` and every subscriber is told,
so ``book_levels()`` is what a correct client must have rebuilt once the stream is drained.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import email.utils
import json
import logging
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from apps.marketdata.kalshi.signer import WS_PATH
from apps.marketdata.kalshi.units import PRICE_SCALE

from . import frames, rest
from .auth import HandshakeAuth
from .config import ExchangeConfig, FaultConfig
from .markets import Market, MarketError, book_from_levels
from .session import Session, Subscription
from .sources import MarketDataSource, SyntheticSource

logger = logging.getLogger(__name__)


@dataclass
class ExchangeStats:
    """Counters, read by tests, the management command's progress line and status views."""

    connections_opened: int = 0
    connections_open: int = 0
    connections_dropped: int = 0  # aborted by the drop fault
    auth_failures: Counter[str] = field(default_factory=Counter)  # by reason
    rest_requests: int = 0
    commands: Counter[str] = field(default_factory=Counter)  # by cmd name
    messages_sent: Counter[str] = field(default_factory=Counter)  # by frame type
    source_messages: int = 0  # deltas + trades produced by the source (the "rate")
    pings_sent: int = 0
    pong_timeouts: int = 0  # connections dropped for not answering our pings
    gaps_injected: int = 0
    stalls: int = 0
    subscription_errors: int = 0

    def as_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        for name in ("auth_failures", "commands", "messages_sent"):
            data[name] = dict(getattr(self, name))
        return data


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
    """The bundled exchange. Use ``async with exchange.running(host, port) as url``."""

    def __init__(self, config: ExchangeConfig) -> None:
        self.config = config
        self.faults: FaultConfig = config.faults
        self.stats = ExchangeStats()
        self.source: MarketDataSource = config.source or SyntheticSource()
        self._auth = (
            HandshakeAuth(config.keys, max_clock_skew_s=config.max_clock_skew_s)
            if config.require_auth
            else None
        )
        self._markets: dict[str, Market] = {}
        self._ids: dict[str, str] = {}
        self._prepared = False
        # Subscriptions by channel and market, plus the all-markets ones (trade, ticker).
        self._by_market: dict[str, dict[str, set[Subscription]]] = {
            "orderbook_delta": {},
            "trade": {},
            "ticker": {},
        }
        self._all_markets: dict[str, set[Subscription]] = {"trade": set(), "ticker": set()}
        self._sessions: set[Session] = set()
        self._session_count = 0
        self._unpaused: asyncio.Event | None = None
        self._source_done: asyncio.Event | None = None
        self._server: Server | None = None
        self.url: str | None = None
        self.rest_url: str | None = None

    # ---- markets and books ----------------------------------------------------------------

    async def prepare(self) -> None:
        """Load the source's markets (idempotent; ``running()`` calls it)."""
        if self._prepared:
            return
        for market in await self.source.prepare():
            self.add_market(market)
        self._prepared = True

    def add_market(self, market: Market) -> None:
        if market.ticker in self._markets:
            raise MarketError(f"market {market.ticker} is defined twice")
        self._markets[market.ticker] = market
        self._ids[market.market_id] = market.ticker

    def has_market(self, ticker: str) -> bool:
        return ticker in self._markets

    def market(self, ticker: str) -> Market:
        try:
            return self._markets[ticker]
        except KeyError:
            raise MarketError(f"no market {ticker!r} on the local exchange") from None

    def markets(self) -> list[Market]:
        return list(self._markets.values())

    def tickers(self) -> list[str]:
        return list(self._markets)

    def ticker_for_id(self, market_id: str) -> str | None:
        return self._ids.get(market_id)

    def book_levels(self, ticker: str) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """(yes, no) ascending ``(price_e4, size_e2)`` lists; NO side in NO-bid prices."""
        market = self.market(ticker)
        return market.levels("yes"), market.levels("no")

    # ---- events from the source -----------------------------------------------------------

    def apply_delta(
        self, ticker: str, side: str, price_e4: int, delta_e2: int, *, ts_ms: int | None = None
    ) -> None:
        """Change one level and tell every orderbook subscriber of ``ticker``."""
        market = self.market(ticker)
        if type(price_e4) is not int or not 0 < price_e4 < PRICE_SCALE:
            raise MarketError(f"{ticker}: delta price {price_e4!r} is outside (0, 1) dollars")
        if type(delta_e2) is not int or delta_e2 == 0:
            raise MarketError(f"{ticker}: delta size {delta_e2!r} must be a non-zero integer")
        market.apply_delta(side, price_e4, delta_e2)
        self.stats.source_messages += 1
        subs = self._by_market["orderbook_delta"].get(ticker)
        if subs:
            ts = ts_ms or frames.now_ms()
            plain: str | None = None
            yes_scale: str | None = None
            for sub in tuple(subs):
                if sub.use_yes_price and side == "no":
                    if yes_scale is None:
                        yes_scale = frames.delta_body(
                            market, side, price_e4, delta_e2, ts, use_yes_price=True
                        )
                    body = yes_scale
                else:
                    if plain is None:
                        plain = frames.delta_body(
                            market, side, price_e4, delta_e2, ts, use_yes_price=False
                        )
                    body = plain
                sub.session.send_data(sub, "orderbook_delta", body)
        self._publish_ticker(market, ts_ms, force=False)

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
        """A public print on the trade channel. It does not touch the book: a source sends the
        matching ``apply_delta`` itself (Kalshi sends both, on different channels)."""
        market = self.market(ticker)
        if taker_side not in ("yes", "no"):
            raise MarketError(f"{ticker}: taker_side must be 'yes' or 'no', got {taker_side!r}")
        if not 0 < yes_price_e4 < PRICE_SCALE or count_e2 <= 0:
            raise MarketError(f"{ticker}: bad trade {yes_price_e4=} {count_e2=}")
        market.record_trade(yes_price_e4, count_e2)
        self.stats.source_messages += 1
        subs = self._subscribers("trade", ticker)
        if subs:
            body = frames.trade_body(
                market,
                trade_id=trade_id or str(uuid.uuid4()),
                yes_price_e4=yes_price_e4,
                count_e2=count_e2,
                taker_side=taker_side,
                ts_ms=ts_ms or frames.now_ms(),
            )
            for sub in subs:
                sub.session.send_data(sub, "trade", body)
        self._publish_ticker(market, ts_ms, force=True)

    def set_book(
        self,
        ticker: str,
        *,
        yes: Iterable[tuple[int, int]] | Mapping[int, int] | None,
        no: Iterable[tuple[int, int]] | Mapping[int, int] | None,
        ts_ms: int | None = None,
    ) -> int:
        """Replace a book, telling subscribers through ordinary deltas; returns how many.

        Removals go out before additions so a client never sees a transiently crossed book.
        Used by replay (recorded snapshots) and by tests that need an exact book.
        """
        market = self.market(ticker)
        target = {
            "yes": book_from_levels(yes, what=f"{ticker} yes"),
            "no": book_from_levels(no, what=f"{ticker} no"),
        }
        removals: list[tuple[str, int, int]] = []
        additions: list[tuple[str, int, int]] = []
        for side in ("yes", "no"):
            current, wanted = market.side(side), target[side]
            for price in sorted(current.keys() | wanted.keys()):
                change = wanted.get(price, 0) - current.get(price, 0)
                if change:
                    (removals if change < 0 else additions).append((side, price, change))
        for side, price, change in removals + additions:
            self.apply_delta(ticker, side, price, change, ts_ms=ts_ms)
        return len(removals) + len(additions)

    def _subscribers(self, channel: str, ticker: str) -> tuple[Subscription, ...]:
        per_market = self._by_market[channel].get(ticker)
        everyone = self._all_markets.get(channel)
        if per_market and everyone:
            return tuple(per_market | everyone)
        if per_market:
            return tuple(per_market)
        return tuple(everyone) if everyone else ()

    def _publish_ticker(self, market: Market, ts_ms: int | None, *, force: bool) -> None:
        subs = self._subscribers("ticker", market.ticker)
        if not subs:
            return
        top = market.top()
        if not force and top == market.last_ticker_top:
            return
        market.last_ticker_top = top
        body = frames.ticker_body(market, ts_ms or frames.now_ms())
        for sub in subs:
            sub.session.send_unsequenced(sub, "ticker", body)

    # ---- subscription index (called by sessions) ------------------------------------------

    def index_add(self, sub: Subscription, tickers: Iterable[str] | None) -> None:
        """Index ``sub`` under ``tickers``; None = all markets (trade / ticker only)."""
        if tickers is None:
            self._all_markets[sub.channel].add(sub)
            return
        index = self._by_market[sub.channel]
        for ticker in tickers:
            index.setdefault(ticker, set()).add(sub)

    def index_remove(self, sub: Subscription, tickers: Iterable[str] | None) -> None:
        """Remove ``sub`` from ``tickers``; None = from everywhere."""
        index = self._by_market[sub.channel]
        if tickers is None:
            self._all_markets.get(sub.channel, set()).discard(sub)
            tickers = list(sub.markets)
        for ticker in tickers:
            subs = index.get(ticker)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del index[ticker]

    # ---- pausing --------------------------------------------------------------------------

    def _gate_event(self) -> asyncio.Event:
        if self._unpaused is None:
            self._unpaused = asyncio.Event()
            if not self.config.start_paused:
                self._unpaused.set()
        return self._unpaused

    @property
    def paused(self) -> bool:
        return not self._gate_event().is_set()

    async def pause(self) -> None:
        """Stop the source between batches; the books are final until ``resume()``."""
        self._gate_event().clear()
        # Sources only change books synchronously after passing gate(), so once this
        # coroutine yields, no batch can be half applied.
        await asyncio.sleep(0)

    async def resume(self) -> None:
        self._gate_event().set()
        await asyncio.sleep(0)

    async def gate(self) -> bool:
        """For sources: wait while paused. True when it did wait (rebase any clocks)."""
        event = self._gate_event()
        if event.is_set():
            return False
        await event.wait()
        return True

    async def wait_source_done(self, timeout_s: float | None = None) -> None:
        """Wait until the source's ``run()`` returned (e.g. ``max_messages`` reached)."""
        if self._source_done is None:
            raise RuntimeError("the exchange is not running")
        async with asyncio.timeout(timeout_s):
            await self._source_done.wait()

    async def flush(self, timeout_s: float = 10.0) -> None:
        """Wait until every open connection's queue has been written to its socket."""
        async with asyncio.timeout(timeout_s):
            for session in list(self._sessions):
                await session.idle.wait()

    async def flush_below(self, max_queued: int) -> None:
        """Backpressure for unpaced sources: wait for every connection holding more than
        ``max_queued`` frames to drain."""
        for session in list(self._sessions):
            if len(session.queue) > max_queued:
                await session.idle.wait()

    # ---- fault knobs at runtime -----------------------------------------------------------

    def set_faults(self, **changes: Any) -> FaultConfig:
        """Change the configured fault knobs live (same names as ``FaultConfig``)."""
        self.faults = dataclasses.replace(self.faults, **changes)
        return self.faults

    def drop_connections(self, *, after_messages: int = 0) -> int:
        """Abort every open connection after ``after_messages`` more data messages (0: now).
        Returns how many connections were armed."""
        sessions = [s for s in self._sessions if not s.closing]
        for session in sessions:
            if after_messages <= 0:
                session.closing = True
                session.queue.clear()
                self.stats.connections_dropped += 1
                session.ws.transport.abort()
            else:
                session.drop_at = session.data_count + after_messages
        return len(sessions)

    def inject_seq_gap(self, *, sid: int | None = None) -> int:
        """The next data message on every live sequenced sid (or only ``sid``) skips one seq.
        Returns how many subscriptions were armed."""
        armed = 0
        for session in self._sessions:
            for sub in session.subs.values():
                if sub.sequenced and (sid is None or sub.sid == sid):
                    sub.skip_next = True
                    armed += 1
        return armed

    def send_malformed(self, kind: str = "garbage") -> int:
        """Queue one malformed frame (``frames.MALFORMED_KINDS``) on every open connection."""
        frames.malformed_frame(kind)  # validates the kind before anything is sent
        sessions = [s for s in self._sessions if not s.closing]
        for session in sessions:
            session.send_malformed(kind)
        return len(sessions)

    def stall(self, seconds: float, *, ignore_pings: bool = False) -> int:
        """Stop sending on every open connection for ``seconds`` (socket stays open)."""
        sessions = [s for s in self._sessions if not s.closing]
        for session in sessions:
            session.stall(seconds, ignore_pings=ignore_pings)
        return len(sessions)

    def emit_subscription_error(self, *, code: int = 25, sid: int | None = None) -> int:
        """Unsolicited error ``code`` on every live sid (or only ``sid``), ending those
        subscriptions as Kalshi does. Returns how many subscriptions it ended."""
        if code not in frames.ERROR_TEXTS:
            raise ValueError(f"{code} is not a documented Kalshi error code")
        ended = 0
        for session in list(self._sessions):
            for sub in list(session.subs.values()):
                if sid is None or sub.sid == sid:
                    session.kill_subscription(sub, code)
                    ended += 1
        return ended

    @property
    def connection_count(self) -> int:
        return len(self._sessions)

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
            status, body = rest.route(self._markets, request.method, path, query)
            return _json_response(status, body)
        return _json_response(404, {"error": {"code": "not_found", "message": "not found"}})

    async def _handle(self, ws: ServerConnection) -> None:
        self._session_count += 1
        session = Session(self, ws, self._session_count)
        self._sessions.add(session)
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
            self._sessions.discard(session)
            self.stats.connections_open -= 1

    async def _run_source(self) -> None:
        try:
            await self.source.run(self)
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
        self._gate_event()
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
