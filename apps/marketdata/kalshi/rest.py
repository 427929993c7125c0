"""Signed REST reads of market metadata and fee settings (kalshi-protocol.md §2, §6, §7, §8).

:class:`KalshiRest` asks ``GET /markets`` (by ticker, paginated), ``GET /events/{ticker}`` (an
event names its series), ``GET /series/{ticker}`` and ``GET /series/fee_changes``, each request
signed like the WebSocket handshake (``<ts>GET<path without query>``), paced by a token
bucket shaped like Kalshi's Basic tier (200 read tokens a second, 10 per request:
``pyrate_limiter``), and retried on HTTP 429 with exponential backoff and full jitter, since
Kalshi's 429 carries no ``Retry-After``. Other HTTP errors and malformed bodies raise
:class:`RestError` at once.

Blocking (``urllib``): callers on an event loop run it in a thread. No Django here.
"""

from __future__ import annotations

import json
import random
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final

from pyrate_limiter import Duration, Limiter, Rate

from apps.marketdata.kalshi.signer import KalshiSigner
from apps.marketdata.kalshi.urls import redact_url

# Kalshi's Basic tier (2026): 200 read tokens per second, most requests cost 10.
READ_TOKENS_PER_S: Final = 200
TOKENS_PER_REQUEST: Final = 10
MAX_BODY_BYTES: Final = 32 * 2**20  # one page of 1000 markets is well under 2 MB


class RestError(Exception):
    """A REST read failed (HTTP status, unreachable, or not the documented shape)."""


@dataclass
class RestStats:
    requests: int = 0
    rate_limited: int = 0  # 429 answers (each one retried, up to max_retries)
    failures: int = 0


def kalshi_limiter(tokens_per_s: int = READ_TOKENS_PER_S) -> Limiter:
    """A token bucket of ``tokens_per_s`` tokens a second (acquire TOKENS_PER_REQUEST each)."""
    return Limiter(Rate(tokens_per_s, Duration.SECOND))


class KalshiRest:
    """Signed, rate-limited GETs below ``base_url`` (``.../trade-api/v2``)."""

    def __init__(
        self,
        base_url: str,
        signer: KalshiSigner | None,
        *,
        limiter: Limiter | None = None,
        max_retries: int = 6,
        backoff_initial_s: float = 0.25,
        backoff_max_s: float = 8.0,
        timeout_s: float = 15.0,
        rng: random.Random | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise RestError(f"refusing REST base {redact_url(base_url)!r}: not http(s)")
        self.base_url = base_url.rstrip("/")
        self._prefix = urllib.parse.urlsplit(self.base_url).path
        self.signer = signer
        self.limiter = limiter or kalshi_limiter()
        self.max_retries = max_retries
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.timeout_s = timeout_s
        self._rng = rng or random.Random()
        self._sleep = sleep
        self.stats = RestStats()

    def backoff_delay(self, attempt: int) -> float:
        """Full jitter: uniform(0, min(max, initial * 2**(attempt-1)))."""
        cap = min(self.backoff_max_s, self.backoff_initial_s * 2 ** (attempt - 1))
        return self._rng.uniform(0, cap)

    def get(self, path: str, **query: str) -> dict[str, Any]:
        """``GET base_url + path`` with ``query``; the JSON object it answers."""
        url = self.base_url + path
        if query:
            url += "?" + urllib.parse.urlencode(query)
        attempt = 0
        while True:
            self.limiter.try_acquire("kalshi-rest-read", weight=TOKENS_PER_REQUEST)
            headers = {"Accept": "application/json"}
            if self.signer is not None:
                # Signed like the handshake: the full path, query stripped (§2).
                headers.update(self.signer.headers(method="GET", path=self._prefix + path))
            request = urllib.request.Request(url, headers=headers, method="GET")  # noqa: S310
            self.stats.requests += 1
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:  # noqa: S310
                    body = response.read(MAX_BODY_BYTES + 1)
            except urllib.error.HTTPError as exc:
                if exc.code == 429 and attempt < self.max_retries:
                    self.stats.rate_limited += 1
                    attempt += 1
                    self._sleep(self.backoff_delay(attempt))
                    continue
                if exc.code == 429:
                    self.stats.rate_limited += 1
                self.stats.failures += 1
                raise RestError(f"GET {redact_url(url)}: HTTP {exc.code}") from None
            except (OSError, TimeoutError) as exc:
                self.stats.failures += 1
                raise RestError(f"GET {redact_url(url)}: {type(exc).__name__}: {exc}") from None
            if len(body) > MAX_BODY_BYTES:
                self.stats.failures += 1
                raise RestError(f"GET {redact_url(url)}: body above {MAX_BODY_BYTES} bytes")
            try:
                data = json.loads(body)
            except ValueError:
                self.stats.failures += 1
                raise RestError(f"GET {redact_url(url)}: the body is not JSON") from None
            if not isinstance(data, dict):
                self.stats.failures += 1
                raise RestError(f"GET {redact_url(url)}: the body is not a JSON object")
            return data

    # ---- the documented reads -------------------------------------------------------------

    def markets(self, tickers: Iterable[str], *, chunk: int = 100) -> list[dict[str, Any]]:
        """The Market objects of ``tickers`` (``GET /markets?tickers=...``, every page)."""
        found: list[dict[str, Any]] = []
        wanted = list(dict.fromkeys(tickers))
        for lo in range(0, len(wanted), chunk):
            cursor = ""
            while True:
                query = {"tickers": ",".join(wanted[lo : lo + chunk]), "limit": "1000"}
                if cursor:
                    query["cursor"] = cursor
                page = self.get("/markets", **query)
                markets = page.get("markets")
                if not isinstance(markets, list) or not all(
                    isinstance(m, dict) and isinstance(m.get("ticker"), str) for m in markets
                ):
                    raise RestError("GET /markets did not answer with a market list")
                found += markets
                cursor = page.get("cursor") or ""
                if not isinstance(cursor, str) or not cursor:
                    break
        return found

    def event(self, event_ticker: str) -> dict[str, Any]:
        body = self.get(f"/events/{urllib.parse.quote(event_ticker, safe='')}")
        event = body.get("event")
        if not isinstance(event, dict):
            raise RestError(f"GET /events/{event_ticker} did not answer with an event")
        return event

    def series(self, series_ticker: str) -> dict[str, Any]:
        body = self.get(f"/series/{urllib.parse.quote(series_ticker, safe='')}")
        series = body.get("series")
        if not isinstance(series, dict):
            raise RestError(f"GET /series/{series_ticker} did not answer with a series")
        return series

    def fee_changes(self, series_ticker: str | None = None) -> list[dict[str, Any]]:
        query = {"series_ticker": series_ticker} if series_ticker else {}
        body = self.get("/series/fee_changes", **query)
        changes = body.get("series_fee_change_arr")
        if changes is None:
            return []
        if not isinstance(changes, list) or not all(isinstance(c, dict) for c in changes):
            raise RestError("GET /series/fee_changes did not answer with a change list")
        return changes
