"""Replay recorded books from the database through the local exchange.

A market data source of the exchange that lives beside it, not in it: it needs Django, and the
exchange (``apps.marketdata.exchange``) is a core that imports none.

Rows of ``OrderbookSnapshot`` / ``OrderbookDelta`` (and ``PublicTrade`` and
``MarketLifecycle``) are merged in ``received_at`` order and applied like a JSONL replay:
snapshots set the book (subscribers see deltas), deltas apply, trades re-print, lifecycle
messages are sent again from their stored frame text (all of them: ``tickers`` limits the
books, not the lifecycle channel, which carries every market).
Django is imported lazily, and every query runs in one
dedicated worker thread: Django connections belong to the thread that opened them, and a
server-side cursor must stay on one connection, so the default multi-thread executor would be
wrong here. The event loop never waits on the database except between batches.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import heapq
import itertools
import json
import math
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

from apps.marketdata.exchange.errors import ConfigError
from apps.marketdata.exchange.markets import Market
from apps.marketdata.exchange.replay import (
    ReplayError,
    ReplayEvent,
    ReplayPacer,
    event_prices,
    lifecycle_event,
    market_from_ticker,
)
from apps.marketdata.exchange.sources import MarketDataSource
from apps.marketdata.exchange.venue import Venue


def models_module() -> Any:
    from apps.marketdata import models

    return models


def _ns(moment: datetime) -> int:
    return int(moment.timestamp() * 1_000_000) * 1_000


def _ms(moment: datetime | None) -> int | None:
    return None if moment is None else int(moment.timestamp() * 1000)


def _levels(raw: Any) -> dict[int, int]:
    return {int(p): int(s) for p, s in raw or () if int(s) > 0}


class DbReplaySource(MarketDataSource):
    """Replays stored history at ``speed`` x real time (<= 0: as fast as clients read).

    ``tickers`` limits the markets (None = every recorded market); ``since`` / ``until``
    bound ``received_at``; ``chunk_size`` rows are fetched per database round trip.
    """

    def __init__(
        self,
        *,
        speed: float = 1.0,
        tickers: Sequence[str] | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        chunk_size: int = 5_000,
        restamp: bool = True,
    ) -> None:
        if not math.isfinite(speed):
            raise ConfigError(f"replay speed must be finite, got {speed!r}")
        if chunk_size < 1:
            raise ConfigError("chunk_size must be >= 1")
        self.speed = speed
        self.tickers = list(tickers) if tickers else None
        self.since = since
        self.until = until
        self.chunk_size = chunk_size
        self.restamp = restamp
        self.events_applied = 0
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="exchange-db-replay"
        )

    # ---- queries (worker thread only) -----------------------------------------------------

    def _filtered(self, model: Any) -> Any:
        queryset = model.objects.all()
        if self.tickers is not None:
            queryset = queryset.filter(market_ticker__in=self.tickers)
        if self.since is not None:
            queryset = queryset.filter(received_at__gte=self.since)
        if self.until is not None:
            queryset = queryset.filter(received_at__lt=self.until)
        return queryset.order_by("received_at", "id")

    def _models(self) -> tuple[Any, Any, Any]:
        from apps.marketdata import models

        return models.OrderbookSnapshot, models.OrderbookDelta, getattr(models, "PublicTrade", None)

    def _iter_events(self) -> Iterator[ReplayEvent]:
        snapshot_model, delta_model, trade_model = self._models()
        chunk = self.chunk_size
        snapshots = (
            ReplayEvent(
                "snapshot",
                ticker,
                None,
                _ns(received),
                yes=_levels(yes),
                no=_levels(no),
                ts_ms=_ms(exchange_ts),
            )
            for ticker, yes, no, received, exchange_ts in self._filtered(snapshot_model)
            .values_list("market_ticker", "yes_levels", "no_levels", "received_at", "exchange_ts")
            .iterator(chunk_size=chunk)
        )
        deltas = (
            ReplayEvent(
                "delta",
                ticker,
                None,
                _ns(received),
                side=side,
                price_e4=price,
                delta_e2=delta,
                ts_ms=_ms(exchange_ts),
            )
            for ticker, side, price, delta, received, exchange_ts in self._filtered(delta_model)
            .values_list(
                "market_ticker", "side", "price_e4", "delta_e2", "received_at", "exchange_ts"
            )
            .iterator(chunk_size=chunk)
        )
        streams = [snapshots, deltas]
        if trade_model is not None:
            streams.append(
                ReplayEvent(
                    "trade",
                    ticker,
                    None,
                    _ns(received),
                    yes_price_e4=price,
                    count_e2=count,
                    taker_side=taker,
                    ts_ms=_ms(exchange_ts),
                    trade_id=trade_id,
                )
                for ticker, trade_id, price, count, taker, received, exchange_ts in self._filtered(
                    trade_model
                )
                .values_list(
                    "market_ticker",
                    "trade_id",
                    "yes_price_e4",
                    "count_e2",
                    "taker_side",
                    "received_at",
                    "exchange_ts",
                )
                .iterator(chunk_size=chunk)
            )
        lifecycle_model = getattr(models_module(), "MarketLifecycle", None)
        if lifecycle_model is not None:
            streams.append(self._lifecycle_events(lifecycle_model))
        # Each stream is ordered by received_at; merging keeps the global order.
        return heapq.merge(*streams, key=lambda e: e.t_ns or 0)

    def _lifecycle_events(self, model: Any) -> Iterator[ReplayEvent]:
        queryset = model.objects.all()
        if self.since is not None:
            queryset = queryset.filter(received_at__gte=self.since)
        if self.until is not None:
            queryset = queryset.filter(received_at__lt=self.until)
        rows = (
            queryset.order_by("received_at", "id")
            .values_list("raw", "received_at")
            .iterator(chunk_size=self.chunk_size)
        )
        for raw, received in rows:
            try:
                frame = json.loads(raw)
                if not isinstance(frame, dict):
                    raise ReplayError("not a JSON object")
                yield lifecycle_event(frame, _ns(received))
            except ValueError:
                continue  # stored frames were decoded once already; a bad one is skipped

    def _scan_markets(self) -> list[Market]:
        snapshot_model, delta_model, _ = self._models()
        tickers: dict[str, None] = {}
        for model in (snapshot_model, delta_model):
            queryset = self._filtered(model).order_by().values_list("market_ticker", flat=True)
            tickers.update(dict.fromkeys(sorted(set(queryset.distinct()))))
        markets = []
        for ticker in tickers:
            # The first stored snapshot tells the tick grid and whether sizes are fractional.
            first = (
                self._filtered(snapshot_model)
                .filter(market_ticker=ticker)
                .values_list("yes_levels", "no_levels")
                .first()
            )
            prices: set[int] = set()
            fractional = False
            if first is not None:
                event = ReplayEvent(
                    "snapshot", ticker, None, None, yes=_levels(first[0]), no=_levels(first[1])
                )
                prices, fractional = event_prices(event)
            markets.append(
                market_from_ticker(
                    ticker, market_id=None, prices=prices, sizes_fractional=fractional
                )
            )
        return markets

    def _close_connection(self) -> None:
        from django.db import connection

        connection.close()

    # ---- MarketDataSource -----------------------------------------------------------------

    async def _in_worker(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def prepare(self) -> list[Market]:
        markets = await self._in_worker(self._scan_markets)
        if not markets:
            raise ConfigError("the database holds no recorded orderbook rows to replay")
        return markets

    async def run(self, venue: Venue) -> None:
        iterator = await self._in_worker(self._iter_events)
        chunk = self.chunk_size

        def next_chunk() -> list[ReplayEvent]:
            return list(itertools.islice(iterator, chunk))

        async def chunks() -> list[ReplayEvent]:
            return await self._in_worker(next_chunk)

        pacer = ReplayPacer(venue, speed=self.speed, restamp=self.restamp)
        try:
            while events := await chunks():
                await pacer.play(events)
                self.events_applied = pacer.applied
        finally:
            await self._in_worker(self._close_connection)
