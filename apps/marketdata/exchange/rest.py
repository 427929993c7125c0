"""The public REST reads the local exchange serves (kalshi-protocol.md §7, §8).

``GET /markets`` (list), ``/markets/{ticker}``, ``/markets/{ticker}/orderbook``,
``/markets/trades``, ``/events/{ticker}``, ``/series/{ticker}``, ``/series/fee_changes`` and
``/exchange/status``.
Pure functions from (venue, query) to (HTTP status, JSON body); the server wraps them in an
HTTP response on the same port as the WebSocket. Market and series fields follow the
documented Market and Series objects; fields the local exchange has no value for are left out.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import parse_qs, unquote

from apps.marketdata.kalshi.units import PRICE_SCALE, e2_to_count

from .frames import PRICE_STR, rfc3339_ms
from .markets import Market, Series
from .venue import Venue

REST_PREFIX = "/trade-api/v2"
# The list filter's vocabulary differs from the Market status field: "open" lists "active"
# (docs.kalshi.com market lifecycle: "closed" is any market past close that is not finalized).
_STATUS_FILTERS: dict[str, tuple[str, ...]] = {
    "unopened": ("initialized",),
    "open": ("active",),
    "paused": ("inactive",),
    "closed": ("closed", "determined", "disputed", "amended"),
    "settled": ("finalized",),
}


class RestError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"error": {"code": code, "message": message}}


def parse_query(query: str) -> dict[str, str]:
    """Last value wins, like most web frameworks."""
    return {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}


def market_json(market: Market) -> dict[str, Any]:
    """The Market object fields a client of the list/market endpoints relies on."""
    best_yes, yes_size, best_no, no_size = market.top()
    yes_ask = PRICE_SCALE - best_no if best_no else PRICE_SCALE
    no_ask = PRICE_SCALE - best_yes if best_yes else PRICE_SCALE
    volume = e2_to_count(market.volume_e2)
    return {
        "ticker": market.ticker,
        "event_ticker": market.event_ticker,
        "market_type": "binary",
        "title": market.title,
        "status": market.status,
        "open_time": market.open_time,
        "close_time": market.close_time,
        "expiration_time": market.close_time,
        "yes_bid_dollars": PRICE_STR[best_yes],
        "yes_ask_dollars": PRICE_STR[yes_ask],
        "no_bid_dollars": PRICE_STR[best_no],
        "no_ask_dollars": PRICE_STR[no_ask],
        "yes_bid_size_fp": e2_to_count(yes_size),
        "yes_ask_size_fp": e2_to_count(no_size),
        "last_price_dollars": PRICE_STR[market.last_price_e4],
        "volume_fp": volume,
        "volume_24h_fp": volume,
        "open_interest_fp": volume,
        "price_level_structure": market.price_level_structure,
        "price_ranges": [r.as_json() for r in market.price_ranges],
        "fractional_trading_enabled": market.fractional,
        "result": market.result,
        "can_close_early": market.can_close_early,
        "settlement_timer_seconds": market.settlement_timer_seconds,
        **(
            {"settlement_value_dollars": PRICE_STR[market.settlement_value_e4]}
            if market.settlement_value_e4 is not None
            else {}
        ),
    }


def series_json(series: Series) -> dict[str, Any]:
    """The Series object (``GET /series/{ticker}``); ``fee_multiplier`` is a JSON number."""
    return {
        "ticker": series.ticker,
        "frequency": series.frequency,
        "title": series.title,
        "category": series.category,
        "tags": [],
        "settlement_sources": [],
        "contract_url": "",
        "contract_terms_url": "",
        "fee_type": series.fee_type,
        "fee_multiplier": _number(series.fee_multiplier),
        "additional_prohibitions": [],
    }


def _number(text: str) -> int | float:
    value = float(text)
    return int(value) if value.is_integer() else value


def _encode_cursor(offset: int) -> str:
    return base64.urlsafe_b64encode(f"offset:{offset}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> int:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        label, _, number = text.partition(":")
        if label != "offset" or not number.isdigit():
            raise ValueError
        return int(number)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise RestError(400, "invalid_parameters", "cursor is not one this server issued") from None


def _int_param(query: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise RestError(400, "invalid_parameters", f"{name} must be an integer in {low}..{high}")
    return int(raw)


def _csv(value: str | None) -> set[str] | None:
    if value is None or value == "":
        return None
    return {v for v in value.split(",") if v}


def list_markets(markets: Sequence[Market], query: Mapping[str, str]) -> dict[str, Any]:
    """``GET /markets``: filters, then cursor pagination over a stable (ticker) order."""
    limit = _int_param(query, "limit", 100, 1, 1000)
    status = query.get("status")
    if status and status not in _STATUS_FILTERS:
        raise RestError(400, "invalid_parameters", f"status must be one of {_STATUS_FILTERS}")
    tickers = _csv(query.get("tickers"))
    events = _csv(query.get("event_ticker"))
    series = query.get("series_ticker") or None
    selected = [
        m
        for m in sorted(markets, key=lambda m: m.ticker)
        if (not status or m.status in _STATUS_FILTERS[status])
        and (tickers is None or m.ticker in tickers)
        and (events is None or m.event_ticker in events)
        and (series is None or m.series_ticker == series)
    ]
    offset = _decode_cursor(query["cursor"]) if query.get("cursor") else 0
    page = selected[offset : offset + limit]
    end = offset + len(page)
    return {
        "markets": [market_json(m) for m in page],
        "cursor": _encode_cursor(end) if end < len(selected) else "",
    }


def orderbook(market: Market, query: Mapping[str, str]) -> dict[str, Any]:
    """``GET /markets/{ticker}/orderbook``: ascending, best last; ``depth`` counts from the best."""
    depth = _int_param(query, "depth", 0, 0, 100)
    book: dict[str, list[list[str]]] = {}
    for side in ("yes", "no"):
        levels = market.levels(side)
        if depth:
            levels = levels[-depth:]
        book[f"{side}_dollars"] = [[PRICE_STR[p], e2_to_count(s)] for p, s in levels]
    return {"orderbook_fp": book}


def list_trades(venue: Venue, query: Mapping[str, str]) -> dict[str, Any]:
    """``GET /markets/trades``: newest first; ``ticker``, ``min_ts``/``max_ts`` (Unix s),
    ``limit`` (1..1000, default 100) and ``cursor``."""
    limit = _int_param(query, "limit", 100, 1, 1000)
    ticker = query.get("ticker") or None
    min_ts = _int_param(query, "min_ts", 0, 0, 2**40)
    max_ts = _int_param(query, "max_ts", 2**40, 0, 2**40)
    selected = [
        t
        for t in reversed(venue.recent_trades)
        if (ticker is None or t["ticker"] == ticker) and min_ts <= t["ts_ms"] // 1000 <= max_ts
    ]
    offset = _decode_cursor(query["cursor"]) if query.get("cursor") else 0
    page = selected[offset : offset + limit]
    end = offset + len(page)
    return {
        "trades": [
            {
                "trade_id": t["trade_id"],
                "ticker": t["ticker"],
                "count_fp": e2_to_count(t["count_e2"]),
                "yes_price_dollars": PRICE_STR[t["yes_price_e4"]],
                "no_price_dollars": PRICE_STR[PRICE_SCALE - t["yes_price_e4"]],
                "taker_side": t["taker_side"],
                "created_time": rfc3339_ms(t["ts_ms"]),
            }
            for t in page
        ],
        "cursor": _encode_cursor(end) if end < len(selected) else "",
    }


def fee_changes(venue: Venue, query: Mapping[str, str]) -> dict[str, Any]:
    """``GET /series/fee_changes``: scheduled changes, optionally of one ``series_ticker``."""
    series = query.get("series_ticker") or None
    return {
        "series_fee_change_arr": [
            {
                "id": c.id,
                "series_ticker": c.series_ticker,
                "fee_type": c.fee_type,
                "fee_multiplier": _number(c.fee_multiplier),
                "scheduled_ts": c.scheduled_ts,
            }
            for c in venue.fee_changes
            if series is None or c.series_ticker == series
        ]
    }


def route(
    venue: Venue, method: str, path: str, query: str, *, rate_limited: bool = False
) -> tuple[int, Any]:
    """(status, body) for a REST request below ``/trade-api/v2``.

    ``rate_limited``: answer 429 with Kalshi's body (the fault knob of the token bucket)."""
    if rate_limited:
        return 429, {"error": "too many requests"}
    markets = venue.by_ticker()
    try:
        if method != "GET":
            raise RestError(405, "method_not_allowed", "the local exchange serves GET only")
        params = parse_query(query)
        rest = path[len(REST_PREFIX) :].rstrip("/")
        if rest == "/markets":
            return 200, list_markets(list(markets.values()), params)
        if rest == "/markets/trades":
            return 200, list_trades(venue, params)
        if rest == "/exchange/status":
            return 200, {
                "exchange_active": True,
                "trading_active": True,
                "exchange_estimated_resume_time": None,
            }
        if rest == "/series/fee_changes":
            return 200, fee_changes(venue, params)
        parts = rest.split("/")
        if len(parts) == 3 and parts[1] == "events":
            event_ticker = unquote(parts[2])
            members = [m for m in markets.values() if m.event_ticker == event_ticker]
            if not members:
                raise RestError(404, "not_found", f"event {event_ticker} not found")
            return 200, {
                "event": {
                    "event_ticker": event_ticker,
                    "series_ticker": members[0].series_ticker,
                    "title": f"Event {event_ticker}",
                    "sub_title": "",
                    "mutually_exclusive": False,
                },
                "markets": [market_json(m) for m in members],
            }
        if len(parts) == 3 and parts[1] == "series":
            series = venue.series(unquote(parts[2]))
            if series is None:
                raise RestError(404, "not_found", f"series {unquote(parts[2])} not found")
            return 200, {"series": series_json(series)}
        if len(parts) >= 3 and parts[1] == "markets":
            ticker = unquote(parts[2])
            market = markets.get(ticker)
            if market is None:
                raise RestError(404, "not_found", f"market {ticker} not found")
            if len(parts) == 3:
                return 200, {"market": market_json(market)}
            if len(parts) == 4 and parts[3] == "orderbook":
                return 200, orderbook(market, params)
        raise RestError(404, "not_found", f"no such endpoint: {path}")
    except RestError as exc:
        return exc.status, exc.body
