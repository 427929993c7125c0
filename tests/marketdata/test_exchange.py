"""The local exchange's handshake authentication and command protocol (protocol §2–§3)."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
import uuid

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from apps.marketdata.exchange import ApiKey, ExchangeConfig, LocalExchange, SyntheticSource
from apps.marketdata.kalshi.signer import (
    HEADER_KEY,
    HEADER_SIGNATURE,
    HEADER_TIMESTAMP,
    KalshiSigner,
    generate_key_pair,
)

from .exchange_support import PUBLIC_PEM, SIGNER, Client, make_exchange, run

OTHER_SIGNER = KalshiSigner.from_pem(key_id="test-key-1", pem=generate_key_pair()[0])


async def _status_of_upgrade(url: str, headers: dict[str, str]) -> int:
    try:
        async with connect(url, additional_headers=headers):
            return 101
    except InvalidStatus as exc:
        return exc.response.status_code


# ---- authentication -----------------------------------------------------------------------


def test_it_accepts_a_correctly_signed_handshake() -> None:
    async def body() -> None:
        exchange = make_exchange()
        async with exchange.running() as url:
            assert url.startswith("ws://127.0.0.1:") and url.endswith("/trade-api/ws/v2")
            client = await Client.connect(url)
            cmd_id = await client.send("list_subscriptions")
            assert await client.recv() == {"id": cmd_id, "type": "ok", "msg": []}
            await client.close()
        assert exchange.stats.connections_opened == 1
        assert not exchange.stats.auth_failures

    run(body())


def test_it_rejects_a_signature_made_with_another_key_with_401() -> None:
    async def body() -> None:
        exchange = make_exchange()
        async with exchange.running() as url:
            assert await _status_of_upgrade(url, OTHER_SIGNER.headers()) == 401
        assert exchange.stats.auth_failures == {"bad_signature": 1}
        assert exchange.stats.connections_opened == 0

    run(body())


def test_it_rejects_a_signature_of_another_path_or_method() -> None:
    async def body() -> None:
        exchange = make_exchange()
        async with exchange.running() as url:
            assert await _status_of_upgrade(url, SIGNER.headers(path="/trade-api/v2")) == 401
            assert await _status_of_upgrade(url, SIGNER.headers(method="POST")) == 401
        assert exchange.stats.auth_failures == {"bad_signature": 2}

    run(body())


@pytest.mark.parametrize("age_s", [-45, 45, 3600])
def test_it_rejects_a_timestamp_outside_the_skew_window(age_s: int) -> None:
    async def body() -> None:
        exchange = make_exchange(max_clock_skew_s=30)
        async with exchange.running() as url:
            stamp = int(time.time() * 1000) - age_s * 1000
            headers = SIGNER.headers(timestamp_ms=stamp)  # correctly signed, just stale
            assert await _status_of_upgrade(url, headers) == 401
            fresh = SIGNER.headers(timestamp_ms=int(time.time() * 1000) - 20_000)
            assert await _status_of_upgrade(url, fresh) == 101
        assert exchange.stats.auth_failures == {"stale_timestamp": 1}

    run(body())


def test_it_rejects_a_timestamp_in_seconds_or_not_a_number() -> None:
    async def body() -> None:
        exchange = make_exchange()
        async with exchange.running() as url:
            seconds = int(time.time())
            assert await _status_of_upgrade(url, SIGNER.headers(timestamp_ms=seconds)) == 401
            headers = SIGNER.headers()
            headers[HEADER_TIMESTAMP] = "12ab"
            assert await _status_of_upgrade(url, headers) == 401
        assert exchange.stats.auth_failures == {"stale_timestamp": 1, "bad_timestamp": 1}

    run(body())


@pytest.mark.parametrize("missing", [HEADER_KEY, HEADER_TIMESTAMP, HEADER_SIGNATURE, "all"])
def test_it_rejects_a_handshake_missing_a_header(missing: str) -> None:
    async def body() -> None:
        exchange = make_exchange()
        async with exchange.running() as url:
            headers = {} if missing == "all" else SIGNER.headers()
            headers.pop(missing, None)
            assert await _status_of_upgrade(url, headers) == 401
        assert exchange.stats.auth_failures == {"missing_header": 1}

    run(body())


def test_it_rejects_an_unknown_key_id_when_key_ids_are_configured() -> None:
    async def body() -> None:
        exchange = LocalExchange(
            ExchangeConfig(keys=(ApiKey(public_key=PUBLIC_PEM, key_id="the-only-id"),)),
            source=SyntheticSource(),
        )
        async with exchange.running() as url:
            assert await _status_of_upgrade(url, SIGNER.headers()) == 401  # id test-key-1
            good = KalshiSigner(key_id="the-only-id", private_key=SIGNER.private_key)
            assert await _status_of_upgrade(url, good.headers()) == 101
        assert exchange.stats.auth_failures == {"unknown_key": 1}

    run(body())


def test_other_paths_get_404_json_and_no_upgrade() -> None:
    async def body() -> None:
        exchange = make_exchange()
        async with exchange.running() as url:
            ws_base = url.removesuffix("/trade-api/ws/v2")
            assert await _status_of_upgrade(ws_base + "/trade-api/ws/v1", SIGNER.headers()) == 404
            base = exchange.rest_url.removesuffix("/trade-api/v2")

            def fetch() -> tuple[int, dict]:
                try:
                    urllib.request.urlopen(base + "/nothing/here", timeout=5)
                except urllib.error.HTTPError as exc:
                    return exc.code, json.loads(exc.read())
                raise AssertionError("expected a 404")

            status, payload = await asyncio.to_thread(fetch)
            assert status == 404 and payload["error"]["code"] == "not_found"

    run(body())


# ---- commands -----------------------------------------------------------------------------


def test_subscribe_acks_each_channel_with_its_own_sid_then_snapshots_from_seq_1() -> None:
    async def body() -> None:
        exchange = make_exchange(start_paused=True)
        async with exchange.running() as url:
            a, b, _ = exchange.tickers()
            client = await Client.connect(url)
            cmd_id = await client.send(
                "subscribe",
                {"channels": ["orderbook_delta", "trade"], "market_tickers": [a, b]},
            )
            frames = await client.barrier()
            assert frames[0] == {
                "id": cmd_id,
                "type": "subscribed",
                "msg": {"channel": "orderbook_delta", "sid": 1},
            }
            assert [
                (f["type"], f["sid"], f["seq"], f["msg"]["market_ticker"]) for f in frames[1:3]
            ] == [
                ("orderbook_snapshot", 1, 1, a),
                ("orderbook_snapshot", 1, 2, b),
            ]
            assert frames[3] == {
                "id": cmd_id,
                "type": "subscribed",
                "msg": {"channel": "trade", "sid": 2},
            }
            assert len(frames) == 4

    run(body())


def test_a_second_subscribe_merges_into_the_sid_and_answers_ok_with_a_seq() -> None:
    async def body() -> None:
        exchange = make_exchange(start_paused=True)
        async with exchange.running() as url:
            a, b, c = exchange.tickers()
            client = await Client.connect(url)
            await client.send(
                "subscribe", {"channels": ["orderbook_delta"], "market_tickers": [a, b]}
            )
            await client.barrier()
            cmd_id = await client.send(
                "subscribe", {"channels": ["orderbook_delta"], "market_tickers": [b, c]}
            )
            frames = await client.barrier()
            assert frames[0] == {
                "type": "ok",
                "id": cmd_id,
                "sid": 1,
                "seq": 3,
                "msg": {"market_tickers": [a, b, c]},
            }
            # Only the new market gets a snapshot, at the sid's next seq.
            assert [(f["type"], f["seq"], f["msg"]["market_ticker"]) for f in frames[1:]] == [
                ("orderbook_snapshot", 4, c)
            ]
            cmd_id = await client.send(
                "subscribe",
                {"channels": ["orderbook_delta"], "market_ticker": a, "skip_ticker_ack": True},
            )
            assert await client.barrier() == [
                {"type": "ok", "id": cmd_id, "sid": 1, "seq": 5, "msg": {}}
            ]

    run(body())


def test_unsubscribe_answers_once_per_sid_with_its_next_seq_and_stops_the_data() -> None:
    async def body() -> None:
        exchange = make_exchange(start_paused=True)
        async with exchange.running() as url:
            a, b, _ = exchange.tickers()
            client = await Client.connect(url)
            await client.send(
                "subscribe", {"channels": ["orderbook_delta", "trade"], "market_tickers": [a, b]}
            )
            await client.barrier()
            cmd_id = await client.send("unsubscribe", {"sids": [1, 2]})
            assert await client.barrier() == [
                {"id": cmd_id, "sid": 1, "seq": 3, "type": "unsubscribed"},
                {"id": cmd_id, "sid": 2, "seq": 1, "type": "unsubscribed"},
            ]
            exchange.set_book(a, yes=[(4_000, 100)], no=[(5_000, 100)])
            assert await client.barrier() == []

    run(body())


def test_update_subscription_add_delete_and_get_snapshot() -> None:
    async def body() -> None:
        exchange = make_exchange(start_paused=True)
        async with exchange.running() as url:
            a, b, c = exchange.tickers()
            client = await Client.connect(url)
            await client.send("subscribe", {"channels": ["orderbook_delta"], "market_ticker": a})
            await client.barrier()  # subscribed + snapshot seq 1

            add = await client.send(
                "update_subscription",
                {"sid": 1, "market_tickers": [b, c], "action": "add_markets"},
            )
            frames = await client.barrier()
            assert frames[0] == {
                "id": add,
                "sid": 1,
                "seq": 2,
                "type": "ok",
                "msg": {"market_tickers": [a, b, c]},
            }
            assert [(f["type"], f["seq"], f["msg"]["market_ticker"]) for f in frames[1:]] == [
                ("orderbook_snapshot", 3, b),
                ("orderbook_snapshot", 4, c),
            ]

            delete = await client.send(
                "update_subscription",
                {"sids": [1], "market_ticker": b, "action": "delete_markets"},
            )
            assert await client.barrier() == [
                {"id": delete, "sid": 1, "seq": 5, "type": "ok", "msg": {"market_tickers": [a, c]}}
            ]
            # The deleted market no longer streams; the others do.
            exchange.set_book(b, yes=[(1_000, 100)], no=[])
            exchange.set_book(c, yes=[(1_000, 100)], no=[])
            deltas = await client.barrier()
            assert {f["msg"]["market_ticker"] for f in deltas} == {c}
            last_seq = deltas[-1]["seq"]

            snap = await client.send(
                "update_subscription", {"sids": [1], "market_ticker": c, "action": "get_snapshot"}
            )
            frames = await client.barrier()
            assert len(frames) == 1
            assert frames[0]["type"] == "orderbook_snapshot"
            assert (frames[0]["id"], frames[0]["sid"], frames[0]["seq"]) == (snap, 1, last_seq + 1)
            assert frames[0]["msg"]["yes_dollars_fp"] == [["0.1000", "1.00"]]
            assert "no_dollars_fp" not in frames[0]["msg"]

            # Without markets, get_snapshot re-sends every market of the sid.
            await client.send("update_subscription", {"sid": 1, "action": "get_snapshot"})
            frames = await client.barrier()
            assert [f["msg"]["market_ticker"] for f in frames] == [a, c]

    run(body())


def test_list_subscriptions_lists_channel_and_sid() -> None:
    async def body() -> None:
        exchange = make_exchange(start_paused=True)
        async with exchange.running() as url:
            client = await Client.connect(url)
            await client.send(
                "subscribe",
                {"channels": ["orderbook_delta", "ticker"], "market_ticker": exchange.tickers()[0]},
            )
            await client.send("subscribe", {"channels": ["trade"]})
            await client.barrier()
            cmd_id = await client.send("list_subscriptions")
            assert await client.recv() == {
                "id": cmd_id,
                "type": "ok",
                "msg": [
                    {"channel": "orderbook_delta", "sid": 1},
                    {"channel": "ticker", "sid": 2},
                    {"channel": "trade", "sid": 3},
                ],
            }

    run(body())


def _cmd(cmd: str, params: dict | None = None) -> str:
    command: dict = {"id": 5, "cmd": cmd}
    if params is not None:
        command["params"] = params
    return json.dumps(command)


OB = ["orderbook_delta"]
ERROR_CASES = [
    # (raw command, expected code, expected text, extra msg keys); "@A" = a real ticker
    ("{not json", 1, "Unable to process message", {}),
    ('["a", "list"]', 1, "Unable to process message", {}),
    (_cmd("subscribe"), 2, "Params required", {}),
    (_cmd("subscribe", {}), 3, "Channels required", {}),
    (_cmd("unsubscribe", {}), 4, "Subscription IDs required", {}),
    (_cmd("frobnicate"), 5, "Unknown command", {}),
    (_cmd("unsubscribe", {"sids": [99]}), 7, "Unknown subscription ID", {}),
    (
        _cmd("update_subscription", {"sid": 7, "action": "get_snapshot"}),
        7,
        "Unknown subscription ID",
        {},
    ),
    (
        _cmd("subscribe", {"channels": ["orderbook_deltas"], "market_ticker": "@A"}),
        8,
        "Unknown channel name",
        {},
    ),
    (
        _cmd("subscribe", {"channels": OB, "market_ticker": "@A", "market_tickers": ["@A"]}),
        11,
        "Invalid parameter",
        {},
    ),
    (_cmd("subscribe", {"channels": OB, "market_tickers": "@A"}), 11, "Invalid parameter", {}),
    (
        _cmd("update_subscription", {"sids": [1, 2], "action": "get_snapshot"}),
        12,
        "Exactly one subscription ID is required",
        {},
    ),
    (
        _cmd("update_subscription", {"sid": 1, "sids": [1], "action": "get_snapshot"}),
        12,
        "Exactly one subscription ID is required",
        {},
    ),
    (_cmd("update_subscription", {"sid": 1, "action": "explode"}), 13, "Unsupported action", {}),
    (_cmd("subscribe", {"channels": OB}), 14, "Market Ticker required", {}),
    (
        _cmd("update_subscription", {"sid": 1, "action": "add_markets"}),
        14,
        "Market Ticker required",
        {},
    ),
    (_cmd("update_subscription", {"sid": 1, "market_ticker": "@A"}), 15, "Action required", {}),
    (
        _cmd("subscribe", {"channels": OB, "market_ticker": "NOPE-1"}),
        16,
        "Market not found",
        {"market_ticker": "NOPE-1"},
    ),
]


def test_every_documented_error_code_has_the_documented_shape() -> None:
    async def body() -> None:
        exchange = make_exchange(start_paused=True)
        async with exchange.running() as url:
            a = exchange.tickers()[0]
            client = await Client.connect(url)
            await client.send("subscribe", {"channels": ["orderbook_delta"], "market_ticker": a})
            await client.barrier()
            for raw, code, text, extra in ERROR_CASES:
                await client.ws.send(raw.replace("@A", a))
                frame = await client.recv()
                expected_id = 0 if code == 1 else 5
                assert frame == {
                    "type": "error",
                    "id": expected_id,
                    "msg": {"code": code, "msg": text, **extra},
                }, raw
            # None of the failed commands changed the subscription.
            cmd_id = await client.send("list_subscriptions")
            assert await client.recv() == {
                "id": cmd_id,
                "type": "ok",
                "msg": [{"channel": "orderbook_delta", "sid": 1}],
            }

    run(body())


def test_a_failed_multi_channel_subscribe_subscribes_nothing() -> None:
    async def body() -> None:
        exchange = make_exchange(start_paused=True)
        async with exchange.running() as url:
            client = await Client.connect(url)
            # trade alone would be fine; orderbook_delta without a market is error 14.
            cmd_id = await client.send("subscribe", {"channels": ["trade", "orderbook_delta"]})
            assert await client.barrier() == [
                {
                    "type": "error",
                    "id": cmd_id,
                    "msg": {"code": 14, "msg": "Market Ticker required"},
                }
            ]
            # A private channel this exchange does not serve is a channel error, not unknown.
            cmd_id = await client.send("subscribe", {"channels": ["fill"]})
            assert (await client.recv())["msg"] == {"code": 10, "msg": "Channel error"}

    run(body())


def test_the_ticker_channel_sends_an_initial_ticker_and_updates_without_seq() -> None:
    async def body() -> None:
        exchange = make_exchange(start_paused=True)
        async with exchange.running() as url:
            a = exchange.tickers()[0]
            market = exchange.market(a)
            client = await Client.connect(url)
            await client.send(
                "subscribe",
                {
                    "channels": ["ticker"],
                    "market_ids": [market.market_id],
                    "send_initial_snapshot": True,
                },
            )
            frames = await client.barrier()
            assert frames[0]["type"] == "subscribed"
            assert frames[1]["type"] == "ticker" and "seq" not in frames[1]
            exchange.set_book(a, yes=[(4_200, 1_000)], no=[(5_500, 250)])
            exchange.apply_trade(a, yes_price_e4=4_500, count_e2=300, taker_side="yes")
            last = (await client.barrier())[-1]["msg"]
            assert last["market_id"] == market.market_id
            assert (last["yes_bid_dollars"], last["yes_ask_dollars"]) == ("0.4200", "0.4500")
            assert (last["yes_bid_size_fp"], last["yes_ask_size_fp"]) == ("10.00", "2.50")
            assert (last["price_dollars"], last["last_trade_size_fp"]) == ("0.4500", "3.00")
            assert last["ts_ms"] // 1000 == last["ts"]
            uuid.UUID(last["market_id"])

    run(body())
