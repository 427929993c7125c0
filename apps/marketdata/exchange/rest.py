"""The two public REST reads the local exchange serves (kalshi-protocol.md §7).

Pure functions from (markets, query) to (HTTP status, JSON body); the server wraps them in an
HTTP response on the same port as the WebSocket.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import parse_qs, unquote

from apps.marketdata.kalshi.units import PRICE_SCALE, e2_to_count

from .frames import PRICE_STR
from .markets import Market

REST_PREFIX = "/trade-api/v2"
# The list filter's vocabulary differs from the Market status field: "open" lists "active".
_STATUS_FILTERS = ("unopened", "open", "paused", "closed", "settled")


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
        "status": "active",
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
        "result": "",
        "can_close_early": True,
    }


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
        if (not status or status == "open")  # every local market is active
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


def route(markets: Mapping[str, Market], method: str, path: str, query: str) -> tuple[int, Any]:
    """(status, body) for a REST request below ``/trade-api/v2``."""
    try:
        if method != "GET":
            raise RestError(405, "method_not_allowed", "the local exchange serves GET only")
        params = parse_query(query)
        rest = path[len(REST_PREFIX) :].rstrip("/")
        if rest == "/markets":
            return 200, list_markets(list(markets.values()), params)
        parts = rest.split("/")
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
