"""Property and fuzz tests: the decoder returns a message or raises ProtocolError, nothing else.

Inputs: random bytes, random JSON values, frame-shaped random objects, and mutations of every
example and captured frame (keys dropped, values retyped, garbage inserted, bytes damaged).
Valid generated frames must also round-trip exactly into fixed-point units.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apps.marketdata.kalshi import units
from apps.marketdata.kalshi.messages import (
    ErrorMessage,
    FrameDecoder,
    Lifecycle,
    Ok,
    OrderbookDelta,
    OrderbookSnapshot,
    ProtocolError,
    Subscribed,
    Ticker,
    Trade,
    UnknownMessage,
    Unsubscribed,
)

from .test_messages import CAPTURED, EXAMPLE_FRAMES

FUZZ = settings(
    max_examples=1500,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
MESSAGE_TYPES = (
    OrderbookSnapshot,
    OrderbookDelta,
    Subscribed,
    Unsubscribed,
    Ok,
    ErrorMessage,
    Trade,
    Ticker,
    Lifecycle,
    UnknownMessage,
)
DECODERS = (FrameDecoder(), FrameDecoder(use_yes_price=True))


def _seed_frames() -> list[str]:
    frames = list(EXAMPLE_FRAMES)
    if CAPTURED.is_dir():  # test_messages.py already fails in CI when the folder is missing
        for path in sorted(CAPTURED.glob("*.jsonl")):
            frames.extend(line for line in path.read_text().splitlines() if line.strip())
    return frames


SEED_FRAMES = _seed_frames()
SEED_OBJECTS = [json.loads(frame) for frame in SEED_FRAMES]

# Values that sit on the edges of what the parser accepts.
EDGE_VALUES = [
    None, True, False, 0, -1, 1, 2**63, 2**64, -(2**63), 1.0, 0.5, float("inf"), "", "0",
    "1.0000", "1.0001", "0.0000", "0.12345", "-0.5", "+0.5", "1_0", "²", "NaN", "1e3", "0.960",
    "-139.00", "1.005", "yes", "no", "maybe", "2026-10-08T02:47:03.348Z", "2026-13-40T99:99:99Z",
    "\x00", [], {}, [[]], [["0.5"]], [["0.5", "1.00", "x"]], [["0.5", 1]], [[50, 1]],
]  # fmt: skip

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(max_size=20)
    | st.sampled_from(EDGE_VALUES)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)
KEYS = sorted(
    {key for obj in SEED_OBJECTS for key in obj}
    | {key for obj in SEED_OBJECTS if isinstance(obj.get("msg"), dict) for key in obj["msg"]}
)
TYPES = ["orderbook_snapshot", "orderbook_delta", "subscribed", "unsubscribed", "ok", "error"]
TYPES += ["trade", "ticker", "fill", "event_lifecycle", "market_lifecycle_v2"]
TYPES += ["event_fee_update", ""]


def _check(raw: bytes | str) -> None:
    """Decode with both modes: a message with sane invariants, or a ProtocolError."""
    for decoder in DECODERS:
        try:
            message = decoder.decode(raw)
        except ProtocolError as error:
            assert error.reason
            assert error.raw is None or len(error.raw) <= 2048
            continue
        assert isinstance(message, MESSAGE_TYPES)
        if isinstance(message, OrderbookDelta):
            assert 0 < message.price_e4 < units.PRICE_SCALE
            assert message.side in ("yes", "no")
            assert type(message.delta_e2) is int
        elif isinstance(message, OrderbookSnapshot):
            for levels in (message.yes, message.no):
                prices = [price for price, _ in levels]
                assert prices == sorted(set(prices))
                assert all(0 < price < units.PRICE_SCALE for price in prices)
                assert all(type(size) is int and size >= 0 for _, size in levels)
        elif isinstance(message, Lifecycle):
            value = message.settlement_value_e4
            assert value is None or 0 <= value <= units.PRICE_SCALE
            assert "\x00" not in message.market_ticker + message.event_ticker + message.result
            assert isinstance(message.raw, str) and len(message.raw) <= 65_536


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes_never_raise_anything_but_protocol_error(raw: bytes) -> None:
    _check(raw)


@FUZZ
@given(json_values)
def test_random_json_values_never_raise_anything_but_protocol_error(value: Any) -> None:
    _check(json.dumps(value))


@FUZZ
@given(
    st.fixed_dictionaries(
        {"type": st.sampled_from(TYPES)},
        optional={
            "sid": json_scalars,
            "seq": json_scalars,
            "id": json_scalars,
            "sending_ts_ms": json_scalars,
            "msg": json_values
            | st.dictionaries(st.sampled_from(KEYS), json_values, max_size=8)
            | st.lists(st.dictionaries(st.sampled_from(["channel", "sid"]), json_scalars)),
        },
    )
)
def test_frame_shaped_random_objects_never_raise_anything_but_protocol_error(
    frame: dict[str, Any],
) -> None:
    _check(json.dumps(frame))


def _containers(node: Any, path: tuple = ()) -> list[tuple]:
    found = [path] if isinstance(node, dict | list) else []
    children = (
        node.items()
        if isinstance(node, dict)
        else enumerate(node)
        if isinstance(node, list)
        else ()
    )
    for key, child in children:
        found.extend(_containers(child, (*path, key)))
    return found


def _at(node: Any, path: tuple) -> Any:
    for key in path:
        node = node[key]
    return node


@st.composite
def mutated_objects(draw: st.DrawFn) -> Any:
    obj = json.loads(draw(st.sampled_from(SEED_FRAMES)))
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        paths = _containers(obj)
        if not paths:
            break
        target = _at(obj, draw(st.sampled_from(paths)))
        keys = list(target) if isinstance(target, dict) else list(range(len(target)))
        action = draw(st.sampled_from(["drop", "retype", "insert", "edge"]))
        if action == "insert" or not keys:
            # Deep copies: EDGE_VALUES holds shared lists/dicts that later steps may mutate.
            value = copy.deepcopy(draw(json_values))
            if isinstance(target, dict):
                target[draw(st.sampled_from([*KEYS, "zzz"]))] = value
            else:
                target.insert(draw(st.integers(0, len(target))), value)
            continue
        key = draw(st.sampled_from(keys))
        if action == "drop":
            del target[key]
        elif action == "retype":
            target[key] = copy.deepcopy(draw(json_values))
        else:
            target[key] = copy.deepcopy(draw(st.sampled_from(EDGE_VALUES)))
    return obj


@FUZZ
@given(mutated_objects())
def test_mutated_real_and_example_frames_never_raise_anything_but_protocol_error(obj: Any) -> None:
    _check(json.dumps(obj))


@FUZZ
@given(st.sampled_from(SEED_FRAMES), st.data())
def test_byte_damaged_frames_never_raise_anything_but_protocol_error(
    frame: str, data: st.DataObject
) -> None:
    raw = bytearray(frame.encode())
    for _ in range(data.draw(st.integers(min_value=1, max_value=3))):
        at = data.draw(st.integers(min_value=0, max_value=len(raw)))
        action = data.draw(st.sampled_from(["truncate", "insert", "flip", "delete"]))
        if action == "truncate":
            del raw[at:]
        elif action == "insert":
            raw[at:at] = data.draw(st.binary(min_size=1, max_size=8))
        elif raw and at < len(raw):
            if action == "flip":
                raw[at] ^= 1 << data.draw(st.integers(min_value=0, max_value=7))
            else:
                del raw[at : at + data.draw(st.integers(min_value=1, max_value=8))]
    _check(bytes(raw))
    _check(raw.decode("utf-8", errors="replace"))


# -- valid frames round-trip exactly -----------------------------------------------------------

book_prices = st.integers(min_value=1, max_value=units.PRICE_SCALE - 1)
signed_sizes = st.integers(min_value=-(10**11), max_value=10**11).filter(bool)
ladders = st.dictionaries(book_prices, st.integers(min_value=1, max_value=10**11), max_size=25)


@settings(max_examples=500, deadline=None)
@given(
    st.sampled_from(["yes", "no"]),
    book_prices,
    signed_sizes,
    st.integers(min_value=1, max_value=2**31),
    st.integers(min_value=0, max_value=2**40),
    st.booleans(),
)
def test_a_generated_current_delta_decodes_to_the_exact_fixed_point_values(
    side: str, price_e4: int, delta_e2: int, sid: int, seq: int, use_yes_price: bool
) -> None:
    wire_price = units.complement_e4(price_e4) if use_yes_price and side == "no" else price_e4
    frame = {
        "type": "orderbook_delta",
        "sid": sid,
        "seq": seq,
        "msg": {
            "market_ticker": "KXTEST-26-A",
            "market_id": "m",
            "price_dollars": units.e4_to_dollars(wire_price),
            "delta_fp": units.e2_to_count(delta_e2),
            "side": side,
            "ts_ms": 1791427623348,
        },
    }
    message = FrameDecoder(use_yes_price=use_yes_price).decode(json.dumps(frame).encode())
    assert message == OrderbookDelta(
        sid,
        seq,
        "KXTEST-26-A",
        "m",
        side,
        price_e4,
        delta_e2,
        1791427623348,  # type: ignore[arg-type]
    )


@settings(max_examples=300, deadline=None)
@given(ladders, ladders, st.booleans())
def test_a_generated_snapshot_decodes_to_the_same_ladders_in_both_price_modes(
    yes: dict[int, int], no: dict[int, int], use_yes_price: bool
) -> None:
    def wire(levels: list[tuple[int, int]]) -> list[list[str]]:
        return [[units.e4_to_dollars(p), units.e2_to_count(s)] for p, s in levels]

    no_on_wire = sorted(no.items())
    if use_yes_price:
        # Kalshi sends the NO side on the YES scale: 1 - price, best (lowest) last.
        no_on_wire = [(units.complement_e4(p), s) for p, s in no_on_wire]
    msg: dict[str, Any] = {"market_ticker": "KXTEST-26-A", "market_id": "m"}
    if yes:
        msg["yes_dollars_fp"] = wire(sorted(yes.items()))
    if no:
        msg["no_dollars_fp"] = wire(no_on_wire)
    frame = {"type": "orderbook_snapshot", "sid": 1, "seq": 1, "msg": msg}
    message = FrameDecoder(use_yes_price=use_yes_price).decode(json.dumps(frame))
    assert isinstance(message, OrderbookSnapshot)
    assert message.yes == sorted(yes.items())
    assert message.no == sorted(no.items())
