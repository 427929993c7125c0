"""The local exchange's errors, in one leaf module every other exchange module may import."""

from __future__ import annotations

from typing import Any


class ConfigError(ValueError):
    """The exchange was configured with something that cannot work; the message says what."""


class MarketError(ValueError):
    """A market definition or book operation that cannot be right."""


class CommandError(Exception):
    """A client command the exchange answers with ``{"type":"error"}`` (code from §3)."""

    def __init__(self, code: int, **extra: Any) -> None:
        super().__init__(code)
        self.code = code
        self.extra = extra
