"""Market metadata and series fee settings over REST, as writer rows (kalshi-protocol.md §7-§9).

The recorder calls :func:`fetch_metadata` at start and on a schedule (in a thread: it blocks on
HTTP): every recorded market's Market object (open/close time, ``can_close_early``, status,
result and settlement value once known, tick structure), the series of each market's event,
each series' ``fee_type`` / ``fee_multiplier`` and the scheduled fee changes. So a recorder that
starts after a market opened still stores its close time and fee settings; the lifecycle
channel then tells what changes in between.

The rows go through the recorder's writer (upserts: the newest fetch wins), never straight to
the database. A value that is not the documented shape makes that one object's row absent
(and is counted in ``MetadataResult.skipped``), never the fetch fail. No Django here.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from apps.marketdata.kalshi.rest import KalshiRest, RestError
from apps.marketdata.kalshi.units import UnitError, dollars_to_e4
from apps.marketdata.writer.tables import FeeChangeRow, MarketInfoRow, SeriesFeesRow

log = logging.getLogger(__name__)

_TEXT_MAX = 128


@dataclass
class MetadataResult:
    markets: list[MarketInfoRow] = field(default_factory=list)
    series: list[SeriesFeesRow] = field(default_factory=list)
    fee_changes: list[FeeChangeRow] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # why an object gave no row


def _short(value: Any, what: str, *, limit: int = _TEXT_MAX) -> str:
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > limit or "\x00" in value:
        raise ValueError(f"{what} is not a short text")
    return value


def _time(value: Any, what: str) -> datetime | None:
    """An RFC 3339 time (``"2026-12-31T23:59:00Z"``) or None when absent/empty."""
    if value in (None, ""):
        return None
    if not isinstance(value, str) or len(value) > 64:
        raise ValueError(f"{what} is not an RFC 3339 time")
    moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError(f"{what} has no UTC offset")
    if not 2000 <= moment.year < 2100:
        raise ValueError(f"{what} is outside 2000..2100")
    return moment.astimezone(UTC)


def multiplier_e4(value: Any) -> int:
    """A fee multiplier (JSON number, or its text) in 1/10,000: 0.5 -> 5_000."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"fee_multiplier {value!r} is not a number")
    try:
        scaled = Decimal(str(value)) * 10_000
    except InvalidOperation:
        raise ValueError(f"fee_multiplier {value!r} is not a number") from None
    if not scaled.is_finite() or scaled != scaled.to_integral_value() or not 0 <= scaled <= 10**6:
        raise ValueError(f"fee_multiplier {value!r} is not in 0..100 with at most 4 decimals")
    return int(scaled)


def market_row(market: dict[str, Any], series_ticker: str, now: datetime) -> MarketInfoRow:
    value = market.get("settlement_value_dollars")
    ranges = market.get("price_ranges") or []
    if not isinstance(ranges, list) or not all(
        isinstance(r, dict) and all(isinstance(r.get(k), str) for k in ("start", "end", "step"))
        for r in ranges
    ):
        raise ValueError("price_ranges is not a list of {start, end, step}")
    can_close_early = market.get("can_close_early")
    return MarketInfoRow(
        _short(market["ticker"], "ticker"),
        _short(market.get("event_ticker"), "event_ticker"),
        series_ticker,
        _short(market.get("status"), "status", limit=32),
        _time(market.get("open_time"), "open_time"),
        _time(market.get("close_time"), "close_time"),
        can_close_early if isinstance(can_close_early, bool) else None,
        _short(market.get("result"), "result", limit=64),
        dollars_to_e4(value) if isinstance(value, str) and value else None,
        _short(market.get("price_level_structure"), "price_level_structure", limit=64),
        [{k: r[k] for k in ("start", "end", "step")} for r in ranges],
        json.dumps(market, separators=(",", ":")),
        now,
    )


def series_row(series: dict[str, Any], now: datetime) -> SeriesFeesRow:
    return SeriesFeesRow(
        _short(series["ticker"], "series ticker"),
        _short(series["fee_type"], "fee_type", limit=64),
        multiplier_e4(series["fee_multiplier"]),
        json.dumps(series, separators=(",", ":")),
        now,
    )


def fee_change_row(change: dict[str, Any], now: datetime) -> FeeChangeRow:
    scheduled = _time(change.get("scheduled_ts"), "scheduled_ts")
    if scheduled is None:
        raise ValueError("scheduled_ts is missing")
    return FeeChangeRow(
        _short(change["id"], "id"),
        _short(change["series_ticker"], "series_ticker"),
        _short(change["fee_type"], "fee_type", limit=64),
        multiplier_e4(change["fee_multiplier"]),
        scheduled,
        now,
    )


def fetch_metadata(rest: KalshiRest, tickers: list[str]) -> MetadataResult:
    """Rows for ``tickers``, their series' fees and those series' scheduled fee changes.

    Raises :class:`RestError` only when the market list itself cannot be read; a series or
    event that cannot be read is skipped (and said in ``skipped``)."""
    now = datetime.now(UTC)
    result = MetadataResult()
    markets = rest.markets(tickers)
    series_of_event: dict[str, str] = {}
    for market in markets:
        event_ticker = market.get("event_ticker")
        if not isinstance(event_ticker, str) or not event_ticker:
            continue
        if event_ticker not in series_of_event:
            try:
                series = rest.event(event_ticker).get("series_ticker")
                series_of_event[event_ticker] = series if isinstance(series, str) else ""
            except RestError as exc:
                result.skipped.append(f"event {event_ticker}: {exc}")
                series_of_event[event_ticker] = ""
    for market in markets:
        try:
            result.markets.append(
                market_row(market, series_of_event.get(market.get("event_ticker") or "", ""), now)
            )
        except (KeyError, ValueError, UnitError, TypeError) as exc:
            result.skipped.append(f"market {str(market.get('ticker'))[:128]}: {exc}")
    for series_ticker in sorted({s for s in series_of_event.values() if s}):
        try:
            result.series.append(series_row(rest.series(series_ticker), now))
            for change in rest.fee_changes(series_ticker):
                result.fee_changes.append(fee_change_row(change, now))
        except (RestError, KeyError, ValueError, TypeError) as exc:
            result.skipped.append(f"series {series_ticker}: {exc}")
    return result
