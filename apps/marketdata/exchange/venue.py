"""The venue: the local exchange's markets and authoritative books, who is connected and
subscribed to what, and the fan-out of every book event to those subscribers.

A market data source drives the venue (``apply_delta`` / ``apply_trade`` / ``set_book``),
checking ``await venue.gate()`` before each batch so that ``pause()`` takes effect between
batches, never inside one. Sessions read markets from it and index their subscriptions in it.
Books here are authoritative: ``book_levels()`` is what a correct client must have rebuilt
once the stream is drained.

The venue knows a connection and a subscription only through the two small protocols below,
so it imports neither the sessions nor the server: sources, sessions and the server all
depend on this module, and it depends on none of them.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import deque
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any, Protocol

from apps.marketdata.kalshi.units import PRICE_SCALE

from . import frames
from .errors import MarketError
from .markets import Market, book_from_levels
from .stats import ExchangeStats


class Connection(Protocol):
    """What the venue needs of one client connection (``session.Session``)."""

    queue: deque[tuple[str, Any]]  # frames waiting for the socket
    idle: asyncio.Event  # set: everything queued has been written (or the connection closed)

    def send_data(self, sub: Any, kind: str, body: str) -> None:
        """Queue one sequenced data frame on ``sub``."""
        ...

    def send_unsequenced(self, sub: Any, kind: str, body: str) -> None:
        """Queue one frame without seq (ticker) on ``sub``."""
        ...


class Subscriber(Protocol):
    """What the venue needs of one subscription (``session.Subscription``)."""

    channel: str
    markets: dict[str, None]
    use_yes_price: bool

    @property
    def session(self) -> Connection: ...


class Venue:
    """Markets, books, the subscription index, fan-out, connections and the pause gate."""

    def __init__(self, stats: ExchangeStats, *, start_paused: bool = False) -> None:
        self.stats = stats
        self._start_paused = start_paused
        self._markets: dict[str, Market] = {}
        self._ids: dict[str, str] = {}
        # Subscriptions by channel and market, plus the all-markets ones (trade, ticker).
        self._by_market: dict[str, dict[str, set[Subscriber]]] = {
            "orderbook_delta": {},
            "trade": {},
            "ticker": {},
        }
        self._all_markets: dict[str, set[Subscriber]] = {"trade": set(), "ticker": set()}
        self._connections: set[Connection] = set()
        self._unpaused: asyncio.Event | None = None

    # ---- markets and books ----------------------------------------------------------------

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

    def by_ticker(self) -> Mapping[str, Market]:
        """Read-only ``ticker -> Market`` (the REST reads look markets up in it)."""
        return MappingProxyType(self._markets)

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

    def _subscribers(self, channel: str, ticker: str) -> tuple[Subscriber, ...]:
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

    def index_add(self, sub: Subscriber, tickers: Iterable[str] | None) -> None:
        """Index ``sub`` under ``tickers``; None = all markets (trade / ticker only)."""
        if tickers is None:
            self._all_markets[sub.channel].add(sub)
            return
        index = self._by_market[sub.channel]
        for ticker in tickers:
            index.setdefault(ticker, set()).add(sub)

    def index_remove(self, sub: Subscriber, tickers: Iterable[str] | None) -> None:
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

    # ---- connections ----------------------------------------------------------------------

    def join(self, connection: Connection) -> None:
        """A client connected (the server calls this once its session exists)."""
        self._connections.add(connection)

    def leave(self, connection: Connection) -> None:
        """A client is gone (its subscriptions were removed by the session)."""
        self._connections.discard(connection)

    def connections(self) -> list[Connection]:
        return list(self._connections)

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    async def flush(self, timeout_s: float = 10.0) -> None:
        """Wait until every open connection's queue has been written to its socket."""
        async with asyncio.timeout(timeout_s):
            for connection in list(self._connections):
                await connection.idle.wait()

    async def flush_below(self, max_queued: int) -> None:
        """Backpressure for unpaced sources: wait for every connection holding more than
        ``max_queued`` frames to drain."""
        for connection in list(self._connections):
            if len(connection.queue) > max_queued:
                await connection.idle.wait()

    # ---- pausing --------------------------------------------------------------------------

    def _gate_event(self) -> asyncio.Event:
        if self._unpaused is None:
            self._unpaused = asyncio.Event()
            if not self._start_paused:
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
