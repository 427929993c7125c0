"""Typed parsing of Kalshi WebSocket server frames (kalshi-protocol.md §3, §4, §5).

One call, :meth:`FrameDecoder.decode`, turns a raw frame into one of the frozen structs below,
already in the product's fixed-point units (see :mod:`.units`): prices are ``price_e4``
(10_000 = $1.00), sizes ``size_e2`` (100 = one contract), times ``*_ms`` (Unix milliseconds).

Every historic wire format of the orderbook channel is accepted (legacy integer cents and
contracts, ``*_dollars`` with integer sizes, ``*_dollars_fp`` / ``delta_fp`` fixed-point
strings); when several are present the most precise one wins. With ``use_yes_price=True``
the NO side arrives on the YES scale and is turned back into NO-bid prices here, so the rest
of the product only ever sees NO bids in NO prices.

Anything malformed raises :class:`ProtocolError` and nothing is coerced: booleans and floats
are not integers, prices above $1 or with more than 4 decimals and sizes with more than 2
decimals are rejected. A frame whose ``type`` is unknown is not an error: it comes back as
:class:`UnknownMessage` so that its ``seq`` still counts.

Bounds. Whatever a frame holds, :meth:`FrameDecoder.decode` either returns a message or
raises :class:`ProtocolError` (never ``ValueError``, ``RecursionError`` or anything else), and
what it accepts is bounded explicitly, each bound with its own message and ``code``:

* prices and sizes: at most :data:`~.units.MAX_NUMBER_CHARS` characters, sizes within int64
  (``number_too_long`` / ``number_out_of_range``, see :mod:`.units`);
* times (``ts_ms``, ``sending_ts_ms``, ``ts`` in seconds or RFC 3339): from 2000-01-01 to
  2100-01-01 UTC, i.e. Unix ms in [:data:`MIN_TS_MS`, :data:`MAX_TS_MS`)
  (``timestamp_out_of_range``); a feed of this century cannot send anything else, and every
  accepted value converts to a ``datetime`` (year 10,000 made the writer raise);
* nesting: a frame that is not one of the modelled types may nest at most
  :data:`MAX_NESTING` levels (``too_deep``); the modelled types are bounded by their schema,
  and anything nested deeply enough to exhaust the parser's stack is rejected the same way;
* lengths: a snapshot side has at most 9,999 levels (one per price, so more would repeat a
  price), tickers at most 128 characters and trade ids 64 (the widths of the columns),
  ``ts`` strings 64, ack market lists :data:`MAX_LIST_ITEMS` (``too_long``);
* integers (sid, seq, ids): non-negative int64, as before (``invalid_field``);
* text that is stored (tickers, trade ids) holds no U+0000, which PostgreSQL text refuses
  (``bad_text``).

Above 700 lines on purpose: the schemas, converters and bounds of the decoder stay together
so each bound sits beside the field it guards (lifecycle frames already live apart).

Lifecycle frames (``market_lifecycle_v2``, ``event_lifecycle``, ``event_fee_update``) are
modelled in :mod:`.lifecycle` and decode into its :class:`~.lifecycle.Lifecycle` message,
under the same bounds plus that module's own.

No Django here. The decode path for deltas is kept short on purpose: it runs for every
message the recorder receives (see ``benchmarks/bench_book.py``); the bounds on it are
msgspec constraints checked in C, one ``in`` test on the ticker, and a length check on unit
cache misses only.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Final, Literal

import msgspec

from apps.marketdata.kalshi import lifecycle
from apps.marketdata.kalshi.lifecycle import Lifecycle, LifecycleReject
from apps.marketdata.kalshi.units import (
    PRICE_SCALE,
    UnitError,
    cents_to_e4,
    complement_e4,
    contracts_to_e2,
    count_to_e2,
    dollars_to_e4,
    e4_to_dollars,
)

__all__ = [
    "ErrorMessage",
    "FrameDecoder",
    "Lifecycle",
    "Message",
    "Ok",
    "OrderbookDelta",
    "OrderbookSnapshot",
    "ProtocolError",
    "Side",
    "Subscribed",
    "SubscriptionInfo",
    "Ticker",
    "Trade",
    "UnknownMessage",
    "Unsubscribed",
    "parse_frame",
]

Side = Literal["yes", "no"]
Level = tuple[int, int]  # (price_e4, size_e2)

RAW_EXCERPT_BYTES: Final = 2048  # how much of a bad frame a ProtocolError keeps
MAX_REASON_CHARS: Final = 400  # a reason quotes values; never let it grow with the frame

# Accepted time window (see the module docstring): [2000-01-01, 2100-01-01) UTC.
MIN_TS_MS: Final = 946_684_800_000
MAX_TS_MS: Final = 4_102_444_800_000  # exclusive
MAX_NESTING: Final = 32
MAX_LIST_ITEMS: Final = 100_000
MAX_TICKER_CHARS: Final = 128  # rl_* market_ticker columns
MAX_TRADE_ID_CHARS: Final = 64  # rl_public_trades.trade_id


class ProtocolError(ValueError):
    """A frame that is not valid Kalshi protocol.

    ``reason`` is a sentence saying what is wrong (at most :data:`MAX_REASON_CHARS`);
    ``code`` names the kind of problem from a small fixed set (``not_json``, ``not_utf8``,
    ``too_deep``, ``invalid_field``, ``timestamp_out_of_range``, ``number_too_long``, ...) so
    callers can count them; ``raw`` is the offending frame, cut to its first
    :data:`RAW_EXCERPT_BYTES` bytes/characters so logs stay bounded.
    """

    def __init__(
        self, reason: str, raw: bytes | str | None = None, *, code: str = "invalid"
    ) -> None:
        if len(reason) > MAX_REASON_CHARS:
            reason = reason[: MAX_REASON_CHARS - 3] + "..."
        super().__init__(reason)
        self.reason = reason
        self.code = code
        self.raw = _excerpt(raw)


def _excerpt(raw: object) -> bytes | str | None:
    if isinstance(raw, bytes | str):
        return raw[:RAW_EXCERPT_BYTES]
    if isinstance(raw, bytearray | memoryview):
        return bytes(raw[:RAW_EXCERPT_BYTES])
    return None


# --------------------------------------------------------------------------------------------
# Normalised messages (what callers get)
# --------------------------------------------------------------------------------------------
# Every message has ``sid`` and ``seq`` (None when the frame has none) so that sequence
# tracking is one line for the caller, whatever the type.


class OrderbookSnapshot(msgspec.Struct, frozen=True, gc=False):
    """Full book of one market. Levels are (price_e4, size_e2) bids, ascending by price.

    ``no`` holds NO bids in NO prices whatever the subscription's ``use_yes_price``.
    ``id`` is set when the snapshot answers an ``update_subscription``/``get_snapshot``.
    """

    sid: int
    seq: int
    market_ticker: str
    market_id: str | None
    yes: list[Level]
    no: list[Level]
    sending_ts_ms: int | None = None
    id: int | None = None


class OrderbookDelta(msgspec.Struct, frozen=True, gc=False):
    """Signed change ``delta_e2`` of resting size at ``price_e4`` on one side's bids."""

    sid: int
    seq: int
    market_ticker: str
    market_id: str | None
    side: Side
    price_e4: int
    delta_e2: int
    ts_ms: int | None = None
    sending_ts_ms: int | None = None
    client_order_id: str | None = None


class Subscribed(msgspec.Struct, frozen=True, gc=False):
    """Ack of one channel of a ``subscribe`` command; ``sid`` is the new subscription."""

    id: int | None
    channel: str
    sid: int
    seq: None = None  # acks of this kind never take a sequence number


class Unsubscribed(msgspec.Struct, frozen=True, gc=False):
    """Ack of ``unsubscribe`` for one sid; it takes the sid's next ``seq``."""

    id: int | None
    sid: int
    seq: int | None


class SubscriptionInfo(msgspec.Struct, frozen=True, gc=False):
    """One entry of a ``list_subscriptions`` answer."""

    channel: str
    sid: int


class Ok(msgspec.Struct, frozen=True, gc=False):
    """Generic ack.

    After ``update_subscription`` (or a merged ``subscribe``) it has ``sid``, ``seq`` and the
    full ``market_tickers`` list; after ``list_subscriptions`` it has ``subscriptions``.
    ``market_tickers`` is None when the server left it out (``skip_ticker_ack``).
    """

    id: int | None
    sid: int | None
    seq: int | None
    market_tickers: list[str] | None = None
    subscriptions: list[SubscriptionInfo] | None = None
    sending_ts_ms: int | None = None


class ErrorMessage(msgspec.Struct, frozen=True, gc=False):
    """A server ``error`` frame: ``code`` as in the §3 table, ``message`` the server's text."""

    id: int | None
    sid: int | None
    code: int
    message: str
    market_ticker: str | None = None
    market_id: str | None = None
    seq: int | None = None


class Trade(msgspec.Struct, frozen=True, gc=False):
    """A public trade print. ``ts_ms`` falls back to ``ts`` (seconds) x 1000."""

    sid: int
    seq: int | None
    trade_id: str
    market_ticker: str
    yes_price_e4: int
    no_price_e4: int
    count_e2: int
    taker_side: Side
    ts_ms: int | None
    sending_ts_ms: int | None = None


class Ticker(msgspec.Struct, frozen=True, gc=False):
    """Top-of-book / last-trade summary of one market (no ``seq`` on this channel).

    Prices are ``price_e4`` and may be None when the frame leaves them out; ``yes_ask_e4``
    of 10_000 means "no ask". ``ts_ms`` falls back to ``ts`` (seconds) x 1000.
    """

    sid: int
    market_ticker: str
    market_id: str | None
    price_e4: int | None
    yes_bid_e4: int | None
    yes_ask_e4: int | None
    volume_e2: int | None
    open_interest_e2: int | None
    ts_ms: int | None
    sending_ts_ms: int | None = None
    seq: None = None


class UnknownMessage(msgspec.Struct, frozen=True, gc=False):
    """A frame whose ``type`` this parser does not model; its ``seq`` still counts."""

    type: str
    sid: int | None
    seq: int | None


Message = (
    OrderbookSnapshot
    | OrderbookDelta
    | Subscribed
    | Unsubscribed
    | Ok
    | ErrorMessage
    | Trade
    | Ticker
    | Lifecycle
    | UnknownMessage
)


# --------------------------------------------------------------------------------------------
# Wire structs (what msgspec decodes into; private)
# --------------------------------------------------------------------------------------------
# msgspec checks types in C, strictly: no str->int, no bool->int, no float->int. Unknown keys
# are skipped. Constraints below are the ones that would otherwise need Python code.

# Upper bound: these end up in PostgreSQL bigint columns.
_INT64_MAX: Final = 2**63 - 1
_Sid = Annotated[int, msgspec.Meta(ge=1, le=_INT64_MAX)]
_Count = Annotated[int, msgspec.Meta(ge=0, le=_INT64_MAX)]  # seq, ids
_TsMs = Annotated[int, msgspec.Meta(ge=MIN_TS_MS, lt=MAX_TS_MS)]
_TsS = Annotated[int, msgspec.Meta(ge=MIN_TS_MS // 1000, lt=MAX_TS_MS // 1000)]
_TsText = Annotated[str, msgspec.Meta(max_length=64)]
_Ticker = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_TICKER_CHARS)]
_TradeId = Annotated[str, msgspec.Meta(max_length=MAX_TRADE_ID_CHARS)]
# One level per price: a side can list at most PRICE_SCALE - 1 distinct prices.
_MAX_LEVELS: Final = PRICE_SCALE - 1
_FpLevels = Annotated[list[tuple[str, str]], msgspec.Meta(max_length=_MAX_LEVELS)]
_DollarLevels = Annotated[list[tuple[str, int]], msgspec.Meta(max_length=_MAX_LEVELS)]
_CentLevels = Annotated[list[tuple[int, int]], msgspec.Meta(max_length=_MAX_LEVELS)]


class _Wire(msgspec.Struct, tag_field="type", gc=False):
    pass


class _SnapshotBody(msgspec.Struct, gc=False):
    market_ticker: _Ticker
    market_id: str | None = None
    yes_dollars_fp: _FpLevels | None = None
    no_dollars_fp: _FpLevels | None = None
    yes_dollars: _DollarLevels | None = None
    no_dollars: _DollarLevels | None = None
    yes: _CentLevels | None = None
    no: _CentLevels | None = None


class _SnapshotFrame(_Wire, tag="orderbook_snapshot"):
    sid: _Sid
    seq: _Count
    msg: _SnapshotBody
    sending_ts_ms: _TsMs | None = None
    id: _Count | None = None


class _DeltaBody(msgspec.Struct, gc=False):
    market_ticker: _Ticker
    side: Side
    market_id: str | None = None
    price_dollars: str | None = None
    delta_fp: str | None = None
    price: int | None = None
    delta: int | None = None
    ts_ms: _TsMs | None = None
    ts: _TsText | None = None
    client_order_id: str | None = None


class _DeltaFrame(_Wire, tag="orderbook_delta"):
    sid: _Sid
    seq: _Count
    msg: _DeltaBody
    sending_ts_ms: _TsMs | None = None


class _SubscribedBody(msgspec.Struct, gc=False):
    channel: str
    sid: _Sid


class _SubscribedFrame(_Wire, tag="subscribed"):
    msg: _SubscribedBody
    id: _Count | None = None


class _UnsubscribedFrame(_Wire, tag="unsubscribed"):
    sid: _Sid
    seq: _Count | None = None
    id: _Count | None = None


class _OkMarkets(msgspec.Struct, gc=False):
    market_tickers: Annotated[list[_Ticker], msgspec.Meta(max_length=MAX_LIST_ITEMS)] | None = None


class _SubscriptionItem(msgspec.Struct, gc=False):
    channel: str
    sid: _Sid


class _OkFrame(_Wire, tag="ok"):
    msg: (
        _OkMarkets
        | Annotated[list[_SubscriptionItem], msgspec.Meta(max_length=MAX_LIST_ITEMS)]
        | None
    ) = None
    sid: _Sid | None = None
    seq: _Count | None = None
    id: _Count | None = None
    sending_ts_ms: _TsMs | None = None


class _ErrorBody(msgspec.Struct, gc=False):
    code: int
    msg: str
    market_ticker: str | None = None
    market_id: str | None = None


class _ErrorFrame(_Wire, tag="error"):
    msg: _ErrorBody
    sid: _Sid | None = None
    seq: _Count | None = None
    id: _Count | None = None


class _TradeBody(msgspec.Struct, gc=False):
    trade_id: _TradeId
    market_ticker: _Ticker
    taker_side: Side
    yes_price_dollars: str | None = None
    no_price_dollars: str | None = None
    yes_price: int | None = None
    no_price: int | None = None
    count_fp: str | None = None
    count: int | None = None
    ts: _TsS | None = None
    ts_ms: _TsMs | None = None


class _TradeFrame(_Wire, tag="trade"):
    sid: _Sid
    msg: _TradeBody
    seq: _Count | None = None
    sending_ts_ms: _TsMs | None = None


class _TickerBody(msgspec.Struct, gc=False):
    market_ticker: _Ticker
    market_id: str | None = None
    price_dollars: str | None = None
    yes_bid_dollars: str | None = None
    yes_ask_dollars: str | None = None
    price: int | None = None
    yes_bid: int | None = None
    yes_ask: int | None = None
    volume_fp: str | None = None
    volume: int | None = None
    open_interest_fp: str | None = None
    open_interest: int | None = None
    ts: _TsS | None = None
    ts_ms: _TsMs | None = None


class _TickerFrame(_Wire, tag="ticker"):
    sid: _Sid
    msg: _TickerBody
    sending_ts_ms: _TsMs | None = None


class _TypeOnly(msgspec.Struct, gc=False):
    type: str


class _Envelope(msgspec.Struct, gc=False):
    """Just enough of any frame to report an unknown type and keep its seq."""

    type: str
    sid: _Sid | None = None
    seq: _Count | None = None


_WireFrame = (
    _SnapshotFrame
    | _DeltaFrame
    | _SubscribedFrame
    | _UnsubscribedFrame
    | _OkFrame
    | _ErrorFrame
    | _TradeFrame
    | _TickerFrame
    | lifecycle.MarketFrame
    | lifecycle.EventFrame
    | lifecycle.FeeFrame
)
_KNOWN_TYPES: Final = frozenset(
    cls.__struct_config__.tag
    for cls in _WireFrame.__args__  # type: ignore[attr-defined]
)
_LIFECYCLE_FRAMES: Final = frozenset(lifecycle.WIRE_FRAMES)

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS: Final = timedelta(milliseconds=1)
_WINDOW: Final = "2000-01-01..2100-01-01 UTC"
_TS_FIELDS: Final = frozenset(
    {"ts", "ts_ms", "sending_ts_ms", "open_ts", "close_ts", "determination_ts", "settled_ts"}
)
# msgspec's message for a violated numeric or length bound, e.g.
# "Expected `int` >= 946684800000 - at `$.msg.ts_ms`" or "Expected `array` of length <= 9999".
_BOUND_ERROR = re.compile(
    r"Expected `(?P<type>\w+)` (?:of length )?(?:>=|<=|<|>) ?-?\d+ - at `(?P<path>[^`]*)`"
)


class _Reject(Exception):
    """Raised by the converters; decode() adds the frame type and the raw frame."""

    def __init__(self, message: str, *, code: str = "bad_value") -> None:
        super().__init__(message)
        self.code = code


# --------------------------------------------------------------------------------------------
# Field converters
# --------------------------------------------------------------------------------------------


def _book_price(price_e4: int, side: str, *, yes_scale: bool) -> int:
    """A bid price on the book: strictly inside ($0, $1), NO side back on the NO scale."""
    if yes_scale and side == "no":
        price_e4 = complement_e4(price_e4)
    if not 0 < price_e4 < PRICE_SCALE:
        raise _Reject(_outside_book(side, price_e4))
    return price_e4


def _nul(field: str) -> _Reject:
    # PostgreSQL text cannot hold U+0000: an identifier that would be stored must not either.
    return _Reject(f"{field} contains a NUL character", code="bad_text")


def _outside_book(side: str, price_e4: int) -> str:
    return f"the {side} bid price ${e4_to_dollars(price_e4)} is not strictly between $0 and $1"


def _levels(body: _SnapshotBody, side: Side, *, yes_scale: bool) -> list[Level]:
    """One side of a snapshot from its most precise format, ascending, no duplicate prices."""
    fp = body.yes_dollars_fp if side == "yes" else body.no_dollars_fp
    if fp is not None:
        levels = [(dollars_to_e4(p), count_to_e2(s)) for p, s in fp]
    else:
        dollars = body.yes_dollars if side == "yes" else body.no_dollars
        if dollars is not None:
            levels = [(dollars_to_e4(p), contracts_to_e2(s)) for p, s in dollars]
        else:
            cents = body.yes if side == "yes" else body.no
            if cents is None:
                return []  # the key is absent when that side is empty
            levels = [(cents_to_e4(p), contracts_to_e2(s)) for p, s in cents]
    levels = [(_book_price(p, side, yes_scale=yes_scale), s) for p, s in levels]
    # With use_yes_price the NO side arrives in descending NO price; sorting an already
    # ascending list is linear, so sort always rather than trust the order.
    levels.sort()
    for i in range(1, len(levels)):
        if levels[i][0] == levels[i - 1][0]:
            raise _Reject(f"the {side} side lists price ${e4_to_dollars(levels[i][0])} twice")
    return levels


def _rfc3339_to_ms(text: str) -> int:
    """``"2026-10-08T02:47:03.348Z"`` -> Unix ms; any number of fractional digits."""
    original = text
    dot = text.find(".")
    if dot != -1:
        # Keep 3 fractional digits: the parser would round sub-microsecond digits, which
        # could push a time into the next millisecond; truncation keeps it in its own.
        end = dot + 1
        while end < len(text) and "0" <= text[end] <= "9":
            end += 1
        if end - dot > 4:
            text = text[: dot + 4] + text[end:]
    try:
        moment = msgspec.convert(text, datetime)
    except msgspec.ValidationError:
        raise _Reject(f"ts {original!r} is not an RFC 3339 timestamp") from None
    if moment.tzinfo is None:
        raise _Reject(f"ts {original!r} has no UTC offset")
    ts_ms = (moment - _EPOCH) // _ONE_MS
    if not MIN_TS_MS <= ts_ms < MAX_TS_MS:
        raise _Reject(
            f"ts {original!r} is outside the accepted window {_WINDOW}",
            code="timestamp_out_of_range",
        )
    return ts_ms


def _optional_price(dollars: str | None, cents: int | None) -> int | None:
    if dollars is not None:
        return dollars_to_e4(dollars)
    if cents is not None:
        return cents_to_e4(cents)
    return None


def _optional_size(fp: str | None, contracts: int | None) -> int | None:
    if fp is not None:
        return count_to_e2(fp)
    if contracts is not None:
        return contracts_to_e2(contracts)
    return None


def _seconds_or_ms(ts_ms: int | None, ts_s: int | None) -> int | None:
    if ts_ms is not None:
        return ts_ms
    return None if ts_s is None else ts_s * 1000


# --------------------------------------------------------------------------------------------
# Decoder
# --------------------------------------------------------------------------------------------


class FrameDecoder:
    """Decodes raw server frames of one connection into typed messages.

    ``use_yes_price`` must match what the orderbook subscription asked for (protocol §4):
    with True, NO-side prices arrive on the YES scale and are converted back here.
    One decoder is cheap; it keeps no per-frame state and is safe to reuse forever.
    """

    __slots__ = ("_decoder", "_envelope", "_handlers", "_type_only", "use_yes_price")

    def __init__(self, *, use_yes_price: bool = False) -> None:
        self.use_yes_price = use_yes_price
        self._decoder = msgspec.json.Decoder(_WireFrame)
        self._envelope = msgspec.json.Decoder(_Envelope)
        self._type_only = msgspec.json.Decoder(_TypeOnly)
        self._handlers = {
            _SnapshotFrame: self._snapshot,
            _SubscribedFrame: _subscribed,
            _UnsubscribedFrame: _unsubscribed,
            _OkFrame: _ok,
            _ErrorFrame: _error,
            _TradeFrame: _trade,
            _TickerFrame: _ticker,
        }

    def decode(self, raw: bytes | str) -> Message:
        """Parse one frame (bytes or text) into a message; raises :class:`ProtocolError`."""
        try:
            frame = self._decoder.decode(raw)
        except (msgspec.MsgspecError, UnicodeError, RecursionError, TypeError) as exc:
            return self._fallback(raw, exc)
        # msgspec validates UTF-8 only inside the strings it keeps; an ASCII check costs a
        # few ns and sends the rare non-ASCII frame through a full validation.
        if type(raw) is not str and not (type(raw) is bytes and raw.isascii()):
            _require_utf8(raw)
        try:
            if type(frame) is _DeltaFrame:  # the hot path: checked first, kept inline
                m = frame.msg
                if m.price_dollars is not None:
                    price_e4 = dollars_to_e4(m.price_dollars)
                elif m.price is not None:
                    price_e4 = cents_to_e4(m.price)
                else:
                    raise _Reject("it has neither price_dollars nor price", code="missing_field")
                if m.delta_fp is not None:
                    delta_e2 = count_to_e2(m.delta_fp, signed=True)
                elif m.delta is not None:
                    delta_e2 = contracts_to_e2(m.delta, signed=True)
                else:
                    raise _Reject("it has neither delta_fp nor delta", code="missing_field")
                side = m.side
                if side == "no" and self.use_yes_price:
                    price_e4 = complement_e4(price_e4)
                if not 0 < price_e4 < PRICE_SCALE:
                    raise _Reject(_outside_book(side, price_e4))
                ts_ms = m.ts_ms
                if ts_ms is None and m.ts is not None:
                    ts_ms = _rfc3339_to_ms(m.ts)
                if "\x00" in m.market_ticker:
                    raise _nul("market_ticker")
                return OrderbookDelta(
                    frame.sid,
                    frame.seq,
                    m.market_ticker,
                    m.market_id,
                    side,
                    price_e4,
                    delta_e2,
                    ts_ms,
                    frame.sending_ts_ms,
                    m.client_order_id,
                )
            if type(frame) in _LIFECYCLE_FRAMES:
                return lifecycle.convert(frame, raw)
            return self._handlers[type(frame)](frame)
        except (_Reject, LifecycleReject, UnitError) as exc:
            raise ProtocolError(
                f"{frame.__struct_config__.tag} frame rejected: {exc}", raw, code=exc.code
            ) from None

    def _snapshot(self, frame: _SnapshotFrame) -> OrderbookSnapshot:
        body = frame.msg
        if "\x00" in body.market_ticker:
            raise _nul("market_ticker")
        return OrderbookSnapshot(
            frame.sid,
            frame.seq,
            body.market_ticker,
            body.market_id,
            _levels(body, "yes", yes_scale=self.use_yes_price),
            _levels(body, "no", yes_scale=self.use_yes_price),
            frame.sending_ts_ms,
            frame.id,
        )

    def _fallback(self, raw: bytes | str, exc: BaseException) -> UnknownMessage:
        """The typed decode failed: an unknown ``type`` is fine, anything else is an error."""
        if isinstance(exc, UnicodeError):
            raise ProtocolError(
                f"the frame is not valid UTF-8 ({exc.reason})", raw, code="not_utf8"
            ) from None
        if isinstance(exc, RecursionError):
            raise _too_deep(raw) from None
        if isinstance(exc, TypeError):
            raise ProtocolError(
                f"a frame must be bytes or str, not {type(raw).__name__}", raw, code="not_a_frame"
            ) from None
        # ValidationError subclasses DecodeError: only the latter means "not JSON".
        if not isinstance(exc, msgspec.ValidationError):
            raise ProtocolError(
                f"the frame is not valid JSON ({exc})", raw, code="not_json"
            ) from None
        # Everything below parses the frame again with schemas that skip unknown keys: bound
        # the nesting first, so that no skip can recurse deeply (explicit, not the stack's
        # limit), then still treat a RecursionError as the same rejection.
        if _nests_deeper_than(raw, MAX_NESTING):
            raise _too_deep(raw) from None
        try:
            kind = self._type_only.decode(raw).type
        except RecursionError:
            raise _too_deep(raw) from None
        except msgspec.MsgspecError as type_exc:
            raise ProtocolError(
                f"the frame is not a Kalshi message ({type_exc})", raw, code="not_a_message"
            ) from None
        if kind in _KNOWN_TYPES:
            raise _field_error(kind, exc, raw) from None
        try:
            envelope = self._envelope.decode(raw)
        except RecursionError:
            raise _too_deep(raw) from None
        except msgspec.MsgspecError as envelope_exc:
            raise _field_error(kind, envelope_exc, raw) from None
        if type(raw) is not str:
            _require_utf8(raw)
        return UnknownMessage(envelope.type, envelope.sid, envelope.seq)


def _too_deep(raw: bytes | str) -> ProtocolError:
    return ProtocolError(
        f"the frame nests JSON more than {MAX_NESTING} levels deep", raw, code="too_deep"
    )


def _field_error(kind: str, exc: BaseException, raw: bytes | str) -> ProtocolError:
    """A schema violation, said plainly when it is one of the explicit bounds."""
    text = str(exc)
    bound = _BOUND_ERROR.search(text)
    if bound is not None:
        path = bound.group("path")
        field = path.rsplit(".", 1)[-1]
        if field in _TS_FIELDS and bound.group("type") == "int":
            return ProtocolError(
                f"{kind} frame rejected: {path[2:]} is outside the accepted window {_WINDOW} "
                f"(Unix ms {MIN_TS_MS}..{MAX_TS_MS}, seconds for ts and lifecycle *_ts)",
                raw,
                code="timestamp_out_of_range",
            )
        if "of length" in text:
            return ProtocolError(f"{kind} frame rejected: {text}", raw, code="too_long")
    return ProtocolError(f"{kind} frame rejected: {text}", raw, code="invalid_field")


# Every byte except those that matter for nesting: brackets, and the quotes and backslashes
# that delimit strings.
_NOT_STRUCTURE = bytes(range(256)).translate(None, b'[]{}"\\')
_BRACKETS_ONLY = bytes.maketrans(b"{}", b"[]")


def _nests_deeper_than(raw: bytes | str, limit: int) -> bool:
    """Whether the JSON text ``raw`` nests arrays/objects more than ``limit`` levels.

    C-speed string operations only (no per-byte Python loop): frames reach this check on the
    rare generic path, but a hostile peer can make them megabytes long. Strings are removed
    first (so brackets inside them do not count), then innermost ``[]`` pairs are removed
    once per level. Unbalanced text is left to the parser to reject.
    """
    data = raw.encode("utf-8", "surrogatepass") if type(raw) is str else bytes(raw)
    if data.count(b"[") + data.count(b"{") <= limit:
        return False  # the common case: few brackets at all
    # Escapes: two backslashes are one escaped backslash (pairs match left to right, as the
    # parser reads them); after those, a backslash escapes the next byte, and only an escaped
    # quote matters here.
    data = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    data = data.translate(None, _NOT_STRUCTURE).replace(b"\\", b"")
    # Quotes now alternate open/close: even pieces are outside strings.
    data = b"".join(data.split(b'"')[::2]).translate(_BRACKETS_ONLY)
    # Each pass removes every innermost "[]", lowering the height of a balanced text by one;
    # a run of n "[" left after k passes proves a depth of at least n + k. The run test is
    # what keeps a deep spine (megabytes of "[") from costing one full pass per level.
    for done in range(limit):
        if not data:
            return False
        if data.find(b"[" * (limit - done + 1)) != -1:
            return True
        shorter = data.replace(b"[]", b"")
        if len(shorter) == len(data):
            return False  # unbalanced: not JSON, the parser says so
        data = shorter
    return b"[]" in data


def _require_utf8(raw: bytes | bytearray | memoryview) -> None:
    try:
        bytes(raw).decode()
    except UnicodeDecodeError as exc:
        raise ProtocolError(
            f"the frame is not valid UTF-8 ({exc.reason})", raw, code="not_utf8"
        ) from None


def _subscribed(frame: _SubscribedFrame) -> Subscribed:
    return Subscribed(frame.id, frame.msg.channel, frame.msg.sid)


def _unsubscribed(frame: _UnsubscribedFrame) -> Unsubscribed:
    return Unsubscribed(frame.id, frame.sid, frame.seq)


def _ok(frame: _OkFrame) -> Ok:
    body = frame.msg
    if isinstance(body, list):
        subscriptions = [SubscriptionInfo(item.channel, item.sid) for item in body]
        return Ok(frame.id, frame.sid, frame.seq, None, subscriptions, frame.sending_ts_ms)
    tickers = None if body is None else body.market_tickers
    return Ok(frame.id, frame.sid, frame.seq, tickers, None, frame.sending_ts_ms)


def _error(frame: _ErrorFrame) -> ErrorMessage:
    body = frame.msg
    return ErrorMessage(
        frame.id, frame.sid, body.code, body.msg, body.market_ticker, body.market_id, frame.seq
    )


def _trade(frame: _TradeFrame) -> Trade:
    body = frame.msg
    if "\x00" in body.market_ticker:
        raise _nul("market_ticker")
    if "\x00" in body.trade_id:
        raise _nul("trade_id")
    yes_price_e4 = _optional_price(body.yes_price_dollars, body.yes_price)
    no_price_e4 = _optional_price(body.no_price_dollars, body.no_price)
    count_e2 = _optional_size(body.count_fp, body.count)
    if yes_price_e4 is None or no_price_e4 is None:
        raise _Reject("it lacks the yes or no price", code="missing_field")
    if count_e2 is None:
        raise _Reject("it has neither count_fp nor count", code="missing_field")
    return Trade(
        frame.sid,
        frame.seq,
        body.trade_id,
        body.market_ticker,
        yes_price_e4,
        no_price_e4,
        count_e2,
        body.taker_side,
        _seconds_or_ms(body.ts_ms, body.ts),
        frame.sending_ts_ms,
    )


def _ticker(frame: _TickerFrame) -> Ticker:
    body = frame.msg
    return Ticker(
        frame.sid,
        body.market_ticker,
        body.market_id,
        _optional_price(body.price_dollars, body.price),
        _optional_price(body.yes_bid_dollars, body.yes_bid),
        _optional_price(body.yes_ask_dollars, body.yes_ask),
        _optional_size(body.volume_fp, body.volume),
        _optional_size(body.open_interest_fp, body.open_interest),
        _seconds_or_ms(body.ts_ms, body.ts),
        frame.sending_ts_ms,
    )


_DEFAULT_DECODERS: dict[bool, FrameDecoder] = {}


def parse_frame(raw: bytes | str, *, use_yes_price: bool = False) -> Message:
    """Convenience wrapper around a shared :class:`FrameDecoder` per ``use_yes_price``."""
    decoder = _DEFAULT_DECODERS.get(use_yes_price)
    if decoder is None:
        decoder = _DEFAULT_DECODERS[use_yes_price] = FrameDecoder(use_yes_price=use_yes_price)
    return decoder.decode(raw)
