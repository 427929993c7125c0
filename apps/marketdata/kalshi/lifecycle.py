"""Frames of the ``market_lifecycle_v2`` channel (kalshi-protocol.md §5, §8, §9).

Three frame types arrive on the channel: ``market_lifecycle_v2`` (``event_type`` one of
``created``, ``activated``, ``deactivated``, ``close_date_updated``, ``determined``,
``settled``, ``price_level_structure_updated``, ``metadata_updated``, or one Kalshi adds
later), ``event_lifecycle`` (an event was created) and ``event_fee_update`` (an event's fee
settings changed). Each decodes into one :class:`Lifecycle` message that keeps the parsed
fields the product uses *and* the frame's exact text (``raw``), so the recorder stores every
message losslessly, including fields nobody models yet.

Bounds, on top of the decoder's (:mod:`.messages`): a lifecycle frame is at most
:data:`MAX_LIFECYCLE_CHARS` characters (``too_long``); tickers at most 128 characters without
U+0000 (``bad_text``); ``event_type``, ``result``, ``price_level_structure`` and fee types
short strings; every ``*_ts`` in the accepted time window (Unix seconds); the settlement value
a dollar string in [0, 1] with at most 4 decimals; a fee multiplier a finite number in
[0, 100] with at most 4 decimals. ``additional_metadata`` is not modelled beyond
``event_ticker`` and ``can_close_early`` (the rest stays in ``raw``).

No Django here. Imported by :mod:`.messages` (which adds these frames to its decoder), so it
imports nothing from it.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Annotated, Final

import msgspec

from apps.marketdata.kalshi.units import UnitError, dollars_to_e4

MAX_LIFECYCLE_CHARS: Final = 65_536
MARKET_LIFECYCLE: Final = "market_lifecycle_v2"
EVENT_LIFECYCLE: Final = "event_lifecycle"
EVENT_FEE_UPDATE: Final = "event_fee_update"

# The same windows and widths as the other frames (kept equal by a test).
_MIN_TS_S: Final = 946_684_800
_MAX_TS_S: Final = 4_102_444_800  # exclusive
_INT64_MAX: Final = 2**63 - 1
_Sid = Annotated[int, msgspec.Meta(ge=1, le=_INT64_MAX)]
_Count = Annotated[int, msgspec.Meta(ge=0, le=_INT64_MAX)]
_TsS = Annotated[int, msgspec.Meta(ge=_MIN_TS_S, lt=_MAX_TS_S)]
_TsMs = Annotated[int, msgspec.Meta(ge=_MIN_TS_S * 1000, lt=_MAX_TS_S * 1000)]
_Ticker = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
_Word = Annotated[str, msgspec.Meta(max_length=64)]
_Multiplier = Annotated[float, msgspec.Meta(ge=0, le=100)]


class Lifecycle(msgspec.Struct, frozen=True, gc=False):
    """One frame of the lifecycle channel, parsed, with its exact text in ``raw``.

    ``kind`` is the frame ``type``; ``event_type`` the market event (for
    ``event_lifecycle`` / ``event_fee_update`` frames: ``"event_created"`` /
    ``"fee_update"``). ``ts_ms`` is the moment the message is about: the determination or
    settlement time, the new close time for ``close_date_updated``, the open time for
    ``created``, the fee update's ``ts``; else the frame's ``sending_ts_ms`` (or None).
    ``settlement_value_e4`` and ``fee_multiplier_e4`` are fixed point (10_000 = 1).
    """

    sid: int
    seq: int | None
    kind: str
    event_type: str
    market_ticker: str
    event_ticker: str
    series_ticker: str
    result: str
    settlement_value_e4: int | None
    open_ts_ms: int | None
    close_ts_ms: int | None
    ts_ms: int | None
    is_deactivated: bool | None
    can_close_early: bool | None
    price_level_structure: str
    fee_type: str
    fee_multiplier_e4: int | None
    sending_ts_ms: int | None
    raw: str


class LifecycleReject(Exception):
    """A lifecycle frame's value is unusable (the decoder makes it a ProtocolError)."""

    def __init__(self, message: str, *, code: str = "bad_value") -> None:
        super().__init__(message)
        self.code = code


class _Metadata(msgspec.Struct, gc=False):
    event_ticker: _Ticker | None = None
    can_close_early: bool | None = None


class _MarketBody(msgspec.Struct, gc=False):
    market_ticker: _Ticker
    event_type: _Word
    open_ts: _TsS | None = None
    close_ts: _TsS | None = None
    determination_ts: _TsS | None = None
    settled_ts: _TsS | None = None
    result: _Word | None = None
    settlement_value: str | None = None
    is_deactivated: bool | None = None
    price_level_structure: _Word | None = None
    event_ticker: _Ticker | None = None
    additional_metadata: _Metadata | None = None


class MarketFrame(msgspec.Struct, tag_field="type", tag=MARKET_LIFECYCLE, gc=False):
    sid: _Sid
    msg: _MarketBody
    seq: _Count | None = None
    sending_ts_ms: _TsMs | None = None


class _EventBody(msgspec.Struct, gc=False):
    event_ticker: _Ticker
    series_ticker: _Ticker | None = None


class EventFrame(msgspec.Struct, tag_field="type", tag=EVENT_LIFECYCLE, gc=False):
    sid: _Sid
    msg: _EventBody
    seq: _Count | None = None
    sending_ts_ms: _TsMs | None = None


class _FeeBody(msgspec.Struct, gc=False):
    event_ticker: _Ticker
    series_ticker: _Ticker | None = None
    fee_type_override: _Word | None = None
    # A JSON number in the SDKs; a decimal string is accepted too (Kalshi writes other
    # decimals as strings), so a change of encoding does not lose the message.
    fee_multiplier_override: _Multiplier | Annotated[str, msgspec.Meta(max_length=32)] | None = None
    ts: _TsS | None = None


class FeeFrame(msgspec.Struct, tag_field="type", tag=EVENT_FEE_UPDATE, gc=False):
    sid: _Sid
    msg: _FeeBody
    seq: _Count | None = None
    sending_ts_ms: _TsMs | None = None


WIRE_FRAMES: Final = (MarketFrame, EventFrame, FeeFrame)


def _text(value: str | None, field: str) -> str:
    if value is None:
        return ""
    if "\x00" in value:
        raise LifecycleReject(f"{field} contains a NUL character", code="bad_text")
    return value


def _ms(seconds: int | None) -> int | None:
    return None if seconds is None else seconds * 1000


def _multiplier_e4(value: float | str | None) -> int | None:
    if value is None:
        return None
    try:
        scaled = Decimal(value if isinstance(value, str) else repr(value)) * 10_000
    except InvalidOperation:
        raise LifecycleReject(f"fee multiplier {value!r} is not a number") from None
    if not scaled.is_finite() or not 0 <= scaled <= 1_000_000:
        raise LifecycleReject(f"fee multiplier {value!r} is outside 0..100")
    if scaled != scaled.to_integral_value():
        raise LifecycleReject(f"fee multiplier {value!r} has more than 4 decimals")
    return int(scaled)


def _raw_text(raw: bytes | str) -> str:
    text = raw if isinstance(raw, str) else bytes(raw).decode()
    if len(text) > MAX_LIFECYCLE_CHARS:
        raise LifecycleReject(
            f"a lifecycle frame is at most {MAX_LIFECYCLE_CHARS} characters, got {len(text)}",
            code="too_long",
        )
    if "\x00" in text:
        raise LifecycleReject("the frame contains a NUL character", code="bad_text")
    return text


def convert(frame: MarketFrame | EventFrame | FeeFrame, raw: bytes | str) -> Lifecycle:
    """The message of one decoded lifecycle frame. Raises ``LifecycleReject`` / ``UnitError``."""
    text = _raw_text(raw)
    if type(frame) is MarketFrame:
        m = frame.msg
        meta = m.additional_metadata
        value = None
        if m.settlement_value is not None:
            value = dollars_to_e4(m.settlement_value)
        event_ts = {
            "determined": m.determination_ts,
            "settled": m.settled_ts,
            "close_date_updated": m.close_ts,
            "created": m.open_ts,
        }.get(m.event_type)
        return Lifecycle(
            frame.sid,
            frame.seq,
            MARKET_LIFECYCLE,
            _text(m.event_type, "event_type"),
            _text(m.market_ticker, "market_ticker"),
            _text(m.event_ticker or (meta.event_ticker if meta else None), "event_ticker"),
            "",
            _text(m.result, "result"),
            value,
            _ms(m.open_ts),
            _ms(m.close_ts),
            _ms(event_ts) if event_ts is not None else frame.sending_ts_ms,
            m.is_deactivated,
            meta.can_close_early if meta else None,
            _text(m.price_level_structure, "price_level_structure"),
            "",
            None,
            frame.sending_ts_ms,
            text,
        )
    if type(frame) is EventFrame:
        e = frame.msg
        return Lifecycle(
            frame.sid,
            frame.seq,
            EVENT_LIFECYCLE,
            "event_created",
            "",
            _text(e.event_ticker, "event_ticker"),
            _text(e.series_ticker, "series_ticker"),
            "",
            None,
            None,
            None,
            frame.sending_ts_ms,
            None,
            None,
            "",
            "",
            None,
            frame.sending_ts_ms,
            text,
        )
    f = frame.msg
    return Lifecycle(
        frame.sid,
        frame.seq,
        EVENT_FEE_UPDATE,
        "fee_update",
        "",
        _text(f.event_ticker, "event_ticker"),
        _text(f.series_ticker, "series_ticker"),
        "",
        None,
        None,
        None,
        _ms(f.ts) if f.ts is not None else frame.sending_ts_ms,
        None,
        None,
        "",
        _text(f.fee_type_override, "fee_type_override"),
        _multiplier_e4(f.fee_multiplier_override),
        frame.sending_ts_ms,
        text,
    )


__all__ = [
    "MAX_LIFECYCLE_CHARS",
    "WIRE_FRAMES",
    "Lifecycle",
    "LifecycleReject",
    "UnitError",
    "convert",
]
