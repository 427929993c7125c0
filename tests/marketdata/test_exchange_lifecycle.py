"""The local exchange's market lives: series and fees, the market_lifecycle_v2 channel, and
the REST reads that describe them (kalshi-protocol.md §5, §7, §8, §9)."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from typing import Any

from apps.marketdata.exchange import (
    ApiKey,
    ExchangeConfig,
    ExchangeThread,
    FaultConfig,
    JsonlReplaySource,
    LocalExchange,
    SyntheticConfig,
    SyntheticSource,
)

from .exchange_support import PUBLIC_PEM, Client, run


def _get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _exchange(*, resolve_after_s: float | None, rate: float = 0.0, **faults: Any) -> LocalExchange:
    return LocalExchange(
        ExchangeConfig(keys=(ApiKey(public_key=PUBLIC_PEM),), faults=FaultConfig(**faults)),
        source=SyntheticSource(
            SyntheticConfig(
                markets=6,
                rate=rate,
                seed=2,
                resolve_after_s=resolve_after_s,
                resolve_markets=3,
                settle_after_s=0.3,
            )
        ),
    )


def test_series_carry_one_fee_kind_each_and_fee_changes_are_listed() -> None:
    exchange = _exchange(resolve_after_s=600)
    with ExchangeThread(exchange):
        base = exchange.rest_url
        fees = {}
        for series in ("KXSYN", "KXSYNMK", "KXSYNINX"):
            status, body = _get(f"{base}/series/{series}")
            assert status == 200
            fees[series] = (body["series"]["fee_type"], body["series"]["fee_multiplier"])
        assert fees == {
            "KXSYN": ("quadratic", 1),
            "KXSYNMK": ("quadratic_with_maker_fees", 1),
            "KXSYNINX": ("quadratic", 0.5),
        }
        assert _get(f"{base}/series/NOPE")[0] == 404
        status, body = _get(f"{base}/series/fee_changes?series_ticker=KXSYNINX")
        assert status == 200
        [change] = body["series_fee_change_arr"]
        assert change["series_ticker"] == "KXSYNINX" and change["fee_multiplier"] == 0.25
        assert change["fee_type"] == "quadratic" and change["scheduled_ts"].endswith("Z")
        assert _get(f"{base}/series/fee_changes?series_ticker=KXSYN")[1] == {
            "series_fee_change_arr": []
        }
        assert _get(f"{base}/exchange/status") == (
            200,
            {
                "exchange_active": True,
                "trading_active": True,
                "exchange_estimated_resume_time": None,
            },
        )
        # A market that resolves during the run tells its close time up front.
        status, body = _get(f"{base}/markets/KXSYN-26DEC31-M00")
        market = body["market"]
        close = time.mktime(time.strptime(market["close_time"], "%Y-%m-%dT%H:%M:%SZ"))
        assert 500 < close - time.mktime(time.gmtime()) < 700
        assert market["can_close_early"] is True and market["result"] == ""


def test_public_trades_are_listed_newest_first() -> None:
    exchange = _exchange(resolve_after_s=None)
    with ExchangeThread(exchange) as _url:
        ticker = exchange.tickers()[0]
        exchange.apply_trade(ticker, yes_price_e4=4_200, count_e2=300, taker_side="yes")
        exchange.apply_trade(ticker, yes_price_e4=4_300, count_e2=150, taker_side="no")
        base = exchange.rest_url
        status, body = _get(f"{base}/markets/trades?ticker={ticker}&limit=1")
        assert status == 200
        [newest] = body["trades"]
        assert newest["yes_price_dollars"] == "0.4300" and newest["count_fp"] == "1.50"
        assert newest["taker_side"] == "no" and newest["ticker"] == ticker
        assert body["cursor"]
        older = _get(f"{base}/markets/trades?ticker={ticker}&cursor={body['cursor']}")[1]
        assert [t["yes_price_dollars"] for t in older["trades"]] == ["0.4200"]
        assert older["cursor"] == ""


def test_rest_rate_limit_knob_answers_429_like_kalshi() -> None:
    exchange = _exchange(resolve_after_s=None, rest_rate_limit_first=2)
    with ExchangeThread(exchange):
        base = exchange.rest_url
        assert _get(f"{base}/exchange/status") == (429, {"error": "too many requests"})
        assert _get(f"{base}/markets")[0] == 429
        assert _get(f"{base}/markets")[0] == 200
        exchange.rate_limit_rest(1)
        assert _get(f"{base}/series/KXSYN")[0] == 429
        assert _get(f"{base}/series/KXSYN")[0] == 200
        assert exchange.stats.rest_rate_limited == 3


def test_markets_close_resolve_and_settle_on_the_lifecycle_channel() -> None:
    exchange = _exchange(resolve_after_s=0.5, rate=200)

    async def scenario(url: str) -> list[dict[str, Any]]:
        client = await Client.connect(url)
        # Market filters are not supported on this channel: every market is sent.
        await client.send(
            "subscribe",
            {"channels": ["market_lifecycle_v2"], "market_tickers": ["KXSYN-26DEC31-M03"]},
        )
        frames = await client.until(
            lambda f: f["type"] == "market_lifecycle_v2" and f["msg"]["event_type"] == "activated"
        )
        await client.close()
        return frames

    with ExchangeThread(exchange) as url:
        frames = run(scenario(url))
        rest = {
            t: _get(f"{exchange.rest_url}/markets/{t}")[1]["market"] for t in exchange.tickers()
        }
    assert frames[0]["type"] == "subscribed"
    lifecycle = [f for f in frames if f["type"] == "market_lifecycle_v2"]
    assert all("seq" not in f and f["sid"] == frames[0]["msg"]["sid"] for f in frames[1:])
    by_market: dict[str, list[str]] = {}
    for f in lifecycle:
        by_market.setdefault(f["msg"]["market_ticker"], []).append(f["msg"]["event_type"])
    assert by_market["KXSYN-26DEC31-M00"] == ["close_date_updated", "determined", "settled"]
    assert by_market["KXSYNMK-26DEC31-M01"] == ["close_date_updated", "determined", "settled"]
    assert by_market["KXSYNINX-26DEC31-M02"] == ["close_date_updated", "determined", "settled"]
    assert by_market["KXSYN-26DEC31-M03"] == [
        "deactivated",
        "price_level_structure_updated",
        "activated",
    ]
    assert by_market["KXSYN-26DEC31NEW-M00"] == ["created"]
    determined = {
        f["msg"]["market_ticker"]: f["msg"]
        for f in lifecycle
        if f["msg"]["event_type"] == "determined"
    }
    assert determined["KXSYN-26DEC31-M00"]["result"] == "yes"
    assert determined["KXSYN-26DEC31-M00"]["settlement_value"] == "1.0000"
    assert determined["KXSYNMK-26DEC31-M01"]["result"] == "no"
    assert determined["KXSYNINX-26DEC31-M02"]["result"] == "scalar"
    assert determined["KXSYNINX-26DEC31-M02"]["settlement_value"] == "0.4250"
    assert isinstance(determined["KXSYN-26DEC31-M00"]["determination_ts"], int)
    [fee] = [f for f in frames if f["type"] == "event_fee_update"]
    assert fee["msg"]["event_ticker"] == "KXSYNINX-26DEC31"
    assert fee["msg"]["fee_multiplier_override"] == 0.25
    [event] = [f for f in frames if f["type"] == "event_lifecycle"]
    assert event["msg"]["event_ticker"] == "KXSYN-26DEC31NEW"
    # REST agrees with the channel.
    assert rest["KXSYN-26DEC31-M00"]["status"] == "finalized"
    assert rest["KXSYN-26DEC31-M00"]["settlement_value_dollars"] == "1.0000"
    assert rest["KXSYNINX-26DEC31-M02"]["result"] == "scalar"
    assert rest["KXSYN-26DEC31-M03"]["status"] == "active"
    assert rest["KXSYN-26DEC31-M03"]["price_level_structure"] == "deci_cent"
    assert rest["KXSYNMK-26DEC31-M04"]["result"] == ""
    # A closed market's book is empty and stays so.
    assert exchange.book_levels("KXSYN-26DEC31-M00") == ([], [])


def test_a_jsonl_capture_replays_its_lifecycle_messages(tmp_path) -> None:
    determined = {
        "market_ticker": "KXREP-26DEC31-A",
        "event_type": "determined",
        "result": "no",
        "settlement_value": "0.0000",
        "determination_ts": 1791427634,
        "extra_field_nobody_models": {"kept": True},
    }
    fee = {
        "event_ticker": "KXREP-26DEC31",
        "fee_type_override": "quadratic",
        "fee_multiplier_override": 0.5,
        "ts": 1791427600,
    }
    lines = [
        {
            "type": "orderbook_snapshot",
            "sid": 1,
            "seq": 1,
            "msg": {"market_ticker": "KXREP-26DEC31-A", "yes_dollars_fp": [["0.4000", "5.00"]]},
        },
        {"type": "event_fee_update", "sid": 2, "msg": fee},
        {"type": "market_lifecycle_v2", "sid": 2, "msg": determined},
    ]
    path = tmp_path / "capture.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    exchange = LocalExchange(
        ExchangeConfig(keys=(ApiKey(public_key=PUBLIC_PEM),), start_paused=True),
        source=JsonlReplaySource(path, speed=0),
    )

    async def listen(url: str, thread: ExchangeThread) -> list[dict[str, Any]]:
        client = await Client.connect(url)
        await client.send("subscribe", {"channels": ["market_lifecycle_v2"]})
        await client.until(lambda f: f["type"] == "subscribed")
        await asyncio.to_thread(thread.call, exchange.resume)
        got = [await client.recv(), await client.recv()]
        await client.close()
        return got

    thread = ExchangeThread(exchange)
    with thread as url:
        got = run(listen(url, thread))
        market = _get(f"{exchange.rest_url}/markets/KXREP-26DEC31-A")[1]["market"]
    # Only book frames define markets; lifecycle frames are sent again as recorded.
    assert exchange.tickers() == ["KXREP-26DEC31-A"]
    assert [(f["type"], f["msg"]) for f in got] == [
        ("event_fee_update", fee),
        ("market_lifecycle_v2", determined),
    ]
    assert (market["status"], market["result"], market["settlement_value_dollars"]) == (
        "determined",
        "no",
        "0.0000",
    )
