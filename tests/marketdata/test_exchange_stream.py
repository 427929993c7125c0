"""The local exchange's data stream: frame format, seq continuity, exact books, fault knobs."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import time
import uuid

import pytest
from websockets.exceptions import ConnectionClosed, ConnectionClosedError

from apps.marketdata.exchange import FaultConfig, LocalExchange, SyntheticConfig, SyntheticSource

from .exchange_support import (
    DATA_TYPES,
    BookRebuilder,
    Client,
    PingRecordingConnection,
    make_exchange,
    run,
)

PRICE_RE = re.compile(r"^[01]\.\d{4}$")
COUNT_RE = re.compile(r"^-?\d+\.\d{2}$")
RFC3339_MS_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


async def _subscribe_all(client: Client, exchange: LocalExchange, **options: object) -> None:
    await client.send(
        "subscribe",
        {"channels": ["orderbook_delta", "trade"], "market_tickers": exchange.tickers(), **options},
    )


# ---- format ---------------------------------------------------------------------------------


def test_snapshot_then_deltas_in_the_current_fp_format() -> None:
    async def body() -> None:
        exchange = make_exchange(start_paused=True)
        async with exchange.running() as url:
            a = exchange.tickers()[0]
            market = exchange.market(a)
            exchange.set_book(a, yes=[(1_200, 9_722), (1_100, 47), (2_700, 3_154)], no=[])
            client = await Client.connect(url)
            await client.send("subscribe", {"channels": ["orderbook_delta"], "market_ticker": a})
            frames = await client.barrier()
            snapshot = frames[1]
            assert snapshot == {
                "type": "orderbook_snapshot",
                "sid": 1,
                "seq": 1,
                "msg": {
                    "market_ticker": a,
                    "market_id": market.market_id,
                    # ascending, best bid last; the empty NO side is absent
                    "yes_dollars_fp": [
                        ["0.1100", "0.47"],
                        ["0.1200", "97.22"],
                        ["0.2700", "31.54"],
                    ],
                },
            }
            uuid.UUID(snapshot["msg"]["market_id"])

            exchange.apply_delta(a, "yes", 1_700, -13_900 // 100)
            exchange.apply_delta(a, "no", 7_000, 1_100)
            first, second = await client.barrier()
            assert set(first) == {"type", "sid", "seq", "msg"}
            msg = first["msg"]
            assert set(msg) == {
                "market_ticker",
                "market_id",
                "price_dollars",
                "delta_fp",
                "side",
                "ts",
                "ts_ms",
            }
            assert (
                first["type"],
                first["seq"],
                msg["price_dollars"],
                msg["delta_fp"],
                msg["side"],
            ) == (
                "orderbook_delta",
                2,
                "0.1700",
                "-1.39",
                "yes",
            )
            assert RFC3339_MS_RE.match(msg["ts"]) and isinstance(msg["ts_ms"], int)
            assert abs(msg["ts_ms"] - time.time() * 1000) < 5_000
            assert (second["seq"], second["msg"]["side"], second["msg"]["price_dollars"]) == (
                3,
                "no",
                "0.7000",
            )

    run(body())


def test_use_yes_price_prices_the_no_side_on_the_yes_scale() -> None:
    async def body() -> None:
        exchange = make_exchange(start_paused=True)
        async with exchange.running() as url:
            a = exchange.tickers()[0]
            exchange.set_book(a, yes=[(7_000, 100)], no=[(100, 500), (2_900, 20_524_337)])
            plain, yes_scale = await Client.connect(url), await Client.connect(url)
            await plain.send("subscribe", {"channels": ["orderbook_delta"], "market_ticker": a})
            await yes_scale.send(
                "subscribe",
                {"channels": ["orderbook_delta"], "market_ticker": a, "use_yes_price": True},
            )
            assert (await plain.barrier())[1]["msg"]["no_dollars_fp"] == [
                ["0.0100", "5.00"],
                ["0.2900", "205243.37"],
            ]
            # As observed: NO bids shown as YES asks, best (lowest) ask still last.
            assert (await yes_scale.barrier())[1]["msg"]["no_dollars_fp"] == [
                ["0.9900", "5.00"],
                ["0.7100", "205243.37"],
            ]
            exchange.apply_delta(a, "no", 2_900, -2_000)
            exchange.apply_delta(a, "yes", 7_000, 100)
            plain_deltas = [f["msg"]["price_dollars"] for f in await plain.barrier()]
            yes_deltas = [f["msg"]["price_dollars"] for f in await yes_scale.barrier()]
            assert plain_deltas == ["0.2900", "0.7000"]
            assert yes_deltas == ["0.7100", "0.7000"]  # YES-side prices are unchanged

    run(body())


# ---- the synthetic stream: seq, books, ticks ---------------------------------------------------


def _stream_check(frames: list[dict], rebuilt: BookRebuilder) -> None:
    for frame in frames:
        rebuilt.feed(frame)
        if frame["type"] == "orderbook_snapshot":
            for side in ("yes", "no"):
                levels = frame["msg"].get(f"{side}_dollars_fp")
                if levels is not None:
                    assert levels, "an empty side must be omitted, not sent as []"
                    prices = [p for p, _ in levels]
                    # Ascending with the best bid last; on the YES scale the NO side's best
                    # (lowest) ask is last, so its strings descend.
                    descending = rebuilt.use_yes_price and side == "no"
                    assert prices == sorted(prices, reverse=descending)
                    assert len(set(prices)) == len(prices)
                    assert all(PRICE_RE.match(p) and COUNT_RE.match(s) for p, s in levels)
        elif frame["type"] == "orderbook_delta":
            msg = frame["msg"]
            assert PRICE_RE.match(msg["price_dollars"]) and COUNT_RE.match(msg["delta_fp"])
        elif frame["type"] == "trade":
            msg = frame["msg"]
            assert msg["taker_side"] in ("yes", "no")
            assert msg["taker_book_side"] == ("bid" if msg["taker_side"] == "yes" else "ask")
            assert msg["taker_outcome_side"] == msg["taker_side"]
            yes_e4 = round(float(msg["yes_price_dollars"]) * 10_000)
            assert yes_e4 + round(float(msg["no_price_dollars"]) * 10_000) == 10_000
            assert COUNT_RE.match(msg["count_fp"]) and msg["is_block_trade"] is False
            assert msg["ts"] == msg["ts_ms"] // 1000
            uuid.UUID(msg["trade_id"])


def test_thousands_of_synthetic_messages_have_no_seq_gaps_and_rebuild_the_exact_books() -> None:
    async def body() -> None:
        exchange = make_exchange(
            markets=6, rate=30_000, seed=11, max_messages=8_000, start_paused=True
        )
        async with exchange.running() as url:
            client = await Client.connect(url)
            await _subscribe_all(client, exchange)
            frames = await client.barrier()
            await exchange.resume()
            await exchange.wait_source_done(timeout_s=20)
            frames += await client.barrier(timeout_s=20)

            rebuilt = BookRebuilder()
            _stream_check(frames, rebuilt)
            data = [f for f in frames if f["type"] in DATA_TYPES]
            assert len(data) == 6 + 8_000  # initial snapshots + every generated message
            assert rebuilt.gaps() == {1: [], 2: []}
            assert rebuilt.last_seq[1] == sum(f["sid"] == 1 for f in data)
            assert rebuilt.last_seq[2] == sum(f["sid"] == 2 for f in data) > 100
            assert rebuilt.crossed == []
            for ticker in exchange.tickers():
                assert rebuilt.levels(ticker) == exchange.book_levels(ticker), ticker

            # Sub-cent ticks and fractional sizes on the non-linear markets, never on linear.
            for ticker in exchange.tickers():
                market = exchange.market(ticker)
                prices = {
                    p
                    for f in frames
                    if f["type"] == "orderbook_delta" and f["msg"]["market_ticker"] == ticker
                    for p in [f["msg"]["price_dollars"]]
                }
                sizes = {
                    f["msg"]["delta_fp"]
                    for f in frames
                    if f["type"] == "orderbook_delta" and f["msg"]["market_ticker"] == ticker
                }
                sub_cent = any(p[4:] != "00" for p in prices)
                fractional = any(not s.endswith(".00") for s in sizes)
                if market.price_level_structure == "linear_cent":
                    assert not sub_cent and not fractional, ticker
                else:
                    assert sub_cent and fractional, ticker

    run(body())


def test_pause_makes_the_books_final_and_resume_continues_the_same_sids() -> None:
    async def body() -> None:
        exchange = make_exchange(markets=3, rate=5_000, seed=3)
        async with exchange.running() as url:
            client = await Client.connect(url)
            await _subscribe_all(client, exchange, use_yes_price=True)
            frames = await client.until(lambda f: f.get("seq", 0) > 300)
            await exchange.pause()
            frames += await client.barrier()
            rebuilt = BookRebuilder(use_yes_price=True)
            _stream_check(frames, rebuilt)
            for ticker in exchange.tickers():
                assert rebuilt.levels(ticker) == exchange.book_levels(ticker)
            await asyncio.sleep(0.05)
            assert await client.barrier() == []  # paused: nothing moves
            await exchange.resume()
            more = await client.until(lambda f: f["type"] == "orderbook_delta")
            await exchange.pause()
            _stream_check(more + await client.barrier(), rebuilt)
            assert rebuilt.gaps() == {1: [], 2: []}

    run(body())


def test_the_same_seed_gives_the_same_books_and_every_level_is_on_the_grid() -> None:
    async def books(seed: int) -> dict[str, tuple]:
        exchange = make_exchange(markets=3, seed=seed)
        await exchange.prepare()
        source = exchange.source
        assert isinstance(source, SyntheticSource)
        for _ in range(3_000):
            source.step(exchange, budget=2)
        for market in exchange.markets():
            for side in ("yes", "no"):
                for price, size in market.side(side).items():
                    assert market.is_on_grid(price), (market.ticker, price)
                    assert size > 0 and size % market.min_size_e2() == 0
            if market.yes and market.no:
                assert market.best_yes() + market.best_no() < 10_000
        return {t: exchange.book_levels(t) for t in exchange.tickers()}

    first, again, other = run(books(5)), run(books(5)), run(books(6))
    assert first == again
    assert first != other


def test_synthetic_config_rejects_nonsense_with_a_clear_message() -> None:
    from apps.marketdata.exchange import ConfigError

    with pytest.raises(ConfigError, match="markets"):
        SyntheticConfig(markets=0)
    with pytest.raises(ConfigError, match="rate"):
        SyntheticConfig(rate=-1)


# ---- fault knobs ------------------------------------------------------------------------------


def test_seq_gap_every_m_skips_exactly_one_seq_every_m_data_messages() -> None:
    async def body() -> None:
        exchange = make_exchange(
            rate=20_000,
            max_messages=1_000,
            faults=FaultConfig(seq_gap_every=100),
            start_paused=True,
        )
        async with exchange.running() as url:
            client = await Client.connect(url)
            await client.send(
                "subscribe", {"channels": ["orderbook_delta"], "market_tickers": exchange.tickers()}
            )
            frames = await client.barrier()
            await exchange.resume()
            await exchange.wait_source_done(timeout_s=10)
            frames += await client.barrier()
            data = [f for f in frames if f["type"] in DATA_TYPES]
            assert len(data) > 900
            # The k-th data frame of the sid carries seq k + (k // 100).
            assert [f["seq"] for f in data] == [k + k // 100 for k in range(1, len(data) + 1)]
            assert exchange.stats.gaps_injected == len(data) // 100

    run(body())


def test_a_runtime_seq_gap_happens_once_on_each_sid() -> None:
    async def body() -> None:
        exchange = make_exchange(rate=5_000, seed=4)
        async with exchange.running() as url:
            client = await Client.connect(url)
            await _subscribe_all(client, exchange)
            frames = await client.until(lambda f: f.get("sid") == 2 and f.get("seq", 0) > 5)
            assert exchange.inject_seq_gap() == 2
            frames += await client.until(lambda f: f.get("sid") == 2 and f.get("seq", 0) > 30)
            await exchange.pause()
            frames += await client.barrier()
            rebuilt = BookRebuilder()
            for frame in frames:
                rebuilt.note_seq(frame)
            assert rebuilt.gaps() == {1: [2], 2: [2]}

    run(body())


def test_drop_after_k_aborts_the_connection_after_exactly_k_data_messages() -> None:
    async def body() -> None:
        exchange = make_exchange(rate=5_000, faults=FaultConfig(drop_after_messages=50))
        async with exchange.running() as url:
            client = await Client.connect(url)
            await _subscribe_all(client, exchange)
            received = []
            with pytest.raises(ConnectionClosedError) as closed:
                while True:
                    received.append(await client.recv())
            assert closed.value.rcvd is None  # no close frame: the TCP connection was cut
            assert sum(f["type"] in DATA_TYPES for f in received) == 50
            assert exchange.stats.connections_dropped == 1

            # At runtime: drop every open connection right now.
            exchange.set_faults(drop_after_messages=None)
            again = await Client.connect(url)
            await _subscribe_all(again, exchange)
            await again.until(lambda f: f["type"] == "orderbook_delta")
            assert exchange.drop_connections() == 1
            with pytest.raises(ConnectionClosed):
                while True:
                    await again.recv()

    run(body())


def test_malformed_every_m_inserts_each_kind_of_broken_frame_between_good_ones() -> None:
    async def body() -> None:
        exchange = make_exchange(
            rate=20_000, max_messages=400, faults=FaultConfig(malformed_every=10), start_paused=True
        )
        async with exchange.running() as url:
            client = await Client.connect(url)
            await _subscribe_all(client, exchange)
            await exchange.resume()
            await exchange.wait_source_done(timeout_s=10)
            await asyncio.sleep(0.05)
            cmd = await client.send("list_subscriptions")
            good, bad = [], []
            while True:
                raw = await client.recv_raw()
                try:
                    frame = json.loads(raw)
                    valid = isinstance(frame, dict) and type(frame.get("sid", 0)) is int
                except (ValueError, UnicodeDecodeError):
                    valid = False
                if not valid:
                    bad.append(raw)
                    continue
                if frame.get("id") == cmd and frame["type"] == "ok":
                    break
                good.append(frame)
            data = [f for f in good if f["type"] in DATA_TYPES]
            assert len(bad) == len(data) // 10 == 40
            assert isinstance(bad[3], bytes)  # garbage, truncated, wrong types, binary, ...
            assert bad[2].startswith('{"type":"orderbook_delta","sid":"1"')
            rebuilt = BookRebuilder()
            for frame in good:
                rebuilt.feed(frame)
            assert rebuilt.gaps() == {1: [], 2: []}  # malformed frames take no seq

            exchange.send_malformed("truncated")
            with pytest.raises(json.JSONDecodeError):
                json.loads(await client.recv_raw())

    run(body())


def test_a_stall_sends_nothing_for_s_seconds_then_resumes_without_loss() -> None:
    async def body() -> None:
        exchange = make_exchange(
            rate=2_000, faults=FaultConfig(stall_after_messages=30, stall_s=0.5)
        )
        async with exchange.running() as url:
            client = await Client.connect(url)
            await _subscribe_all(client, exchange)
            arrivals: list[tuple[float, dict]] = []
            while sum(f["type"] in DATA_TYPES for _, f in arrivals) < 60:
                frame = await client.recv()
                arrivals.append((time.monotonic(), frame))
            data = [(t, f) for t, f in arrivals if f["type"] in DATA_TYPES]
            pause = data[30][0] - data[29][0]
            assert pause >= 0.45
            assert max(b[0] - a[0] for a, b in itertools.pairwise(data)) == pause
            await exchange.pause()
            rebuilt = BookRebuilder()
            for frame in [f for _, f in arrivals] + await client.barrier():
                rebuilt.feed(frame)
            assert rebuilt.gaps() == {1: [], 2: []}
            for ticker in exchange.tickers():
                assert rebuilt.levels(ticker) == exchange.book_levels(ticker)
            assert exchange.stats.stalls == 1

    run(body())


def test_a_stall_that_ignores_pings_leaves_pings_and_commands_unanswered_until_it_ends() -> None:
    async def body() -> None:
        exchange = make_exchange(start_paused=True, ping_interval_s=None)
        async with exchange.running() as url:
            client = await Client.connect(url)
            # An ordinary stall still answers pings: only sending is stopped.
            exchange.stall(0.6)
            pong = await client.ws.ping()
            await asyncio.wait_for(pong, 0.3)

            await asyncio.sleep(0.7)
            exchange.stall(0.8, ignore_pings=True)
            started = time.monotonic()
            pong = await client.ws.ping()
            cmd = await client.send("list_subscriptions")
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(asyncio.shield(pong), 0.4)
            await asyncio.wait_for(pong, 2)
            answer = await client.recv()
            assert answer["id"] == cmd
            assert time.monotonic() - started >= 0.75

    run(body())


def test_an_unsolicited_error_25_ends_only_that_subscription() -> None:
    async def body() -> None:
        exchange = make_exchange(start_paused=True)
        async with exchange.running() as url:
            a = exchange.tickers()[0]
            client = await Client.connect(url)
            await client.send(
                "subscribe", {"channels": ["orderbook_delta", "trade"], "market_ticker": a}
            )
            await client.barrier()
            assert exchange.emit_subscription_error(code=25, sid=1) == 1
            assert await client.recv() == {
                "type": "error",
                "sid": 1,
                "msg": {"code": 25, "msg": "Subscription buffer overflow"},
            }
            exchange.apply_delta(a, "yes", 100, 100)
            exchange.apply_trade(a, yes_price_e4=100, count_e2=100, taker_side="no")
            frames = await client.barrier()
            assert [(f["type"], f["sid"]) for f in frames] == [("trade", 2)]
            cmd = await client.send("list_subscriptions")
            assert (await client.recv())["msg"] == [{"channel": "trade", "sid": 2}]
            assert cmd

    run(body())


def test_error_after_k_configured_hits_the_sid_of_the_kth_data_message() -> None:
    async def body() -> None:
        exchange = make_exchange(start_paused=True, faults=FaultConfig(error_after_messages=2))
        async with exchange.running() as url:
            a, b, _ = exchange.tickers()
            client = await Client.connect(url)
            await client.send(
                "subscribe", {"channels": ["orderbook_delta"], "market_tickers": [a, b]}
            )
            frames = await client.barrier()
            assert [f["type"] for f in frames] == [
                "subscribed",
                "orderbook_snapshot",
                "orderbook_snapshot",
                "error",
            ]
            assert frames[-1] == {
                "type": "error",
                "sid": 1,
                "msg": {"code": 25, "msg": "Subscription buffer overflow"},
            }
            assert exchange.stats.subscription_errors == 1

    run(body())


def test_a_client_too_slow_for_its_queue_gets_error_25() -> None:
    async def body() -> None:
        exchange = make_exchange(start_paused=True, max_queue_frames=50)
        async with exchange.running() as url:
            a = exchange.tickers()[0]
            client = await Client.connect(url)
            await client.send("subscribe", {"channels": ["orderbook_delta"], "market_ticker": a})
            await client.barrier()
            for _ in range(200):  # synchronously: the writer cannot drain in between
                exchange.apply_delta(a, "yes", 100, 100)
            frames = await client.barrier()
            assert [f["type"] for f in frames].count("orderbook_delta") == 50
            assert frames[-1]["msg"] == {"code": 25, "msg": "Subscription buffer overflow"}

    run(body())


# ---- keep-alive -------------------------------------------------------------------------------


def test_the_exchange_pings_with_heartbeat_and_answers_client_pings() -> None:
    async def body() -> None:
        exchange = make_exchange(start_paused=True, ping_interval_s=0.1)
        async with exchange.running() as url:
            client = await Client.connect(url, create_connection=PingRecordingConnection)
            await asyncio.sleep(0.45)
            pings = client.ws.pings_received
            assert len(pings) >= 3
            assert set(pings) == {b"heartbeat"}
            latency = await asyncio.wait_for(await client.ws.ping(b"client"), 2)
            assert latency >= 0
        assert exchange.stats.pings_sent >= 3

    run(body())


def test_a_client_that_answers_no_ping_is_dropped_after_the_pong_timeout() -> None:
    async def body() -> None:
        exchange = make_exchange(start_paused=True, ping_interval_s=0.1, pong_timeout_s=0.25)
        async with exchange.running() as url:
            client = await Client.connect(url)
            await client.barrier()
            client.ws.transport.pause_reading()  # our pings go unread, so unanswered
            await asyncio.sleep(0.6)
            assert exchange.stats.pong_timeouts == 1
            assert exchange.connection_count == 0
            client.ws.transport.resume_reading()
            with pytest.raises(ConnectionClosed):
                await client.recv()

    run(body())
