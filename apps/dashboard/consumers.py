"""The live page's WebSocket: book updates as the recorder publishes them, and a summary of
ingestion and the paper trader every few seconds.

On connect a staff user's socket joins the ``book.<ticker>`` group of every recorded market
(:class:`apps.marketdata.live.BookPublisher` sends ``book.update`` there) and receives each
market's latest book from the tables, so the page is never empty while a market is quiet.
The summary refresh also joins the groups of markets that started recording since.

Messages sent to the browser, all JSON objects with a ``type``:
``{"type": "book", "book": {...}}`` (the publisher's top of book) and
``{"type": "summary", ...}`` (:func:`apps.dashboard.selectors.live_summary`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from apps.dashboard import selectors
from apps.marketdata.live import book_group

log = logging.getLogger(__name__)
LIVE_WS_PATH = "/rl/ws/live"
SUMMARY_INTERVAL_S = 3.0


def _initial_state() -> tuple[dict[str, Any], list[dict[str, Any]]]:
    summary = selectors.live_summary()
    markets = [m["market_ticker"] for m in summary["markets"]]
    return summary, selectors.latest_books(markets=markets)


class LiveConsumer(AsyncJsonWebsocketConsumer):
    summary_interval_s = SUMMARY_INTERVAL_S

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not (user.is_active and user.is_staff):
            await self.close()  # before accept: the handshake is refused (HTTP 403)
            return
        self.joined: set[str] = set()
        self.poller: asyncio.Task | None = None
        await self.accept()
        summary, books = await database_sync_to_async(_initial_state)()
        await self._join(summary)
        for book in books:
            await self.send_json({"type": "book", "book": book})
        await self.send_json({"type": "summary", **summary})
        self.poller = asyncio.create_task(self._poll())

    async def disconnect(self, code: int) -> None:
        poller = getattr(self, "poller", None)
        if poller is not None:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller
        for group in getattr(self, "joined", set()):
            await self.channel_layer.group_discard(group, self.channel_name)

    async def book_update(self, event: dict[str, Any]) -> None:
        """A ``book.update`` from the recorder's publisher: forward its top of book."""
        await self.send_json({"type": "book", "book": event["book"]})

    async def _join(self, summary: dict[str, Any]) -> None:
        for market in summary["markets"]:
            group = book_group(market["market_ticker"])
            if group not in self.joined:
                await self.channel_layer.group_add(group, self.channel_name)
                self.joined.add(group)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.summary_interval_s)
            try:
                summary = await database_sync_to_async(selectors.live_summary)()
                await self._join(summary)
                await self.send_json({"type": "summary", **summary})
            except Exception as exc:  # a database hiccup must not end the page's updates
                log.warning("live page summary failed: %s: %s", type(exc).__name__, exc)
