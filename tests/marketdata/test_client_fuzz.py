"""Fuzzing the whole frame path: KalshiClient.handle_frame -> RecorderSink -> a real writer.

The decoder's own fuzz tests (test_messages_fuzz.py) prove it returns a message or raises
ProtocolError. Here the frame goes all the way: sequence checks, books, the recorder's sink
converting messages to writer rows (datetimes from the frame's times), and the writer storing
them in PostgreSQL. Hostile frames (pathological numbers, timestamps, sids, nesting, huge
arrays, invalid UTF-8 and binary) are mixed with a probe stream: after *every* hostile frame
one valid delta on the probe market's own sid must still be applied to its book. At the end
every probe row is in the database and the writer rejected no row, i.e. whatever the client
accepted from a hostile peer was storable.

The probe market has its own orderbook sid (1), which hostile frames never name; hostile
frames use the other acknowledged sids (5: orderbook for two other markets, 2: trades) and
sids nobody acknowledged, so they do reach the sink, the books and the seq tracker.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apps.marketdata.ingest import RecorderSink
from apps.marketdata.kalshi.client import ORDERBOOK, TRADE, ClientConfig, KalshiClient
from apps.marketdata.kalshi.messages import MAX_TS_MS, MIN_TS_MS
from apps.marketdata.kalshi.rejects import read_rejected_frames
from apps.marketdata.models import OrderbookDelta as DeltaModel
from apps.marketdata.writer import RecordWriter, WriterConfig
from tests.marketdata.exchange_support import SIGNER

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

PROBE, H1, H2 = "KXPROBE-1", "KXFUZZ-1", "KXFUZZ-2"
PROBE_SID, FUZZ_SID, TRADE_SID = 1, 5, 2
PROBE_PRICE_E4 = 4200
NOW_MS = 1_791_427_623_348

FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,  # one client and writer for all examples, on purpose
    ],
)


class Harness:
    """A client 'connected' without a socket: acks fed as frames, commands go nowhere."""

    def __init__(self, client: KalshiClient, loop: asyncio.AbstractEventLoop) -> None:
        self.client = client
        self.loop = loop
        self.probe_seq = 0
        self.probe_size_e2 = 0
        self.probes: list[int] = []

    def feed(self, *frames: bytes | str) -> None:
        async def run() -> None:
            for raw in frames:
                self.client.handle_frame(raw, 1_791_427_623_400_000_000)
                await asyncio.sleep(0)  # let spawned resync/resubscribe commands finish

        self.loop.run_until_complete(run())

    def probe(self) -> None:
        """One valid delta on the probe's sid; it must be applied, whatever came before."""
        deltas_before = self.client.stats.deltas
        self.probe_seq += 1
        self.probe_size_e2 += 100
        self.feed(
            json.dumps(
                {
                    "type": "orderbook_delta",
                    "sid": PROBE_SID,
                    "seq": self.probe_seq,
                    "msg": {
                        "market_ticker": PROBE,
                        "price_dollars": "0.4200",
                        "delta_fp": "1.00",
                        "side": "yes",
                        "ts_ms": NOW_MS,
                    },
                    "sending_ts_ms": NOW_MS,
                }
            )
        )
        self.probes.append(self.probe_seq)
        assert self.client.stats.deltas == deltas_before + 1
        assert self.client.is_trusted(PROBE)
        yes, _ = self.client.books[PROBE].snapshot_levels()
        assert dict(yes)[PROBE_PRICE_E4] == self.probe_size_e2
        assert self.client.book_position(PROBE) == (PROBE_SID, self.probe_seq)


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture
def harness(tmp_path, loop) -> Iterator[Harness]:
    writer = RecordWriter(
        WriterConfig(spill_dir=tmp_path / "spill", flush_interval_s=0.05, batch_rows=500)
    ).start()
    sink = RecorderSink(writer, exchange="local", use_yes_price=False)
    client = KalshiClient(
        ClientConfig(
            ws_url="ws://127.0.0.1:9/unused",
            markets=[PROBE, H1, H2],
            rejected_frames_dir=tmp_path / "rejected",
        ),
        signer=SIGNER,
        sink=sink,
    )
    harness = Harness(client, loop)

    async def connect() -> None:
        # What _session() does once the socket is open, minus the socket.
        client._start_connection(None)  # type: ignore[arg-type]
        await client._subscribe((ORDERBOOK,), [PROBE])
        await client._subscribe((ORDERBOOK,), [H1, H2])
        await client._subscribe((TRADE,), [PROBE, H1, H2])

    loop.run_until_complete(connect())
    acks = [(1, ORDERBOOK, PROBE_SID), (2, ORDERBOOK, FUZZ_SID), (3, TRADE, TRADE_SID)]
    harness.feed(
        *(
            json.dumps({"id": i, "type": "subscribed", "msg": {"channel": ch, "sid": sid}})
            for i, ch, sid in acks
        ),
        _snapshot(PROBE, PROBE_SID, 0),
        _snapshot(H1, FUZZ_SID, 1),
        _snapshot(H2, FUZZ_SID, 2),
    )
    assert client.is_trusted(PROBE) and client.is_trusted(H1)
    yield harness
    try:
        assert writer.flush(timeout_s=30), writer.stats_dict()
        stats = writer.stats()
        # Every row the client accepted from the hostile peer was storable as is.
        assert stats.rejected_rows == 0, stats
        stored = sorted(
            DeltaModel.objects.filter(
                connection_id=client.connection_id, sid=PROBE_SID
            ).values_list("seq", flat=True)
        )
        assert stored == harness.probes
    finally:
        writer.close(timeout_s=30)


def _snapshot(market: str, sid: int, seq: int) -> str:
    return json.dumps(
        {
            "type": "orderbook_snapshot",
            "sid": sid,
            "seq": seq,
            "msg": {
                "market_ticker": market,
                "yes_dollars_fp": [["0.3000", "5.00"]],
                "no_dollars_fp": [["0.5000", "7.00"]],
            },
        }
    )


# -- strategies ---------------------------------------------------------------------------------

digits = st.integers(min_value=1, max_value=6000).map(lambda n: "7" * n)
number_strings = st.one_of(
    digits,
    digits.map(lambda d: d + ".00"),
    digits.map(lambda d: "-" + d),
    digits.map(lambda d: "0." + d),
    st.sampled_from(
        [
            "0.5",
            "1.00",
            "-1.00",
            "92233720368547758.07",
            "92233720368547758.08",
            "-92233720368547758.08",
            "0" * 31 + "1",
            "0" * 32 + "1",
            "1e999",
            "NaN",
            "Infinity",
            "-0",
            "٣",
            "1_0",
            "",
            " 1",
            "0.0001",
            "0.99999",
        ]
    ),
    st.text(max_size=12),
)
json_numbers = st.one_of(
    st.integers(min_value=-(10**30), max_value=10**30),
    st.integers(min_value=1, max_value=4200).map(lambda n: 10**n),
    st.integers(min_value=1, max_value=4200).map(lambda n: -(10**n)),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([2**31, 2**32 + 5, 2**63 - 1, 2**63, 2**64, -(2**63) - 1, True, None]),
)
timestamps = st.one_of(
    st.sampled_from(
        [
            MIN_TS_MS - 1,
            MIN_TS_MS,
            MAX_TS_MS - 1,
            MAX_TS_MS,
            253_402_300_800_000,
            253_402_300_799_999,
            2**63 - 1,
            0,
            -1,
            NOW_MS,
        ]
    ),
    st.integers(min_value=-(2**64), max_value=2**64),
    json_numbers,
)
rfc3339 = st.one_of(
    st.sampled_from(
        [
            "0001-01-01T00:00:00Z",
            "9999-12-31T23:59:59.999999Z",
            "2099-12-31T23:59:59.999Z",
            "2100-01-01T00:00:00Z",
            "1999-12-31T23:59:59Z",
            "2026-10-08T02:47:03.348+14:00",
            "2026-10-08T02:47:03.348-23:59",
            "2026-10-08T02:47:03." + "9" * 70 + "Z",
        ]
    ),
    st.text(max_size=30),
)
# Never the probe's sid (note True == 1.0 == 1 in Python, so those go too).
hostile_sids = st.one_of(
    st.sampled_from([FUZZ_SID, FUZZ_SID, TRADE_SID, 3, 0, -1, 2**31, 2**32 + 5, 2**63 - 1]),
    json_numbers,
).filter(lambda sid: sid != PROBE_SID)
seqs = st.one_of(st.integers(min_value=0, max_value=40), timestamps)
tickers = st.one_of(
    st.sampled_from([H1, H2, PROBE, "KXOTHER-1", "", "K" * 128, "K" * 129, "A\x00B", "é"]),
    st.text(max_size=10),
)


def nested(depth: int, open_: str = "[", close: str = "]") -> str:
    return open_ * depth + close * depth


# Frames start valid (on the acknowledged hostile sids, with plausible seqs) and then get zero
# to two fields replaced by a pathological value of the right kind, so that most of them
# get past the decoder and exercise the sink and the books, and the rest hit each bound.
FIELD_VALUES: dict[str, st.SearchStrategy] = {
    "number": st.one_of(number_strings, json_numbers),
    "time": timestamps,
    "rfc3339": rfc3339,
    "sid": hostile_sids,
    "seq": seqs,
    "ticker": tickers,
    "side": st.sampled_from(["yes", "no", "maybe", "", None]),
    "nested": st.sampled_from([{"deep": 3}, {"deep": 900}]),
}


def _spoil(draw: st.DrawFn, frame: dict[str, Any], fields: dict[str, str]) -> dict[str, Any]:
    """Replace up to two of ``fields`` (path -> kind) with pathological values."""
    for path in draw(st.lists(st.sampled_from(sorted(fields)), max_size=2, unique=True)):
        target, key = frame, path
        if path.startswith("msg."):
            target, key = frame["msg"], path[4:]
        value = draw(FIELD_VALUES[fields[path]])
        if isinstance(value, dict) and "deep" in value:
            value = json.loads("[" * 900 + "]" * 900) if value["deep"] > 33 else [[[]]]
        target[key] = value
    return frame


# Mostly the sid's next number (filled in when the frame is sent), so that hostile-but-valid
# frames are not simply dropped as stale; sometimes a gap or an old number.
NEXT_SEQ = -4242
base_seqs = st.one_of(st.just(NEXT_SEQ), st.just(NEXT_SEQ), st.just(NEXT_SEQ), st.integers(0, 4000))


def _price() -> st.SearchStrategy[int]:
    return st.integers(min_value=1, max_value=9999)


@st.composite
def deltas(draw: st.DrawFn) -> dict[str, Any]:
    price = draw(_price())
    msg: dict[str, Any] = {
        "market_ticker": draw(st.sampled_from([H1, H2, "KXOTHER-1"])),
        "market_id": "m",
        "price_dollars": f"0.{price:04d}",
        "delta_fp": draw(st.sampled_from(["1.00", "-1.00", "0.01", "250.75"])),
        "side": draw(st.sampled_from(["yes", "no"])),
    }
    if draw(st.booleans()):
        msg["ts_ms"] = NOW_MS
    else:
        msg["ts"] = "2026-10-08T02:47:03.348Z"
    frame = {
        "type": "orderbook_delta",
        "sid": FUZZ_SID,
        "seq": draw(base_seqs),
        "msg": msg,
        "sending_ts_ms": NOW_MS,
    }
    return _spoil(
        draw,
        frame,
        {
            "sid": "sid",
            "seq": "seq",
            "sending_ts_ms": "time",
            "msg.market_ticker": "ticker",
            "msg.price_dollars": "number",
            "msg.price": "number",
            "msg.delta_fp": "number",
            "msg.delta": "number",
            "msg.side": "side",
            "msg.ts_ms": "time",
            "msg.ts": "rfc3339",
            "msg.extra": "nested",
        },
    )


@st.composite
def snapshots(draw: st.DrawFn) -> dict[str, Any]:
    count = draw(st.sampled_from([0, 1, 3, 9_999, 10_000, 40_000]))
    prices = draw(st.lists(_price(), min_size=min(count, 3), max_size=3, unique=True))
    if count > 3:
        levels = [[f"0.{p % 9999 + 1:04d}", "1.00"] for p in range(count)]
    else:
        levels = [[f"0.{p:04d}", "2.50"] for p in prices[:count]]
    msg = {"market_ticker": draw(st.sampled_from([H1, H2])), "yes_dollars_fp": levels}
    frame = {
        "type": "orderbook_snapshot",
        "sid": FUZZ_SID,
        "seq": draw(base_seqs),
        "msg": msg,
        "sending_ts_ms": NOW_MS,
    }
    if levels and draw(st.booleans()):
        levels[0] = [draw(FIELD_VALUES["number"]), draw(FIELD_VALUES["number"])]
    return _spoil(
        draw,
        frame,
        {
            "sid": "sid",
            "seq": "seq",
            "sending_ts_ms": "time",
            "msg.market_ticker": "ticker",
            "msg.no": "nested",
        },
    )


@st.composite
def trades(draw: st.DrawFn) -> dict[str, Any]:
    price = draw(_price())
    msg = {
        "trade_id": draw(st.sampled_from(["t-1", "t" * 64])),
        "market_ticker": draw(st.sampled_from([H1, H2, PROBE])),
        "yes_price_dollars": f"0.{price:04d}",
        "no_price_dollars": f"0.{10_000 - price:04d}",
        "count_fp": "3.00",
        "taker_side": "yes",
        "ts": NOW_MS // 1000,
    }
    frame = {
        "type": "trade",
        "sid": TRADE_SID,
        "seq": draw(base_seqs),
        "msg": msg,
    }
    if draw(st.booleans()):
        msg["trade_id"] = draw(st.sampled_from(["t" * 65, "a\x00", ""]))
    return _spoil(
        draw,
        frame,
        {
            "sid": "sid",
            "seq": "seq",
            "msg.market_ticker": "ticker",
            "msg.yes_price_dollars": "number",
            "msg.count_fp": "number",
            "msg.count": "number",
            "msg.ts": "time",
            "msg.ts_ms": "time",
        },
    )


@st.composite
def controls(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["ok", "subscribed", "unsubscribed", "error", "ticker"]))
    frame: dict[str, Any] = {"type": kind, "id": draw(st.one_of(st.none(), seqs))}
    frame["sid"] = draw(hostile_sids)
    if kind == "ok":
        frame["seq"] = draw(seqs)
        frame["msg"] = draw(
            st.sampled_from(
                [
                    {"market_tickers": [H1] * 100_001},
                    [{"channel": "trade", "sid": 7}] * 3,
                    {"market_tickers": ["x" * 200]},
                ]
            )
        )
    elif kind == "subscribed":
        channel = draw(st.sampled_from([ORDERBOOK, TRADE, "fill"]))
        frame["msg"] = {"channel": channel, "sid": draw(hostile_sids)}
    elif kind == "error":
        frame["msg"] = {
            "code": draw(st.sampled_from([6, 10, 17, 25, 2**70])),
            "msg": draw(st.text(max_size=20)),
            "market_ticker": draw(tickers),
        }
    elif kind == "ticker":
        frame["msg"] = {"market_ticker": draw(tickers), "ts": draw(timestamps)}
    else:
        frame["seq"] = draw(seqs)
    return frame


@st.composite
def deep_frames(draw: st.DrawFn) -> str:
    depth = draw(st.sampled_from([31, 32, 33, 1000, 5000, 100_000]))
    brackets = draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
    if brackets[0] == "[":
        inner = nested(depth)
    else:
        inner = brackets[0] * depth + "1" + brackets[1] * depth
    kind = draw(st.sampled_from(["surprise", "orderbook_delta", "ok", "trade"]))
    return f'{{"type":"{kind}","sid":{FUZZ_SID},"seq":7,"msg":{inner}}}'


@st.composite
def byte_frames(draw: st.DrawFn) -> bytes | str:
    base = json.dumps(draw(deltas())).encode()
    at = draw(st.integers(min_value=0, max_value=len(base)))
    junk = draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\x00", b"\xf4\x90"]))
    choice = draw(st.sampled_from(["insert", "binary", "surrogate", "empty", "array"]))
    if choice == "insert":
        return base[:at] + junk + base[at:]
    if choice == "binary":
        return draw(st.binary(max_size=200))
    if choice == "surrogate":
        return base.decode()[:at] + "\ud800" + base.decode()[at:]
    if choice == "empty":
        return draw(st.sampled_from([b"", "", b" ", "null", "[]", "{}", "0"]))
    return json.dumps([0] * draw(st.sampled_from([10, 100_000])))


hostile_frames = st.one_of(
    deltas(),
    snapshots(),
    trades(),
    controls().map(json.dumps),
    deep_frames(),
    byte_frames(),
)


def _wire(harness: Harness, frame: dict[str, Any] | bytes | str) -> bytes | str:
    if not isinstance(frame, dict):
        return frame
    if frame.get("seq") == NEXT_SEQ:
        sid = frame.get("sid")
        # The tracker's next number for the sid (the test's only look inside the client).
        expected = harness.client._seq.expected(sid) if type(sid) is int else None
        frame = {**frame, "seq": expected or 1}
    return json.dumps(frame)


@FUZZ
@given(st.lists(hostile_frames, min_size=1, max_size=4))
def test_after_every_hostile_frame_a_valid_frame_is_still_recorded(
    harness: Harness, frames: list[dict[str, Any] | bytes | str]
) -> None:
    for frame in frames:
        raw = _wire(harness, frame)
        messages = harness.client.stats.messages
        harness.feed(raw)  # never raises: anything wrong is a counted malformed frame
        assert harness.client.stats.messages == messages + 1
        harness.probe()


def test_each_killer_frame_of_issue_12_is_counted_kept_and_followed_by_recording(
    harness: Harness, tmp_path
) -> None:
    """The three frames that each ended ingest_orderbook, through the real sink."""
    killers = [
        json.dumps(
            {
                "type": "orderbook_delta",
                "sid": FUZZ_SID,
                "seq": 3,
                "msg": {
                    "market_ticker": H1,
                    "side": "yes",
                    "price_dollars": "0.3000",
                    "delta_fp": "1" * 4300 + ".00",
                },
            }
        ),
        json.dumps(
            {
                "type": "orderbook_delta",
                "sid": FUZZ_SID,
                "seq": 3,
                "msg": {
                    "market_ticker": H1,
                    "side": "yes",
                    "price_dollars": "0.3000",
                    "delta_fp": "1.00",
                    "ts_ms": 253_402_300_800_000,
                },
            }
        ),
        '{"type":"surprise","sid":5,"seq":3,"msg":' + nested(1000) + "}",
    ]
    for raw in killers:
        harness.feed(raw)
        harness.probe()
    client = harness.client
    assert client.stats.malformed == 3
    assert client.stats.malformed_reasons == {
        "number_too_long": 1,
        "timestamp_out_of_range": 1,
        "too_deep": 1,
    }
    kept = client.rejected.recent()
    assert [r.raw for r in kept] == killers  # whole: each is below the per-frame cap
    on_disk = read_rejected_frames(tmp_path / "rejected")
    assert [r["raw"] for r in on_disk] == killers
    assert all(r["connection_id"] == str(client.connection_id) for r in on_disk)
    assert uuid.UUID(on_disk[0]["connection_id"]) == client.connection_id
