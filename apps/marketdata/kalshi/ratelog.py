"""A log line per key at most once per interval, counting what it held back.

The one rate limiter of the product's logs: the WebSocket client (malformed frames, books out
of sync) and the batched writer (outages, spill refusals, lost or rejected rows) both repeat
the same complaint thousands of times a second when something goes wrong. It lives in the
protocol core, the lowest layer both import, and needs only the standard library.
"""

from __future__ import annotations

import logging
import time
from typing import Any


class RateLimitedLog:
    """Log a line per key at most once per ``interval_s`` through ``logger``.

    Lines held back are counted per key; the next line logged for that key ends with
    ``suppressed=N`` (when N > 0), so no burst disappears without a trace. Keys are a small
    fixed set chosen by the caller (one per kind of complaint), never data from the wire.
    """

    def __init__(self, logger: logging.Logger, interval_s: float = 10.0) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def log(self, key: str, level: int, msg: str, *args: object, **kwargs: Any) -> bool:
        """Log ``msg % args`` at ``level`` unless ``key`` was logged in the last
        ``interval_s``; True if it was logged. ``kwargs`` go to :meth:`logging.Logger.log`
        (``exc_info``, ...)."""
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.interval_s:
            self._held[key] = self._held.get(key, 0) + 1
            return False
        self._last[key] = now
        held = self._held.pop(key, 0)
        if held:
            msg, args = msg + " suppressed=%d", (*args, held)
        self.logger.log(level, msg, *args, **kwargs)
        return True

    def warning(self, key: str, msg: str, *args: object, **kwargs: Any) -> bool:
        return self.log(key, logging.WARNING, msg, *args, **kwargs)

    def error(self, key: str, msg: str, *args: object, **kwargs: Any) -> bool:
        return self.log(key, logging.ERROR, msg, *args, **kwargs)
