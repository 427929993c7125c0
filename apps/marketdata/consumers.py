"""Ingestion as a Channels background worker.

Run ``python manage.py runworker kalshi-ingest`` and send it
``{"type": "ingest.start", "markets": [...], "exchange": "local", ...}`` through the channel
layer (any ``IngestOptions`` field is accepted); ``{"type": "ingest.stop"}`` flushes and stops.
With Redis configured the message can come from any process or host.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Any

from channels.consumer import AsyncConsumer

from apps.marketdata.ingest import IngestError, IngestOptions, IngestResult, run_ingest_async

log = logging.getLogger(__name__)
INGEST_CHANNEL = "kalshi-ingest"
_FIELDS = {f.name for f in dataclasses.fields(IngestOptions)}


def options_from_message(message: dict[str, Any]) -> IngestOptions:
    unknown = set(message) - _FIELDS - {"type"}
    if unknown:
        raise IngestError(f"unknown ingest option(s): {', '.join(sorted(unknown))}")
    return IngestOptions(**{k: v for k, v in message.items() if k != "type"})


class IngestWorker(AsyncConsumer):
    """One recorder per worker process; a second start while running is refused."""

    task: asyncio.Task | None = None
    stop_event: asyncio.Event | None = None
    last_result: IngestResult | None = None

    async def ingest_start(self, message: dict[str, Any]) -> None:
        if self.task is not None and not self.task.done():
            log.warning("ingest.start ignored: this worker is already recording")
            return
        try:
            options = options_from_message(message)
        except (IngestError, TypeError) as exc:
            log.error("ingest.start refused: %s", exc)
            return
        self.stop_event = asyncio.Event()
        self.task = asyncio.create_task(
            run_ingest_async(options, stop_event=self.stop_event, install_signal_handlers=False)
        )
        self.task.add_done_callback(self._finished)

    async def ingest_stop(self, message: dict[str, Any]) -> None:
        if self.stop_event is not None:
            self.stop_event.set()
        if self.task is not None:
            await asyncio.gather(self.task, return_exceptions=True)

    def _finished(self, task: asyncio.Task) -> None:
        if task.cancelled():
            return
        if task.exception() is not None:
            log.error("recorder stopped with an error: %s", task.exception())
        else:
            self.last_result = task.result()
