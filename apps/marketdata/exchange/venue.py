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
import json
import uuid
from collections import deque
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any, Protocol

from apps.marketdata.kalshi.units import PRICE_SCALE, dollars_to_e4

from . import frames
from .errors import MarketError
from .markets import PRICE_LEVEL_STRUCTURES, FeeChange, Market, Series, book_from_levels
from .stats import ExchangeStats

LIFECYCLE = "market_lifecycle_v2"


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
        self._series: dict[str, Series] = {}
        self.fee_changes: list[FeeChange] = []
        # Recent public trades for GET /markets/trades, newest last (bounded).
        self.recent_trades: deque[dict[str, Any]] = deque(maxlen=10_000)
        # Subscriptions by channel and market, plus the all-markets ones (trade, ticker,
        # and market_lifecycle_v2, which takes no market filter).
        self._by_market: dict[str, dict[str, set[Subscriber]]] = {
            "orderbook_delta": {},
            "trade": {},
            "ticker": {},
            LIFECYCLE: {},
        }
        self._all_markets: dict[str, set[Subscriber]] = {
            "trade": set(),
            "ticker": set(),
            LIFECYCLE: set(),
        }
        self._connections: set[Connection] = set()
        self._unpaused: asyncio.Event | None = None

    # ---- markets and books ----------------------------------------------------------------

    def add_market(self, market: Market) -> None:
        if market.ticker in self._markets:
            raise MarketError(f"market {market.ticker} is defined twice")
        self._markets[market.ticker] = market
        self._ids[market.market_id] = market.ticker
        if market.series_ticker not in self._series:
            self._series[market.series_ticker] = Series(market.series_ticker)

    def add_series(self, series: Series) -> None:
        self._series[series.ticker] = series

    def series(self, ticker: str) -> Series | None:
        """The series (a market's series is created with defaults when none was given)."""
        return self._series.get(ticker)

    def series_by_ticker(self) -> Mapping[str, Series]:
        return MappingProxyType(self._series)

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
        trade_id = trade_id or str(uuid.uuid4())
        ts_ms = ts_ms or frames.now_ms()
        self.recent_trades.append(
            {
                "trade_id": trade_id,
                "ticker": ticker,
                "yes_price_e4": yes_price_e4,
                "count_e2": count_e2,
                "taker_side": taker_side,
                "ts_ms": ts_ms,
            }
        )
        subs = self._subscribers("trade", ticker)
        if subs:
            body = frames.trade_body(
                market,
                trade_id=trade_id,
                yes_price_e4=yes_price_e4,
                count_e2=count_e2,
                taker_side=taker_side,
                ts_ms=ts_ms,
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

    # ---- market lifecycle (market_lifecycle_v2, kalshi-protocol.md §5, §9) ----------------

    def publish_lifecycle(self, kind: str, body: str) -> None:
        """One frame of type ``kind`` to every lifecycle subscriber (no seq, like the doc)."""
        self.stats.lifecycle_messages += 1
        for sub in tuple(self._all_markets[LIFECYCLE]):
            sub.session.send_unsequenced(sub, kind, body)

    def market_event(self, ticker: str, event_type: str, **fields: Any) -> None:
        """A ``market_lifecycle_v2`` message about ``ticker``."""
        market = self.market(ticker)
        self.publish_lifecycle(LIFECYCLE, frames.lifecycle_body(market, event_type, **fields))

    def create_market(self, market: Market, *, new_event: bool = False) -> None:
        """A market listed while running: ``event_lifecycle`` (for a new event), ``created``."""
        self.add_market(market)
        if new_event:
            self.publish_lifecycle(
                "event_lifecycle",
                frames.event_lifecycle_body(
                    market.event_ticker, market.series_ticker, f"Event {market.event_ticker}"
                ),
            )
        self.market_event(market.ticker, "created", **frames.created_fields(market))

    def set_active(self, ticker: str, active: bool) -> None:
        """Pause (``deactivated``) or unpause (``activated``) trading in a market."""
        market = self.market(ticker)
        market.status = "active" if active else "inactive"
        self.market_event(
            ticker, "activated" if active else "deactivated", is_deactivated=not active
        )

    def close_market(self, ticker: str, *, ts_ms: int | None = None) -> None:
        """Close early: the close time moves to now (``close_date_updated``), the book is
        emptied (closing cancels resting orders) and the status is ``closed``."""
        market = self.market(ticker)
        close_s = (ts_ms or frames.now_ms()) // 1000
        market.close_time = frames.rfc3339_s(close_s)
        market.status = "closed"
        self.market_event(ticker, "close_date_updated", close_ts=close_s)
        self.set_book(ticker, yes=None, no=None, ts_ms=ts_ms)

    def determine(self, ticker: str, result: str, settlement_value_e4: int) -> None:
        """The result is known: ``determined`` with result and settlement value."""
        if result not in ("yes", "no", "scalar"):
            raise MarketError(f"{ticker}: result must be yes, no or scalar, got {result!r}")
        if not 0 <= settlement_value_e4 <= PRICE_SCALE:
            raise MarketError(f"{ticker}: settlement value {settlement_value_e4} outside [0, 1]")
        market = self.market(ticker)
        market.status = "determined"
        market.result = result
        market.settlement_value_e4 = settlement_value_e4
        self.market_event(
            ticker,
            "determined",
            result=result,
            settlement_value=frames.PRICE_STR[settlement_value_e4],
            determination_ts=frames.now_ms() // 1000,
        )

    def settle(self, ticker: str) -> None:
        market = self.market(ticker)
        market.status = "finalized"
        self.market_event(ticker, "settled", settled_ts=frames.now_ms() // 1000)

    def set_price_level_structure(self, ticker: str, structure: str) -> None:
        if structure not in PRICE_LEVEL_STRUCTURES:
            raise MarketError(f"{ticker}: unknown price_level_structure {structure!r}")
        market = self.market(ticker)
        market.price_level_structure = structure
        market.price_ranges = PRICE_LEVEL_STRUCTURES[structure]
        self.market_event(ticker, "price_level_structure_updated", price_level_structure=structure)

    def replay_lifecycle(self, kind: str, msg: Mapping[str, Any]) -> None:
        """A recorded lifecycle message, sent again as it was (a replay): the markets it
        names that this venue holds take the state it announces, so REST agrees."""
        ticker = msg.get("market_ticker")
        market = self._markets.get(ticker) if isinstance(ticker, str) else None
        event_type = msg.get("event_type")
        if market is not None and kind == LIFECYCLE:
            if event_type == "determined" and msg.get("result") in ("yes", "no", "scalar"):
                market.status, market.result = "determined", msg["result"]
                value = msg.get("settlement_value")
                if isinstance(value, str):
                    market.settlement_value_e4 = dollars_to_e4(value)
            elif event_type == "settled":
                market.status = "finalized"
            elif event_type in ("activated", "deactivated"):
                market.status = "active" if event_type == "activated" else "inactive"
            elif event_type == "close_date_updated" and type(msg.get("close_ts")) is int:
                market.close_time = frames.rfc3339_s(msg["close_ts"])
                if msg["close_ts"] * 1000 <= frames.now_ms() and market.status == "active":
                    market.status = "closed"
        self.publish_lifecycle(kind, json.dumps(dict(msg), separators=(",", ":")))

    def change_fees(self, series_ticker: str, fee_type: str, fee_multiplier: str) -> None:
        """A series' fee settings change now: one ``event_fee_update`` per event of it."""
        series = self._series[series_ticker]
        series.fee_type, series.fee_multiplier = fee_type, fee_multiplier
        now_s = frames.now_ms() // 1000
        events = dict.fromkeys(
            m.event_ticker for m in self._markets.values() if m.series_ticker == series_ticker
        )
        for event in events:
            self.publish_lifecycle(
                "event_fee_update",
                frames.event_fee_body(event, series_ticker, fee_type, fee_multiplier, now_s),
            )

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
