"""The recorder against the local exchange records market lives: lifecycle messages of markets
that close, resolve and settle during the test, stored losslessly, replayed from the database,
and hostile lifecycle frames counted, never fatal."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from apps.marketdata.db_replay import DbReplaySource
from apps.marketdata.exchange import (
    ApiKey,
    ExchangeConfig,
    ExchangeThread,
    LocalExchange,
    SyntheticConfig,
    SyntheticSource,
    ensure_dev_keys,
)
from apps.marketdata.ingest import IngestOptions, run_ingest_async
from apps.marketdata.models import MarketInfo, MarketLifecycle, SeriesFeeChange, SeriesFees

from .exchange_support import PUBLIC_PEM, Client

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

# 3 closes + 3 determined + 3 settled, deactivated + activated, the fee update, the tick
# structure change, the new event and its market.
EXPECTED_LIFECYCLE = 3 + 3 + 3 + 2 + 1 + 1 + 2

HOSTILE_BODIES = [
    '{"market_ticker":"KXSYN-26DEC31-M00","event_type":"determined","settlement_value":"1.5"}',
    '{"market_ticker":"KXSYN-26DEC31-M00","event_type":"settled","settled_ts":99}',
    '{"market_ticker":"A\\u0000B","event_type":"created"}',
    '{"market_ticker":"KXSYN-26DEC31-M00","event_type":' + '"' + "x" * 100 + '"}',
    '{"market_ticker":"KXSYN","event_type":"created","additional_metadata":'
    + "[" * 100
    + "]" * 100
    + "}",
    '{"market_ticker":"KXSYN","event_type":"created","pad":"' + "p" * 70_000 + '"}',
]


def _exchange(settings: Any) -> LocalExchange:
    keys = ensure_dev_keys(settings.LOCAL_EXCHANGE_KEY_DIR, announce=lambda *_: None)
    return LocalExchange(
        ExchangeConfig(keys=(ApiKey(public_key=keys.public_key_path, key_id=keys.key_id),)),
        source=SyntheticSource(
            SyntheticConfig(
                markets=6,
                rate=400,
                seed=5,
                resolve_after_s=1.5,
                resolve_markets=3,
                settle_after_s=0.5,
            )
        ),
    )


def _signature(rows: list[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
    return sorted(rows)


def test_lifecycle_is_recorded_losslessly_replayed_and_hostile_frames_are_counted(
    settings,
) -> None:
    exchange = _exchange(settings)
    thread = ExchangeThread(exchange)
    with thread as url:

        async def scenario() -> Any:
            stop = asyncio.Event()
            task = asyncio.create_task(
                run_ingest_async(
                    IngestOptions(
                        ws_url=url,
                        exchange="local",
                        progress_interval_s=60,
                        metadata_interval_s=0.5,
                    ),
                    stop_event=stop,
                    install_signal_handlers=False,
                )
            )
            async with asyncio.timeout(60):
                while exchange.stats.lifecycle_messages < EXPECTED_LIFECYCLE:  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
            for body in HOSTILE_BODIES:
                await asyncio.to_thread(
                    thread.call,
                    lambda body=body: exchange.venue.publish_lifecycle("market_lifecycle_v2", body),
                )
            await asyncio.sleep(1.5)  # the next metadata fetch sees the results
            stop.set()
            return await task

        result = asyncio.run(scenario())
        final = {m.ticker: (m.status, m.result, m.settlement_value_e4) for m in exchange.markets()}

    client = result.client
    # Hostile frames: counted and skipped, the recording went on.
    assert client["malformed"] >= len(HOSTILE_BODIES), client["malformed_reasons"]
    for code in ("number_out_of_range", "timestamp_out_of_range", "bad_text", "too_long"):
        assert client["malformed_reasons"].get(code, 0) >= 1, client["malformed_reasons"]
    assert client["lifecycle"] == EXPECTED_LIFECYCLE
    rows = list(MarketLifecycle.objects.order_by("local_seq"))
    assert len(rows) == EXPECTED_LIFECYCLE
    assert [r.local_seq for r in rows] == list(range(1, EXPECTED_LIFECYCLE + 1))
    # Lossless: the stored text is the frame, and it parses to what was stored.
    for row in rows:
        frame = json.loads(row.raw)
        assert frame["type"] == row.kind
        if row.kind == "market_lifecycle_v2":
            assert frame["msg"]["event_type"] == row.event_type
            assert frame["msg"]["market_ticker"] == row.market_ticker
    by_market: dict[str, list[MarketLifecycle]] = {}
    for row in rows:
        by_market.setdefault(row.market_ticker, []).append(row)
    for ticker in ("KXSYN-26DEC31-M00", "KXSYNMK-26DEC31-M01", "KXSYNINX-26DEC31-M02"):
        kinds = [r.event_type for r in by_market[ticker]]
        assert kinds == ["close_date_updated", "determined", "settled"], (ticker, kinds)
        determined = by_market[ticker][1]
        status, result_, value = final[ticker]
        assert status == "finalized"
        assert (determined.result, determined.settlement_value_e4) == (result_, value)
        assert determined.event_ts is not None and by_market[ticker][0].close_ts is not None
    assert by_market["KXSYNINX-26DEC31-M02"][1].result == "scalar"
    assert by_market["KXSYNINX-26DEC31-M02"][1].settlement_value_e4 == 4_250
    [fee] = [r for r in rows if r.kind == "event_fee_update"]
    assert (fee.event_ticker, fee.fee_type, fee.fee_multiplier_e4) == (
        "KXSYNINX-26DEC31",
        "quadratic",
        2_500,
    )
    [created] = [r for r in rows if r.event_type == "created"]
    assert created.market_ticker == "KXSYN-26DEC31NEW-M00" and created.close_ts is not None
    assert [
        r.is_deactivated for r in by_market["KXSYN-26DEC31-M03"] if r.is_deactivated is not None
    ] == [
        True,
        False,
    ]
    # Metadata over REST: every recorded market, with its close time from the start (the
    # recorder started after the markets opened), then its result once known.
    assert set(result.markets) == {t for t in final if not t.startswith("KXSYN-26DEC31NEW")}
    info = {m.ticker: m for m in MarketInfo.objects.all()}
    assert set(info) == set(result.markets)
    for ticker in ("KXSYN-26DEC31-M00", "KXSYNMK-26DEC31-M01", "KXSYNINX-26DEC31-M02"):
        status, result_, value = final[ticker]
        row = info[ticker]
        assert (row.status, row.result, row.settlement_value_e4) == (status, result_, value)
        assert row.close_time is not None and row.open_time < row.close_time
        assert row.can_close_early is True
    assert info["KXSYN-26DEC31-M03"].price_level_structure == "deci_cent"
    assert info["KXSYNINX-26DEC31-M05"].series_ticker == "KXSYNINX"
    fees = {s.series_ticker: (s.fee_type, s.fee_multiplier_e4) for s in SeriesFees.objects.all()}
    assert fees == {
        "KXSYN": ("quadratic", 10_000),
        "KXSYNMK": ("quadratic_with_maker_fees", 10_000),
        "KXSYNINX": ("quadratic", 2_500),  # the scheduled change took effect during the run
    }
    [change] = SeriesFeeChange.objects.all()
    assert (change.series_ticker, change.fee_multiplier_e4) == ("KXSYNINX", 2_500)

    recorded = _signature([(r.kind, r.event_type, r.market_ticker or r.event_ticker) for r in rows])
    recorded_msgs = sorted(json.dumps(json.loads(r.raw)["msg"], sort_keys=True) for r in rows)

    # The database replay sends the same lifecycle messages again.
    replay = LocalExchange(
        ExchangeConfig(keys=(ApiKey(public_key=PUBLIC_PEM),), start_paused=True),
        source=DbReplaySource(speed=0),
    )

    async def listen(url: str) -> list[dict[str, Any]]:
        client = await Client.connect(url)
        await client.send("subscribe", {"channels": ["market_lifecycle_v2"]})
        await client.until(lambda f: f["type"] == "subscribed")
        await asyncio.to_thread(replay_thread.call, replay.resume)
        got: list[dict[str, Any]] = []
        async with asyncio.timeout(30):
            while len(got) < EXPECTED_LIFECYCLE:
                got.append(await client.recv())
        await client.close()
        return got

    replay_thread = ExchangeThread(replay)
    with replay_thread as replay_url:
        replayed = asyncio.run(listen(replay_url))
        replayed_state = {
            t: (m.status, m.result, m.settlement_value_e4)
            for t, m in ((m.ticker, m) for m in replay.markets())
        }
    assert (
        _signature(
            [
                (
                    f["type"],
                    f["msg"].get("event_type", "event_created")
                    if f["type"] != "event_fee_update"
                    else "fee_update",
                    f["msg"].get("market_ticker") or f["msg"].get("event_ticker"),
                )
                for f in replayed
            ]
        )
        == recorded
    )
    assert sorted(json.dumps(f["msg"], sort_keys=True) for f in replayed) == recorded_msgs
    for ticker in ("KXSYN-26DEC31-M00", "KXSYNMK-26DEC31-M01", "KXSYNINX-26DEC31-M02"):
        assert replayed_state[ticker] == final[ticker]
