"""The decoder's explicit bounds: digits, time window, nesting, lengths — each one clear error.

Each frame here once made ``ingest_orderbook`` exit (issue 12, item 1) or would have reached
the database as a value its column cannot hold. Now each is one :class:`ProtocolError` with a
stable ``code``, and the values just inside each bound are still accepted.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apps.marketdata.kalshi.messages import (
    MAX_NESTING,
    MAX_TS_MS,
    MIN_TS_MS,
    FrameDecoder,
    OrderbookDelta,
    OrderbookSnapshot,
    ProtocolError,
    Trade,
    UnknownMessage,
)

YEAR_10000_MS = 253_402_300_800_000  # the value that made the writer raise "year out of range"


@pytest.fixture(params=[False, True], ids=["no-yes-price", "yes-price"])
def decoder(request: pytest.FixtureRequest) -> FrameDecoder:
    return FrameDecoder(use_yes_price=request.param)


def delta(**msg: Any) -> dict[str, Any]:
    top = {k: msg.pop(k) for k in ("sid", "seq", "sending_ts_ms") if k in msg}
    body = {
        "market_ticker": "KXB-1",
        "market_id": "m",
        "price_dollars": "0.5000",
        "delta_fp": "1.00",
        "side": "yes",
        "ts_ms": 1_791_427_623_348,
    }
    body.update(msg)
    return {"type": "orderbook_delta", "sid": 1, "seq": 7, **top, "msg": body}


def snapshot(**msg: Any) -> dict[str, Any]:
    body = {"market_ticker": "KXB-1", "yes_dollars_fp": [["0.4000", "1.00"]]}
    body.update(msg)
    return {"type": "orderbook_snapshot", "sid": 1, "seq": 1, "msg": body}


def trade(**msg: Any) -> dict[str, Any]:
    body = {
        "trade_id": "t-1",
        "market_ticker": "KXB-1",
        "yes_price_dollars": "0.4000",
        "no_price_dollars": "0.6000",
        "count_fp": "1.00",
        "taker_side": "yes",
        "ts": 1_791_427_623,
    }
    body.update(msg)
    return {"type": "trade", "sid": 2, "seq": 1, "msg": body}


def nested(depth: int, kind: str = "surprise") -> str:
    """A frame of ``kind`` whose total nesting (the frame object included) is ``depth``."""
    inner = depth - 1
    return f'{{"type":"{kind}","sid":1,"seq":3,"msg":{"[" * inner}{"]" * inner}}}'


def rejects(decoder: FrameDecoder, frame: Any, code: str, words: str) -> ProtocolError:
    raw = frame if isinstance(frame, str | bytes) else json.dumps(frame)
    with pytest.raises(ProtocolError) as caught:
        decoder.decode(raw)
    error = caught.value
    assert error.code == code, error.reason
    assert words in error.reason
    assert len(error.reason) <= 400
    return error


# -- (a) digits ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "frame",
    [
        delta(delta_fp="1" * 4300 + ".00"),
        delta(price_dollars="0." + "0" * 4400),
        snapshot(yes_dollars_fp=[["0.4000", "9" * 5000]]),
        trade(count_fp="1" * 4301),
    ],
    ids=["delta-size", "delta-price", "snapshot-size", "trade-count"],
)
def test_a_number_of_thousands_of_digits_is_one_clear_error(
    decoder: FrameDecoder, frame: dict
) -> None:
    rejects(decoder, frame, "number_too_long", "longer than 32 characters")


def test_a_legacy_integer_size_beyond_int64_is_rejected(decoder: FrameDecoder) -> None:
    frame = delta(price_dollars=None, delta_fp=None, price=50, delta=10**4000)
    frame["msg"] = {k: v for k, v in frame["msg"].items() if v is not None}
    rejects(decoder, frame, "number_out_of_range", "too large")


# -- (b) the time window ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "frame",
    [
        delta(ts_ms=YEAR_10000_MS),
        delta(sending_ts_ms=YEAR_10000_MS),
        delta(ts_ms=MAX_TS_MS),
        delta(ts_ms=MIN_TS_MS - 1),
        delta(ts_ms=0),
        {**snapshot(), "sending_ts_ms": YEAR_10000_MS},
        trade(ts=YEAR_10000_MS // 1000),
        trade(ts_ms=YEAR_10000_MS),
    ],
    ids=[
        "delta-ts_ms",
        "delta-sending",
        "at-upper-bound",
        "before-2000",
        "zero",
        "snapshot-sending",
        "trade-ts-seconds",
        "trade-ts_ms",
    ],
)
def test_a_time_outside_2000_to_2100_is_one_clear_error(decoder: FrameDecoder, frame: dict) -> None:
    rejects(decoder, frame, "timestamp_out_of_range", "outside the accepted window")


@pytest.mark.parametrize("ts", ["9999-12-31T23:59:59Z", "1999-12-31T23:59:59.999Z"])
def test_an_rfc3339_time_outside_the_window_is_rejected_too(decoder: FrameDecoder, ts: str) -> None:
    frame = delta(ts=ts)
    del frame["msg"]["ts_ms"]
    rejects(decoder, frame, "timestamp_out_of_range", "outside the accepted window")


def test_an_rfc3339_time_string_is_bounded_in_length(decoder: FrameDecoder) -> None:
    frame = delta(ts="2026-10-08T02:47:03." + "1" * 100_000 + "Z")
    del frame["msg"]["ts_ms"]
    rejects(decoder, frame, "too_long", "length <= 64")


def test_the_first_and_last_millisecond_of_the_window_are_accepted(
    decoder: FrameDecoder,
) -> None:
    for ts_ms in (MIN_TS_MS, MAX_TS_MS - 1):
        message = decoder.decode(json.dumps(delta(ts_ms=ts_ms, sending_ts_ms=ts_ms)))
        assert isinstance(message, OrderbookDelta)
        assert message.ts_ms == message.sending_ts_ms == ts_ms
    last_second = decoder.decode(json.dumps(trade(ts=MAX_TS_MS // 1000 - 1)))
    assert isinstance(last_second, Trade) and last_second.ts_ms == MAX_TS_MS - 1000


# -- (c) nesting --------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [MAX_NESTING + 1, 1000, 100_000])
def test_an_unknown_type_nested_too_deep_is_one_clear_error(
    decoder: FrameDecoder, depth: int
) -> None:
    # 1,000 levels (about 2 KB of "[") raised RecursionError out of decode() before.
    rejects(decoder, nested(depth), "too_deep", f"more than {MAX_NESTING} levels")
    rejects(decoder, nested(depth).encode(), "too_deep", f"more than {MAX_NESTING} levels")


def test_an_unknown_type_at_the_nesting_bound_is_still_accepted(decoder: FrameDecoder) -> None:
    assert decoder.decode(nested(MAX_NESTING)) == UnknownMessage("surprise", 1, 3)


def test_a_known_type_nested_deep_in_an_ignored_key_is_rejected_not_raised(
    decoder: FrameDecoder,
) -> None:
    frame = json.dumps(delta())[:-1] + ',"extra":' + "[" * 5000 + "]" * 5000 + "}"
    rejects(decoder, frame, "too_deep", "levels deep")


# Strings full of brackets, quotes and backslashes must not count as nesting.
tricky_text = st.text(alphabet='[]{}"\\ax', max_size=8)
json_trees = st.recursive(
    st.none() | st.integers() | tricky_text,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(tricky_text, children, max_size=3)
    ),
    max_leaves=40,
)


def _depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    return 0


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(json_trees, st.integers(min_value=0, max_value=MAX_NESTING + 2))
def test_the_nesting_bound_is_exact_whatever_the_strings_hold(value: Any, extra: int) -> None:
    for _ in range(extra):  # push the tree towards the bound
        value = [value]
    frame = json.dumps({"type": "surprise", "msg": value, "sid": 4})
    depth = 1 + _depth(value)
    if depth > MAX_NESTING:
        rejects(FrameDecoder(), frame, "too_deep", "levels deep")
    else:
        assert FrameDecoder().decode(frame) == UnknownMessage("surprise", 4, None)


# -- lengths ------------------------------------------------------------------------------------


def test_a_snapshot_side_longer_than_one_level_per_price_is_rejected(
    decoder: FrameDecoder,
) -> None:
    levels = [["0.5000", "1.00"]] * 10_000  # 9,999 prices exist strictly inside ($0, $1)
    rejects(decoder, snapshot(yes_dollars_fp=levels), "too_long", "length <= 9999")


def test_a_full_ladder_of_every_price_is_accepted(decoder: FrameDecoder) -> None:
    levels = [[f"0.{p:04d}", "1.00"] for p in range(1, 10_000)]
    message = decoder.decode(json.dumps(snapshot(yes_dollars_fp=levels)))
    assert isinstance(message, OrderbookSnapshot) and len(message.yes) == 9_999


@pytest.mark.parametrize(
    ("frame", "words"),
    [
        (delta(market_ticker="K" * 129), "length <= 128"),
        (trade(trade_id="t" * 65), "length <= 64"),
    ],
    ids=["ticker", "trade-id"],
)
def test_strings_wider_than_their_columns_are_rejected(
    decoder: FrameDecoder, frame: dict, words: str
) -> None:
    rejects(decoder, frame, "too_long", words)


@pytest.mark.parametrize(
    "frame",
    [
        delta(market_ticker="KXB\x00-1"),
        snapshot(market_ticker="KXB\x00-1"),
        trade(market_ticker="KXB\x00-1"),
        trade(trade_id="t\x00"),
    ],
    ids=["delta-ticker", "snapshot-ticker", "trade-ticker", "trade-id"],
)
def test_stored_text_with_a_nul_character_is_rejected(decoder: FrameDecoder, frame: dict) -> None:
    # PostgreSQL text columns refuse U+0000: the writer would reject the row after the fact.
    rejects(decoder, frame, "bad_text", "NUL")
