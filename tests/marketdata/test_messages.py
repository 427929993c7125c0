"""Frame parsing: every example of kalshi-protocol.md, every captured frame, clear rejects."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from apps.marketdata.kalshi.messages import (
    RAW_EXCERPT_BYTES,
    ErrorMessage,
    FrameDecoder,
    Lifecycle,
    Ok,
    OrderbookDelta,
    OrderbookSnapshot,
    ProtocolError,
    Subscribed,
    SubscriptionInfo,
    Ticker,
    Trade,
    UnknownMessage,
    Unsubscribed,
    parse_frame,
)
from apps.marketdata.kalshi.units import UnitError

CAPTURED = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "kalshi-captured"
MLB = "KXMLBGAME-26OCT072000TBNYY-NYY"
MLB_ID = "01a0fa9c-5438-73af-9fe5-4b0acc58ab41"

# -- Examples quoted from kalshi-protocol.md (byte for byte where the doc gives a full frame) --

SUBSCRIBED = '{"id":1,"type":"subscribed","msg":{"channel":"orderbook_delta","sid":1}}'
OK_MERGED = (
    '{"type":"ok","id":2,"sid":1,"seq":2,"msg":{"market_tickers":'
    '["KXFEDDECISION-26SEP-H0","KXGOVTSHUTDOWN-26OCT01"]}}'
)
UNSUBSCRIBED = '{"id":124,"sid":2,"seq":7,"type":"unsubscribed"}'
OK_UPDATE = (
    '{"id":125,"sid":1,"seq":222,"type":"ok","msg":{"market_tickers":["OLD-MKT","NEW-MKT"]}}'
)
OK_LIST = (
    '{"id":3,"type":"ok","msg":[{"channel":"orderbook_delta","sid":1},'
    '{"channel":"ticker","sid":2}]}'
)
ERROR = '{"id":123,"type":"error","msg":{"code":6,"msg":"Already subscribed"}}'
SNAPSHOT = """{"type":"orderbook_snapshot","sid":1,"seq":1,"msg":{"market_ticker":"KXMLBGAME-26OCT072000TBNYY-NYY",
 "market_id":"01a0fa9c-5438-73af-9fe5-4b0acc58ab41",
 "yes_dollars_fp":[["0.0100","1210036.64"],["0.0200","276208.92"],["0.2900","79101.83"],["0.3000","109706.66"]],
 "no_dollars_fp":[["0.0100","1823233.16"],["0.6800","111986.51"],["0.6900","136508.49"]]},"sending_ts_ms":1791427623341}"""  # noqa: E501 - quoted verbatim from the protocol notes
DELTA = """{"type":"orderbook_delta","sid":1,"seq":7,"msg":{"market_ticker":"KXMLBGAME-26OCT072000TBNYY-NYY",
 "market_id":"01a0fa9c-5438-73af-9fe5-4b0acc58ab41","price_dollars":"0.1700","delta_fp":"-139.00",
 "side":"yes","ts":"2026-10-08T02:47:03.348Z","ts_ms":1791427623348},"sending_ts_ms":1791427623351}"""  # noqa: E501 - quoted verbatim from the protocol notes
# The get_snapshot answer carries the command id and the sid's next seq (§3).
GET_SNAPSHOT_REPLY = (
    '{"type":"orderbook_snapshot","id":3,"sid":1,"seq":4,"msg":{"market_ticker":"NEW-MKT",'
    '"market_id":"9b0f6b43-5b68-4f9f-9f02-9a2d1b8ac1a1","yes_dollars_fp":[["0.4500","12.00"]]}}'
)
# use_yes_price=true: NO levels on the YES scale, descending, best (lowest YES ask) last.
YES_PRICE_SNAPSHOT = (
    '{"type":"orderbook_snapshot","sid":1,"seq":1,"msg":{"market_ticker":"KXMLBGAME-26OCT072000TBNYY-NYY",'
    '"market_id":"01a0fa9c-5438-73af-9fe5-4b0acc58ab41",'
    '"yes_dollars_fp":[["0.6900","10.00"],["0.7000","20.00"]],'
    '"no_dollars_fp":[["0.9900","5.00"],["0.8000","1.50"],["0.7100","205243.37"]]}}'
)
YES_PRICE_DELTA = (
    '{"type":"orderbook_delta","sid":1,"seq":2,"msg":{"market_ticker":"KXMLBGAME-26OCT072000TBNYY-NYY",'
    '"market_id":"01a0fa9c-5438-73af-9fe5-4b0acc58ab41","price_dollars":"0.7100","delta_fp":"3.00",'
    '"side":"no","ts_ms":1791427623400}}'
)
# Format history (§4 table), one snapshot and one delta per row.
ORIGINAL_SNAPSHOT = (
    '{"type":"orderbook_snapshot","sid":1,"seq":2,"msg":{"market_ticker":"FED-23DEC-T3.00",'
    '"yes":[[8,300],[22,333]],"no":[[54,20],[56,146]]}}'
)
ORIGINAL_DELTA = (
    '{"type":"orderbook_delta","sid":1,"seq":3,"msg":{"market_ticker":"FED-23DEC-T3.00",'
    '"price":96,"delta":-54,"side":"yes"}}'
)
DOLLARS_SNAPSHOT = (
    '{"type":"orderbook_snapshot","sid":1,"seq":2,"msg":{"market_ticker":"FED-23DEC-T3.00",'
    '"market_id":"9b0f6b43-5b68-4f9f-9f02-9a2d1b8ac1a1","yes":[[8,300]],"no":[[54,20]],'
    '"yes_dollars":[["0.080",300]],"no_dollars":[["0.540",20]]}}'
)
DOLLARS_DELTA = (
    '{"type":"orderbook_delta","sid":1,"seq":3,"msg":{"market_ticker":"FED-23DEC-T3.00",'
    '"market_id":"9b0f6b43-5b68-4f9f-9f02-9a2d1b8ac1a1","price":96,"price_dollars":"0.960",'
    '"delta":-54,"side":"no","ts":"2022-11-22T20:44:01Z","client_order_id":"abc-123"}}'
)
# 2026-01-29 to the removal of integer fields: all three formats side by side. The fixed-point
# size (300.50) differs from the legacy integer on purpose: the most precise one must win.
TRANSITION_SNAPSHOT = (
    '{"type":"orderbook_snapshot","sid":1,"seq":2,"msg":{"market_ticker":"KXBTCD-26FEB1217-T67749.99",'
    '"market_id":"9b0f6b43-5b68-4f9f-9f02-9a2d1b8ac1a1",'
    '"yes":[[8,300]],"yes_dollars":[["0.080",300]],"yes_dollars_fp":[["0.0800","300.50"]],'
    '"no":[[54,20]],"no_dollars":[["0.540",20]],"no_dollars_fp":[["0.5400","20.00"]]}}'
)
TRANSITION_DELTA = (
    '{"type":"orderbook_delta","sid":1,"seq":3,"msg":{"market_ticker":"KXBTCD-26FEB1217-T67749.99",'
    '"market_id":"9b0f6b43-5b68-4f9f-9f02-9a2d1b8ac1a1","price":7,"price_dollars":"0.0650",'
    '"delta":-54,"delta_fp":"-54.25","side":"yes","ts":"2026-02-12T12:06:14.54Z"}}'
)
TRADE = """{"type":"trade","sid":2,"seq":133,"msg":{"trade_id":"07257cc9-9041-866a-254b-a961c3a26cf2",
 "market_ticker":"KXMLBGAME-26OCT072000TBNYY-TB","yes_price_dollars":"0.6900","no_price_dollars":"0.3100",
 "count_fp":"3.14","taker_side":"no","taker_outcome_side":"no","taker_book_side":"ask",
 "is_block_trade":false,"ts":1791427634,"ts_ms":1791427634402},"sending_ts_ms":1791427634406}"""  # noqa: E501 - quoted verbatim from the protocol notes
TICKER = """{"type":"ticker","sid":11,"msg":{"market_ticker":"FED-23DEC-T3.00","market_id":"9b0f6b43-5b68-4f9f-9f02-9a2d1b8ac1a1",
 "price_dollars":"0.480","yes_bid_dollars":"0.450","yes_ask_dollars":"0.530","volume_fp":"33896.00",
 "open_interest_fp":"20422.00","dollar_volume":16948,"dollar_open_interest":10211,"yes_bid_size_fp":"300.00",
 "yes_ask_size_fp":"150.00","last_trade_size_fp":"25.00","ts":1669149841,"ts_ms":1669149841000,"time":"2022-11-22T20:44:01Z"}}"""  # noqa: E501 - quoted verbatim from the protocol notes
FILL = """{"type":"fill","sid":13,"msg":{"trade_id":"d91bc706-ee49-470d-82d8-11418bda6fed","order_id":"ee587a1c-8b87-4dcf-b721-9f6f790619fa",
 "market_ticker":"HIGHNY-22DEC23-B53.5","is_taker":true,"side":"yes","yes_price_dollars":"0.750","count_fp":"278.00",
 "action":"buy","ts":1671899397,"ts_ms":1671899397000,"post_position_fp":"500.00","purchased_side":"yes","subaccount":3}}"""  # noqa: E501 - quoted verbatim from the protocol notes
LIFECYCLE = """{"type":"market_lifecycle_v2","sid":13,"msg":{"market_ticker":"INXD-23SEP14-B4487","event_type":"created",
 "open_ts":1694635200,"close_ts":1694721600,"additional_metadata":{"name":"S&P 500 daily return on Sep 14",
 "event_ticker":"INXD-23SEP14","strike_type":"greater","floor_strike":4487,"can_close_early":true}}}"""  # noqa: E501 - quoted verbatim from the protocol notes

EXAMPLE_FRAMES = [
    SUBSCRIBED,
    OK_MERGED,
    UNSUBSCRIBED,
    OK_UPDATE,
    OK_LIST,
    ERROR,
    SNAPSHOT,
    DELTA,
    GET_SNAPSHOT_REPLY,
    YES_PRICE_SNAPSHOT,
    YES_PRICE_DELTA,
    ORIGINAL_SNAPSHOT,
    ORIGINAL_DELTA,
    DOLLARS_SNAPSHOT,
    DOLLARS_DELTA,
    TRANSITION_SNAPSHOT,
    TRANSITION_DELTA,
    TRADE,
    TICKER,
    FILL,
    LIFECYCLE,
]


def captured_frames() -> list[bytes]:
    """Every line of the real captures; skipped only outside CI when the folder is absent."""
    if not CAPTURED.is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but the captured frames folder {CAPTURED} is missing")
        pytest.skip(f"the captured frames folder {CAPTURED} is absent")
    frames = [
        line
        for path in sorted(CAPTURED.glob("*.jsonl"))
        for line in path.read_bytes().splitlines()
        if line.strip()
    ]
    assert frames, f"no frames found in {CAPTURED}"
    return frames


@pytest.fixture
def decoder() -> FrameDecoder:
    return FrameDecoder()


# -- §3 acks and errors ----------------------------------------------------------------------


def test_it_parses_the_subscribed_ack(decoder: FrameDecoder) -> None:
    assert decoder.decode(SUBSCRIBED) == Subscribed(id=1, channel="orderbook_delta", sid=1)


def test_it_parses_the_ok_of_a_merged_subscribe_with_its_seq(decoder: FrameDecoder) -> None:
    assert decoder.decode(OK_MERGED) == Ok(
        id=2,
        sid=1,
        seq=2,
        market_tickers=["KXFEDDECISION-26SEP-H0", "KXGOVTSHUTDOWN-26OCT01"],
        subscriptions=None,
    )


def test_it_parses_the_unsubscribed_ack_with_its_seq(decoder: FrameDecoder) -> None:
    assert decoder.decode(UNSUBSCRIBED) == Unsubscribed(id=124, sid=2, seq=7)


def test_it_parses_the_ok_of_update_subscription(decoder: FrameDecoder) -> None:
    message = decoder.decode(OK_UPDATE)
    assert message == Ok(id=125, sid=1, seq=222, market_tickers=["OLD-MKT", "NEW-MKT"])


def test_it_parses_the_list_subscriptions_answer(decoder: FrameDecoder) -> None:
    assert decoder.decode(OK_LIST) == Ok(
        id=3,
        sid=None,
        seq=None,
        market_tickers=None,
        subscriptions=[SubscriptionInfo("orderbook_delta", 1), SubscriptionInfo("ticker", 2)],
    )


@pytest.mark.parametrize(
    "frame",
    ['{"id":4,"type":"ok"}', '{"id":4,"type":"ok","msg":{}}', '{"id":4,"type":"ok","msg":null}'],
)
def test_an_ok_without_a_market_list_has_none(decoder: FrameDecoder, frame: str) -> None:
    # skip_ticker_ack leaves the market list out.
    assert decoder.decode(frame) == Ok(id=4, sid=None, seq=None)


def test_it_parses_an_error(decoder: FrameDecoder) -> None:
    assert decoder.decode(ERROR) == ErrorMessage(
        id=123, sid=None, code=6, message="Already subscribed", market_ticker=None
    )


def test_it_parses_an_unsolicited_error_with_sid_and_market(decoder: FrameDecoder) -> None:
    frame = (
        '{"type":"error","sid":1,"msg":{"code":25,"msg":"Subscription buffer overflow",'
        '"market_ticker":"NEW-MKT","market_id":"9b0f6b43"},"sending_ts_ms":5}'
    )
    assert decoder.decode(frame) == ErrorMessage(
        id=None,
        sid=1,
        code=25,
        message="Subscription buffer overflow",
        market_ticker="NEW-MKT",
        market_id="9b0f6b43",
    )


# -- §4 orderbook, every format ------------------------------------------------------------


def test_it_parses_the_current_snapshot_frame(decoder: FrameDecoder) -> None:
    assert decoder.decode(SNAPSHOT) == OrderbookSnapshot(
        sid=1,
        seq=1,
        market_ticker=MLB,
        market_id=MLB_ID,
        yes=[(100, 121003664), (200, 27620892), (2900, 7910183), (3000, 10970666)],
        no=[(100, 182323316), (6800, 11198651), (6900, 13650849)],
        sending_ts_ms=1791427623341,
        id=None,
    )


def test_it_parses_the_current_delta_frame(decoder: FrameDecoder) -> None:
    assert decoder.decode(DELTA) == OrderbookDelta(
        sid=1,
        seq=7,
        market_ticker=MLB,
        market_id=MLB_ID,
        side="yes",
        price_e4=1700,
        delta_e2=-13900,
        ts_ms=1791427623348,
        sending_ts_ms=1791427623351,
        client_order_id=None,
    )


def test_bytes_and_text_frames_parse_the_same(decoder: FrameDecoder) -> None:
    for frame in EXAMPLE_FRAMES:
        assert decoder.decode(frame.encode()) == decoder.decode(frame)
    assert decoder.decode(bytearray(DELTA.encode())) == decoder.decode(memoryview(DELTA.encode()))


def test_the_get_snapshot_reply_keeps_its_command_id_and_an_absent_side_is_empty(
    decoder: FrameDecoder,
) -> None:
    message = decoder.decode(GET_SNAPSHOT_REPLY)
    assert isinstance(message, OrderbookSnapshot)
    assert (message.id, message.sid, message.seq) == (3, 1, 4)
    assert message.yes == [(4500, 1200)]
    assert message.no == []


def test_a_snapshot_with_no_sides_at_all_is_an_empty_book(decoder: FrameDecoder) -> None:
    frame = (
        '{"type":"orderbook_snapshot","sid":1,"seq":1,'
        '"msg":{"market_ticker":"A-B","market_id":"x"}}'
    )
    message = decoder.decode(frame)
    assert isinstance(message, OrderbookSnapshot)
    assert message.yes == message.no == []


def test_use_yes_price_no_levels_come_back_as_ascending_no_bids() -> None:
    message = FrameDecoder(use_yes_price=True).decode(YES_PRICE_SNAPSHOT)
    assert isinstance(message, OrderbookSnapshot)
    assert message.yes == [(6900, 1000), (7000, 2000)]
    assert message.no == [(100, 500), (2000, 150), (2900, 20524337)]
    # Best YES ask = 1 - best NO bid = 0.71, as Kalshi sent it on the YES scale.
    assert 10_000 - message.no[-1][0] == 7100


def test_use_yes_price_no_deltas_come_back_in_no_prices() -> None:
    message = FrameDecoder(use_yes_price=True).decode(YES_PRICE_DELTA)
    assert isinstance(message, OrderbookDelta)
    assert (message.side, message.price_e4, message.delta_e2) == ("no", 2900, 300)


def test_use_yes_price_leaves_the_yes_side_alone() -> None:
    yes_scale = FrameDecoder(use_yes_price=True)
    assert yes_scale.decode(DELTA) == FrameDecoder().decode(DELTA)


def test_without_use_yes_price_the_no_side_is_taken_as_is(decoder: FrameDecoder) -> None:
    message = decoder.decode(YES_PRICE_DELTA)
    assert isinstance(message, OrderbookDelta)
    assert message.price_e4 == 7100


def test_it_parses_the_original_integer_cent_formats(decoder: FrameDecoder) -> None:
    snapshot = decoder.decode(ORIGINAL_SNAPSHOT)
    assert isinstance(snapshot, OrderbookSnapshot)
    assert snapshot.market_id is None
    assert snapshot.yes == [(800, 30000), (2200, 33300)]
    assert snapshot.no == [(5400, 2000), (5600, 14600)]
    delta = decoder.decode(ORIGINAL_DELTA)
    assert isinstance(delta, OrderbookDelta)
    assert (delta.side, delta.price_e4, delta.delta_e2, delta.ts_ms) == ("yes", 9600, -5400, None)


def test_it_parses_the_2025_dollar_formats(decoder: FrameDecoder) -> None:
    snapshot = decoder.decode(DOLLARS_SNAPSHOT)
    assert isinstance(snapshot, OrderbookSnapshot)
    assert snapshot.yes == [(800, 30000)]
    assert snapshot.no == [(5400, 2000)]
    delta = decoder.decode(DOLLARS_DELTA)
    assert isinstance(delta, OrderbookDelta)
    assert (delta.side, delta.price_e4, delta.delta_e2) == ("no", 9600, -5400)
    assert delta.ts_ms == 1669149841000  # from the RFC 3339 ts, no ts_ms in this era
    assert delta.client_order_id == "abc-123"


def test_the_most_precise_field_wins_when_formats_overlap(decoder: FrameDecoder) -> None:
    snapshot = decoder.decode(TRANSITION_SNAPSHOT)
    assert isinstance(snapshot, OrderbookSnapshot)
    assert snapshot.yes == [(800, 30050)]
    assert snapshot.no == [(5400, 2000)]
    delta = decoder.decode(TRANSITION_DELTA)
    assert isinstance(delta, OrderbookDelta)
    assert (delta.price_e4, delta.delta_e2) == (650, -5425)


@pytest.mark.parametrize(
    ("ts", "ts_ms"),
    [
        ("2026-10-08T02:47:03.348Z", 1791427623348),
        ("2026-10-08T02:47:14.54Z", 1791427634540),
        ("2026-10-08T02:47:14Z", 1791427634000),
        ("2026-10-08T02:47:14.5409999Z", 1791427634540),
        ("2026-10-08T04:47:14.54+02:00", 1791427634540),
    ],
)
def test_an_rfc3339_ts_gives_ts_ms_whatever_its_fractional_digits(
    decoder: FrameDecoder, ts: str, ts_ms: int
) -> None:
    frame = json.loads(DELTA)
    del frame["msg"]["ts_ms"]
    frame["msg"]["ts"] = ts
    message = decoder.decode(json.dumps(frame))
    assert isinstance(message, OrderbookDelta)
    assert message.ts_ms == ts_ms


def test_ts_ms_wins_over_ts_when_both_are_present(decoder: FrameDecoder) -> None:
    frame = json.loads(DELTA)
    frame["msg"]["ts"] = "2020-01-01T00:00:00Z"
    message = decoder.decode(json.dumps(frame))
    assert isinstance(message, OrderbookDelta)
    assert message.ts_ms == 1791427623348


def test_unknown_keys_are_ignored_everywhere(decoder: FrameDecoder) -> None:
    frame = json.loads(DELTA)
    frame["new_top_level"] = {"nested": [1, 2, {"x": None}]}
    frame["msg"]["subaccount"] = 3
    frame["msg"]["client_order_id"] = "mine"
    message = decoder.decode(json.dumps(frame))
    assert isinstance(message, OrderbookDelta)
    assert message.client_order_id == "mine"
    assert message.price_e4 == 1700


# -- §5 other channels ---------------------------------------------------------------------


def test_it_parses_the_trade_example(decoder: FrameDecoder) -> None:
    assert decoder.decode(TRADE) == Trade(
        sid=2,
        seq=133,
        trade_id="07257cc9-9041-866a-254b-a961c3a26cf2",
        market_ticker="KXMLBGAME-26OCT072000TBNYY-TB",
        yes_price_e4=6900,
        no_price_e4=3100,
        count_e2=314,
        taker_side="no",
        ts_ms=1791427634402,
        sending_ts_ms=1791427634406,
    )


def test_it_parses_the_ticker_example(decoder: FrameDecoder) -> None:
    assert decoder.decode(TICKER) == Ticker(
        sid=11,
        market_ticker="FED-23DEC-T3.00",
        market_id="9b0f6b43-5b68-4f9f-9f02-9a2d1b8ac1a1",
        price_e4=4800,
        yes_bid_e4=4500,
        yes_ask_e4=5300,
        volume_e2=3389600,
        open_interest_e2=2042200,
        ts_ms=1669149841000,
    )


@pytest.mark.parametrize(("frame", "kind", "sid"), [(FILL, "fill", 13)])
def test_channels_it_does_not_model_come_back_as_unknown_messages(
    decoder: FrameDecoder, frame: str, kind: str, sid: int
) -> None:
    assert decoder.decode(frame) == UnknownMessage(type=kind, sid=sid, seq=None)


def test_the_documented_lifecycle_example_decodes_with_its_exact_text(
    decoder: FrameDecoder,
) -> None:
    message = decoder.decode(LIFECYCLE)
    assert isinstance(message, Lifecycle)
    assert (message.sid, message.seq, message.kind) == (13, None, "market_lifecycle_v2")
    assert (message.event_type, message.market_ticker) == ("created", "INXD-23SEP14-B4487")
    assert message.event_ticker == "INXD-23SEP14" and message.can_close_early is True
    assert (message.open_ts_ms, message.close_ts_ms) == (1694635200000, 1694721600000)
    assert message.ts_ms == 1694635200000  # a "created" message is about the open time
    assert message.raw == LIFECYCLE  # lossless: the frame as received
    assert message.result == "" and message.settlement_value_e4 is None


def test_an_unknown_type_keeps_its_seq_so_it_still_counts(decoder: FrameDecoder) -> None:
    frame = '{"type":"orderbook_summary","sid":4,"seq":77,"msg":{"whatever":[1]}}'
    assert decoder.decode(frame) == UnknownMessage(type="orderbook_summary", sid=4, seq=77)


def test_every_message_has_sid_and_seq_attributes(decoder: FrameDecoder) -> None:
    for frame in EXAMPLE_FRAMES:
        message = decoder.decode(frame)
        assert message.sid is None or message.sid >= 1
        assert message.seq is None or message.seq >= 0


def test_messages_are_frozen(decoder: FrameDecoder) -> None:
    message = decoder.decode(DELTA)
    with pytest.raises(AttributeError):
        message.price_e4 = 1  # type: ignore[misc]


def test_parse_frame_is_the_decoder_in_one_call() -> None:
    assert parse_frame(DELTA) == FrameDecoder().decode(DELTA)
    assert parse_frame(YES_PRICE_DELTA, use_yes_price=True).price_e4 == 2900  # type: ignore[union-attr]
    assert parse_frame(YES_PRICE_DELTA).price_e4 == 7100  # type: ignore[union-attr]


# -- real captured frames -------------------------------------------------------------------


def test_every_captured_frame_parses(decoder: FrameDecoder) -> None:
    frames = captured_frames()
    kinds = {}
    for frame in frames:
        message = decoder.decode(frame)
        assert not isinstance(message, UnknownMessage), frame[:120]
        kinds[type(message)] = kinds.get(type(message), 0) + 1
    assert kinds.get(Trade, 0) >= 1
    assert kinds.get(Ticker, 0) >= 1


def test_captured_trades_and_tickers_carry_the_expected_values(decoder: FrameDecoder) -> None:
    by_type: dict[str, list[bytes]] = {}
    for frame in captured_frames():
        by_type.setdefault(json.loads(frame)["type"], []).append(frame)
    first_trade = decoder.decode(by_type["trade"][0])
    raw = json.loads(by_type["trade"][0])
    assert isinstance(first_trade, Trade)
    assert first_trade.seq == raw["seq"]
    assert first_trade.yes_price_e4 == raw["msg"]["yes_price"] * 100
    assert first_trade.yes_price_e4 + first_trade.no_price_e4 == 10_000
    assert first_trade.count_e2 == raw["msg"]["count"] * 100
    assert first_trade.ts_ms == raw["msg"]["ts"] * 1000
    for frame in by_type["ticker"]:
        ticker = decoder.decode(frame)
        raw = json.loads(frame)["msg"]
        assert isinstance(ticker, Ticker)
        assert ticker.seq is None
        assert ticker.price_e4 == raw["price"] * 100
        assert ticker.yes_bid_e4 == raw["yes_bid"] * 100
        assert ticker.yes_ask_e4 == raw["yes_ask"] * 100
        assert ticker.volume_e2 == raw["volume"] * 100


# -- rejects ---------------------------------------------------------------------------------


_DROP = object()  # marks a key to delete in the helpers below


def _delta_with(**changes: object) -> str:
    frame = json.loads(DELTA)
    for key, value in changes.items():
        target = frame["msg"] if key in frame["msg"] or key.startswith("msg_") else frame
        key = key.removeprefix("msg_")
        if value is _DROP:
            del target[key]
        else:
            target[key] = value
    return json.dumps(frame)


def _snapshot_with(**changes: object) -> str:
    frame = json.loads(SNAPSHOT)
    for key, value in changes.items():
        if value is _DROP:
            del frame["msg"][key]
        else:
            frame["msg"][key] = value
    return json.dumps(frame)


MALFORMED = [
    pytest.param(b"", "not valid JSON", id="empty"),
    pytest.param(b"nope", "not valid JSON", id="not-json"),
    pytest.param(b'{"type":"orderbook_delta",', "not valid JSON", id="truncated"),
    pytest.param(b"[1, 2]", "not a Kalshi message", id="array"),
    pytest.param(b"42", "not a Kalshi message", id="number"),
    pytest.param(b'"orderbook_delta"', "not a Kalshi message", id="string"),
    pytest.param(b'{"sid":1}', "not a Kalshi message", id="no-type"),
    pytest.param(b'{"type":7}', "not a Kalshi message", id="type-not-string"),
    pytest.param(b'{"type":"x\xff"}', "UTF-8", id="invalid-utf8-in-type"),
    pytest.param(
        DELTA.replace('"side"', '"junk":"\xff","side"').encode("latin-1"),
        "UTF-8",
        id="invalid-utf8-in-ignored-key",
    ),
    pytest.param(b'{"type":"fill","sid":"1"}', "fill frame rejected", id="unknown-type-bad-sid"),
    pytest.param(_delta_with(seq=True), "seq", id="bool-seq"),
    pytest.param(_delta_with(seq=7.0), "seq", id="float-seq"),
    pytest.param(_delta_with(seq="7"), "seq", id="string-seq"),
    pytest.param(_delta_with(seq=-1), "seq", id="negative-seq"),
    pytest.param(_delta_with(sid=0), "sid", id="zero-sid"),
    pytest.param(_delta_with(seq=_DROP), "seq", id="missing-seq"),
    pytest.param(_delta_with(msg=_DROP), "msg", id="missing-msg"),
    pytest.param(_delta_with(market_ticker=_DROP), "market_ticker", id="missing-ticker"),
    pytest.param(_delta_with(market_ticker=""), "market_ticker", id="empty-ticker"),
    pytest.param(_delta_with(side="maybe"), "side", id="bad-side"),
    pytest.param(_delta_with(side=_DROP), "side", id="missing-side"),
    pytest.param(_delta_with(price_dollars="1.0100"), "above $1.00", id="price-above-1"),
    pytest.param(_delta_with(price_dollars="0.12345"), "more than 4 decimals", id="price-5dp"),
    pytest.param(_delta_with(price_dollars="+0.5"), "plain decimal", id="price-plus"),
    pytest.param(_delta_with(price_dollars="1_0"), "plain decimal", id="price-underscore"),
    pytest.param(_delta_with(price_dollars=0.17), "price_dollars", id="price-float"),
    pytest.param(_delta_with(price_dollars="0.0000"), "strictly between", id="price-zero"),
    pytest.param(_delta_with(price_dollars="1.0000"), "strictly between", id="price-one"),
    pytest.param(
        _delta_with(price_dollars=_DROP), "neither price_dollars nor price", id="no-price"
    ),
    pytest.param(_delta_with(delta_fp=_DROP), "neither delta_fp nor delta", id="no-delta"),
    pytest.param(_delta_with(delta_fp="-1.005"), "more than 2 decimals", id="delta-3dp"),
    pytest.param(_delta_with(delta_fp=-139), "delta_fp", id="delta-int-in-fp-field"),
    pytest.param(_delta_with(msg_price=150, price_dollars=_DROP), "cents", id="legacy-cents-150"),
    pytest.param(_delta_with(msg_price=True, price_dollars=_DROP), "price", id="legacy-bool-price"),
    pytest.param(_delta_with(msg_delta=1.5, delta_fp=_DROP), "delta", id="legacy-float-delta"),
    pytest.param(_delta_with(ts_ms=_DROP, ts="yesterday"), "RFC 3339", id="bad-ts"),
    pytest.param(_delta_with(ts_ms=_DROP, ts="2026-10-08T02:47:03"), "offset", id="naive-ts"),
    pytest.param(_delta_with(sending_ts_ms="1"), "sending_ts_ms", id="string-sending-ts"),
    pytest.param(
        _snapshot_with(yes_dollars_fp=[["0.0100", "-5.00"]]), "plain decimal", id="negative-size"
    ),
    pytest.param(
        _snapshot_with(yes_dollars_fp=[["0.0100", "5.001"]]), "more than 2 decimals", id="size-3dp"
    ),
    pytest.param(
        _snapshot_with(yes_dollars_fp=[["0.0100", "5.00", "x"]]),
        "yes_dollars_fp",
        id="level-3-items",
    ),
    pytest.param(
        _snapshot_with(yes_dollars_fp=[{"price": "0.01"}]), "yes_dollars_fp", id="level-object"
    ),
    pytest.param(
        _snapshot_with(yes_dollars_fp=[["0.0100", "5.00"], ["0.010", "1.00"]]),
        "twice",
        id="duplicate-price",
    ),
    pytest.param(
        ORIGINAL_SNAPSHOT.replace("[54,20]", "[54,-20]"), "legacy size", id="legacy-negative-size"
    ),
    pytest.param(
        DOLLARS_SNAPSHOT.replace('["0.540",20]', '["0.540",-20]'),
        "legacy size",
        id="dollars-negative-size",
    ),
    pytest.param(_snapshot_with(market_ticker=_DROP), "market_ticker", id="snapshot-no-ticker"),
    pytest.param(
        TRADE.replace('"count_fp":"3.14",', ""), "neither count_fp nor count", id="trade-no-count"
    ),
    pytest.param(TRADE.replace('"no"', '"maybe"', 1), "taker_side", id="trade-bad-side"),
    pytest.param(TICKER.replace('"0.480"', '"4.80"'), "above $1.00", id="ticker-price-above-1"),
    pytest.param('{"id":1,"type":"subscribed","msg":{"channel":"trade"}}', "sid", id="ack-no-sid"),
    pytest.param('{"id":3,"type":"ok","msg":[{"channel":"trade"}]}', "sid", id="list-no-sid"),
    pytest.param('{"id":3,"type":"ok","msg":"fine"}', "msg", id="ok-msg-string"),
    pytest.param(
        '{"id":1,"type":"error","msg":{"code":"6","msg":"x"}}', "code", id="error-code-str"
    ),
    pytest.param('{"id":1,"type":"unsubscribed"}', "sid", id="unsubscribed-no-sid"),
    pytest.param(b"[" * 100_000 + b"]" * 100_000, "", id="deeply-nested"),
    pytest.param('{"type":"ok","x":' + "[" * 100_000 + "]" * 100_000 + "}", "", id="deep-ignored"),
    pytest.param('{"type":"ok","msg":{"x":"\\ud800"}}', "JSON", id="lone-surrogate-escape"),
    pytest.param('{"type":"ok","id":1,"note":"\ud800"}', "UTF-8", id="lone-surrogate-text"),
]


@pytest.mark.parametrize(("frame", "reason_part"), MALFORMED)
def test_a_malformed_frame_raises_a_protocol_error_with_a_reason(
    decoder: FrameDecoder, frame: bytes | str, reason_part: str
) -> None:
    with pytest.raises(ProtocolError) as caught:
        decoder.decode(frame)
    error = caught.value
    assert reason_part in error.reason
    assert str(error) == error.reason
    assert error.raw == frame[:RAW_EXCERPT_BYTES]
    assert not isinstance(error, UnitError)  # unit errors are wrapped, one exception type


def test_protocol_error_is_a_value_error_that_keeps_only_the_start_of_a_huge_frame(
    decoder: FrameDecoder,
) -> None:
    frame = '{"type":"ok","id":"one","padding":"' + "x" * 100_000 + '"}'
    with pytest.raises(ValueError) as caught:
        decoder.decode(frame)
    assert isinstance(caught.value, ProtocolError)
    assert caught.value.raw == frame[:RAW_EXCERPT_BYTES]
    assert len(caught.value.raw) == RAW_EXCERPT_BYTES


def test_a_frame_that_is_not_bytes_or_text_is_a_protocol_error(decoder: FrameDecoder) -> None:
    with pytest.raises(ProtocolError, match="bytes or str"):
        decoder.decode(12345)  # type: ignore[arg-type]


def test_a_rejected_price_names_the_frame_type_and_the_value(decoder: FrameDecoder) -> None:
    with pytest.raises(ProtocolError) as caught:
        decoder.decode(_delta_with(price_dollars="1.5"))
    assert caught.value.reason == "orderbook_delta frame rejected: price '1.5' is above $1.00"


@pytest.mark.parametrize(
    ("multiplier", "expected"), [("0.5", 5_000), ("0.25", 2_500), ("1", 10_000), (0, 0)]
)
def test_a_fee_update_multiplier_is_read_as_a_number_or_a_decimal_string(
    decoder: FrameDecoder, multiplier: object, expected: int
) -> None:
    frame = json.dumps(
        {
            "type": "event_fee_update",
            "sid": 3,
            "msg": {"event_ticker": "KXA-26", "fee_multiplier_override": multiplier},
        }
    )
    message = decoder.decode(frame)
    assert isinstance(message, Lifecycle) and message.fee_multiplier_e4 == expected


@pytest.mark.parametrize("multiplier", ["x", "1e999", "-1", "0.00001", "NaN", True])
def test_a_fee_update_multiplier_that_is_not_one_is_a_counted_protocol_error(
    decoder: FrameDecoder, multiplier: object
) -> None:
    frame = json.dumps(
        {
            "type": "event_fee_update",
            "sid": 3,
            "msg": {"event_ticker": "KXA-26", "fee_multiplier_override": multiplier},
        }
    )
    with pytest.raises(ProtocolError):
        decoder.decode(frame)
