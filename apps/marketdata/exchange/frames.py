"""The exact wire shapes the local exchange sends (kalshi-protocol.md §3–§5, current format).

Data frames are written with f-strings rather than ``json.dumps``: the exchange emits
thousands a second and every value in them is either a pre-encoded string (ticker), a UUID,
a number, or one of our own fixed-format decimal strings, so the result is valid JSON by
construction. A frame is built in two parts: the ``msg`` body once per event, then a cheap
envelope per subscription (sid and seq differ per subscriber).
"""

from __future__ import annotations

import calendar
import json
import time
from typing import Any

from apps.marketdata.kalshi.units import PRICE_SCALE, e2_to_count, e4_to_dollars

from .markets import Market

# Every price string once: 10,001 entries, cheaper than formatting on every delta.
PRICE_STR: tuple[str, ...] = tuple(e4_to_dollars(p) for p in range(PRICE_SCALE + 1))

ERROR_TEXTS: dict[int, str] = {
    1: "Unable to process message",
    2: "Params required",
    3: "Channels required",
    4: "Subscription IDs required",
    5: "Unknown command",
    6: "Already subscribed",
    7: "Unknown subscription ID",
    8: "Unknown channel name",
    9: "Authentication required",
    10: "Channel error",
    11: "Invalid parameter",
    12: "Exactly one subscription ID is required",
    13: "Unsupported action",
    14: "Market Ticker required",
    15: "Action required",
    16: "Market not found",
    17: "Internal error",
    18: "Command timeout",
    25: "Subscription buffer overflow",
    26: "Subscription market limit exceeded",
    27: "Too many requests",
}


def now_ms() -> int:
    return time.time_ns() // 1_000_000


_rfc3339_cache: dict[int, str] = {}


def rfc3339_ms(ts_ms: int) -> str:
    """``1791427623348`` -> ``"2026-10-08T02:47:03.348Z"`` (the delta ``ts`` field)."""
    seconds, millis = divmod(ts_ms, 1000)
    prefix = _rfc3339_cache.get(seconds)
    if prefix is None:
        if len(_rfc3339_cache) > 4096:
            _rfc3339_cache.clear()
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        _rfc3339_cache[seconds] = prefix
    return f"{prefix}.{millis:03d}Z"


def rfc3339_s(ts_s: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts_s))


def _levels_json(levels: list[tuple[int, int]], *, yes_scale: bool) -> str:
    if yes_scale:
        # use_yes_price: each NO bid q is shown as the YES ask 1 - q. The order stays that of
        # the NO prices (ascending), so the best ask is still last (observed 2026).
        return ",".join(f'["{PRICE_STR[PRICE_SCALE - p]}","{e2_to_count(s)}"]' for p, s in levels)
    return ",".join(f'["{PRICE_STR[p]}","{e2_to_count(s)}"]' for p, s in levels)


def snapshot_body(market: Market, *, use_yes_price: bool) -> str:
    """``orderbook_snapshot`` msg: ascending levels, an empty side's key omitted."""
    parts = [f'"market_ticker":{market.ticker_json}', f'"market_id":"{market.market_id}"']
    if market.yes:
        parts.append(f'"yes_dollars_fp":[{_levels_json(market.levels("yes"), yes_scale=False)}]')
    if market.no:
        no_json = _levels_json(market.levels("no"), yes_scale=use_yes_price)
        parts.append(f'"no_dollars_fp":[{no_json}]')
    return "{" + ",".join(parts) + "}"


def delta_body(
    market: Market, side: str, price_e4: int, delta_e2: int, ts_ms: int, *, use_yes_price: bool
) -> str:
    """``orderbook_delta`` msg; with ``use_yes_price`` a NO price is sent as 1 - q."""
    if use_yes_price and side == "no":
        price_e4 = PRICE_SCALE - price_e4
    return (
        f'{{"market_ticker":{market.ticker_json},"market_id":"{market.market_id}",'
        f'"price_dollars":"{PRICE_STR[price_e4]}","delta_fp":"{e2_to_count(delta_e2)}",'
        f'"side":"{side}","ts":"{rfc3339_ms(ts_ms)}","ts_ms":{ts_ms}}}'
    )


def trade_body(
    market: Market,
    *,
    trade_id: str,
    yes_price_e4: int,
    count_e2: int,
    taker_side: str,
    ts_ms: int,
) -> str:
    """``trade`` msg as in the real 2026 frame: ``taker_book_side`` bid = taker bought YES."""
    book_side = "bid" if taker_side == "yes" else "ask"
    return (
        f'{{"trade_id":"{trade_id}","market_ticker":{market.ticker_json},'
        f'"yes_price_dollars":"{PRICE_STR[yes_price_e4]}",'
        f'"no_price_dollars":"{PRICE_STR[PRICE_SCALE - yes_price_e4]}",'
        f'"count_fp":"{e2_to_count(count_e2)}","taker_side":"{taker_side}",'
        f'"taker_outcome_side":"{taker_side}","taker_book_side":"{book_side}",'
        f'"is_block_trade":false,"ts":{ts_ms // 1000},"ts_ms":{ts_ms}}}'
    )


def ticker_body(market: Market, ts_ms: int) -> str:
    """``ticker`` msg in the current (2026) field set, integer cent fields removed.

    Nothing closes positions on the local exchange, so open interest equals volume.
    """
    best_yes, yes_size, best_no, no_size = market.top()
    yes_ask = PRICE_SCALE - best_no if best_no else PRICE_SCALE
    dollar_volume = market.volume_value_e6 // 1_000_000
    return (
        f'{{"market_ticker":{market.ticker_json},"market_id":"{market.market_id}",'
        f'"price_dollars":"{PRICE_STR[market.last_price_e4]}",'
        f'"yes_bid_dollars":"{PRICE_STR[best_yes]}","yes_ask_dollars":"{PRICE_STR[yes_ask]}",'
        f'"volume_fp":"{e2_to_count(market.volume_e2)}",'
        f'"open_interest_fp":"{e2_to_count(market.volume_e2)}",'
        f'"dollar_volume":{dollar_volume},"dollar_open_interest":{dollar_volume},'
        f'"yes_bid_size_fp":"{e2_to_count(yes_size)}","yes_ask_size_fp":"{e2_to_count(no_size)}",'
        f'"last_trade_size_fp":"{e2_to_count(market.last_trade_size_e2)}",'
        f'"ts":{ts_ms // 1000},"ts_ms":{ts_ms},"time":"{rfc3339_s(ts_ms // 1000)}"}}'
    )


def data_frame(kind: str, sid: int, seq: int, body: str, *, cmd_id: int | None = None) -> str:
    """Envelope of a sequenced data frame; ``cmd_id`` for a get_snapshot reply (observed)."""
    id_part = f'"id":{cmd_id},' if cmd_id is not None else ""
    return (
        f'{{"type":"{kind}",{id_part}"sid":{sid},"seq":{seq},"msg":{body},'
        f'"sending_ts_ms":{now_ms()}}}'
    )


def unsequenced_frame(kind: str, sid: int, body: str) -> str:
    """The ticker channel carries no seq."""
    return f'{{"type":"{kind}","sid":{sid},"msg":{body},"sending_ts_ms":{now_ms()}}}'


def control_frame(frame: dict[str, Any]) -> str:
    """Acks and errors (rare, so plain json.dumps), stamped like every other frame."""
    frame["sending_ts_ms"] = now_ms()
    return json.dumps(frame, separators=(",", ":"))


def error_frame(code: int, cmd_id: int | None, *, sid: int | None = None, **extra: Any) -> str:
    """``{"id":..,"type":"error","msg":{"code":..,"msg":..}}``; unsolicited errors carry sid."""
    frame: dict[str, Any] = {"type": "error"}
    if cmd_id is not None:
        frame["id"] = cmd_id
    if sid is not None:
        frame["sid"] = sid
    frame["msg"] = {"code": code, "msg": ERROR_TEXTS[code], **extra}
    return control_frame(frame)


# Malformed frames for the fault knob. Each is something a robust client must count and skip.
MALFORMED_KINDS = ("garbage", "truncated", "wrong_types", "binary")


def malformed_frame(kind: str) -> str | bytes:
    if kind == "garbage":
        return "%%garbage from the local exchange: not JSON {"
    if kind == "truncated":
        return '{"type":"orderbook_delta","sid":1,"seq":'
    if kind == "wrong_types":
        return (
            '{"type":"orderbook_delta","sid":"1","seq":"x","msg":{"market_ticker":7,'
            '"price_dollars":0.5,"delta_fp":-1,"side":"maybe"}}'
        )
    if kind == "binary":
        # Kalshi sends text frames only; a binary frame of invalid UTF-8 is doubly wrong.
        return b"\xff\xfe\x00not a text frame"
    raise ValueError(f"unknown malformed frame kind {kind!r}; choose one of {MALFORMED_KINDS}")


# ---- market_lifecycle_v2 (kalshi-protocol.md §5): rare, so plain json.dumps ----------------


def iso_to_s(text: str) -> int:
    """``"2026-12-31T23:59:00Z"`` -> Unix seconds (the lifecycle ``*_ts`` fields)."""
    return calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%SZ"))


def lifecycle_body(market: Market, event_type: str, **fields: Any) -> str:
    """A ``market_lifecycle_v2`` msg: ``market_ticker``, ``event_type`` and its own fields."""
    body: dict[str, Any] = {"market_ticker": market.ticker, "event_type": event_type, **fields}
    return json.dumps(body, separators=(",", ":"))


def created_fields(market: Market) -> dict[str, Any]:
    """The fields of a ``created`` message (the doc example's shape)."""
    return {
        "open_ts": iso_to_s(market.open_time),
        "close_ts": iso_to_s(market.close_time),
        "additional_metadata": {
            "name": market.title,
            "title": market.title,
            "event_ticker": market.event_ticker,
            "can_close_early": market.can_close_early,
            "price_level_structure": market.price_level_structure,
        },
    }


def event_lifecycle_body(event_ticker: str, series_ticker: str, title: str) -> str:
    """An ``event_lifecycle`` msg (an event was created)."""
    return json.dumps(
        {"event_ticker": event_ticker, "series_ticker": series_ticker, "title": title},
        separators=(",", ":"),
    )


def event_fee_body(
    event_ticker: str, series_ticker: str, fee_type: str, fee_multiplier: str, ts_s: int
) -> str:
    """An ``event_fee_update`` msg: the fee settings now in force for an event."""
    return (
        f'{{"event_ticker":{json.dumps(event_ticker)},"series_ticker":{json.dumps(series_ticker)},'
        f'"fee_type_override":{json.dumps(fee_type)},"fee_multiplier_override":{fee_multiplier},'
        f'"ts":{ts_s}}}'
    )
