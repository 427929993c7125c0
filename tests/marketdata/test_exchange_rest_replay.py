"""The local exchange's REST reads, JSONL replay, dev keys, background thread and command."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone
from websockets.sync.client import connect as sync_connect

from apps.marketdata.exchange import (
    ApiKey,
    ConfigError,
    ExchangeConfig,
    ExchangeThread,
    FaultConfig,
    JsonlReplaySource,
    LocalExchange,
    SyntheticSource,
    ensure_dev_keys,
)
from apps.marketdata.kalshi.signer import KalshiSigner
from apps.marketdata.models import OrderbookSnapshot, RecordingConnection

from .exchange_support import DATA_TYPES, SIGNER, BookRebuilder, Client, make_exchange, run

REPO_ROOT = Path(__file__).resolve().parents[2]


def _get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            assert response.headers["Content-Type"] == "application/json"
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


# ---- REST ---------------------------------------------------------------------------------------


def test_rest_markets_paginates_with_a_cursor_and_filters() -> None:
    exchange = make_exchange(markets=7, start_paused=True)
    with ExchangeThread(exchange):
        base = exchange.rest_url
        tickers, cursor, pages = [], "", 0
        while True:
            status, page = _get(f"{base}/markets?limit=3" + (f"&cursor={cursor}" if cursor else ""))
            assert status == 200
            pages += 1
            tickers += [m["ticker"] for m in page["markets"]]
            cursor = page["cursor"]
            if not cursor:
                break
        assert pages == 3
        assert tickers == sorted(exchange.tickers())

        market = page["markets"][0]
        book = exchange.market(market["ticker"])
        assert market["status"] == "active"
        assert market["event_ticker"] == f"{book.series_ticker}-26DEC31"
        assert market["yes_bid_dollars"] == f"0.{book.best_yes():04d}"
        assert market["yes_ask_dollars"] == f"0.{10_000 - book.best_no():04d}"
        assert market["price_level_structure"] == book.price_level_structure
        for key in ("close_time", "open_time", "price_ranges", "volume_fp", "no_bid_dollars"):
            assert key in market
        assert {
            r["step"] for m in _get(f"{base}/markets")[1]["markets"] for r in m["price_ranges"]
        } == {
            "0.0100",
            "0.0010",
        }

        a, b = exchange.tickers()[:2]
        assert [m["ticker"] for m in _get(f"{base}/markets?tickers={a},{b}")[1]["markets"]] == [
            a,
            b,
        ]
        # Markets 0, 3, 6 are in KXSYN; 1, 4 in KXSYNMK; 2, 5 in KXSYNINX (three fee kinds).
        assert (
            len(_get(f"{base}/markets?event_ticker=KXSYN-26DEC31&status=open")[1]["markets"]) == 3
        )
        assert len(_get(f"{base}/markets?series_ticker=KXSYN")[1]["markets"]) == 3
        assert len(_get(f"{base}/markets?series_ticker=KXSYNINX")[1]["markets"]) == 2
        assert _get(f"{base}/markets?series_ticker=OTHER")[1] == {"markets": [], "cursor": ""}
        assert _get(f"{base}/markets?status=closed")[1]["markets"] == []
        for bad in ("status=bogus", "limit=0", "limit=1001", "cursor=!!!"):
            status, payload = _get(f"{base}/markets?{bad}")
            assert status == 400 and payload["error"]["code"] == "invalid_parameters", bad


def test_rest_orderbook_returns_ascending_levels_and_depth_counts_from_the_best() -> None:
    exchange = make_exchange(start_paused=True)
    thread = ExchangeThread(exchange)
    with thread as thread_url:
        assert thread_url == exchange.url
        a = exchange.tickers()[0]
        yes = [(1_100, 9_722), (1_200, 47), (2_700, 3_154)]
        no = [(7_000, 1_100), (7_100, 2_500), (7_200, 2_000)]
        # Books belong to the exchange's loop: change them there.
        thread.call(lambda: exchange.set_book(a, yes=yes, no=no))
        status, full = _get(f"{exchange.rest_url}/markets/{a}/orderbook")
        assert status == 200
        assert full == {
            "orderbook_fp": {
                "yes_dollars": [["0.1100", "97.22"], ["0.1200", "0.47"], ["0.2700", "31.54"]],
                "no_dollars": [["0.7000", "11.00"], ["0.7100", "25.00"], ["0.7200", "20.00"]],
            }
        }
        _, top2 = _get(f"{exchange.rest_url}/markets/{a}/orderbook?depth=2")
        assert top2["orderbook_fp"]["yes_dollars"] == [["0.1200", "0.47"], ["0.2700", "31.54"]]
        assert top2["orderbook_fp"]["no_dollars"] == [["0.7100", "25.00"], ["0.7200", "20.00"]]
        assert _get(f"{exchange.rest_url}/markets/{a}/orderbook?depth=0")[1] == full
        assert _get(f"{exchange.rest_url}/markets/{a}/orderbook?depth=101")[0] == 400
        status, payload = _get(f"{exchange.rest_url}/markets/NOPE-1/orderbook")
        assert status == 404 and payload["error"]["code"] == "not_found"
        status, single = _get(f"{exchange.rest_url}/markets/{a}")
        assert status == 200 and single["market"]["ticker"] == a


# ---- background thread ---------------------------------------------------------------------------


def test_the_thread_helper_serves_synchronous_clients_and_stops_cleanly() -> None:
    exchange = make_exchange(rate=2_000, seed=2)
    thread = ExchangeThread(exchange)
    url = thread.start()
    try:
        with sync_connect(url, additional_headers=SIGNER.headers()) as ws:
            a = exchange.tickers()[0]
            ws.send(
                json.dumps(
                    {
                        "id": 1,
                        "cmd": "subscribe",
                        "params": {"channels": ["orderbook_delta"], "market_ticker": a},
                    }
                )
            )
            frames = [json.loads(ws.recv(timeout=5)) for _ in range(20)]
            thread.call(exchange.pause)
            ws.send(json.dumps({"id": 2, "cmd": "list_subscriptions"}))
            while frames[-1].get("id") != 2:
                frames.append(json.loads(ws.recv(timeout=5)))
            rebuilt = BookRebuilder()
            for frame in frames[1:-1]:
                rebuilt.feed(frame)
            assert rebuilt.levels(a) == thread.call(lambda: exchange.book_levels(a))
            assert rebuilt.gaps() == {1: []}
        assert thread.call(lambda: exchange.stats.connections_opened) == 1
    finally:
        thread.stop()
    with pytest.raises(RuntimeError, match="not running"):
        thread.call(exchange.pause)


# ---- JSONL replay --------------------------------------------------------------------------------

A = "KXMLBGAME-26OCT072000TBNYY-NYY"
A_ID = "01a0fa9c-5438-73af-9fe5-4b0acc58ab41"
B = "FED-23DEC-T3.00"
T0 = 1_791_427_623_000_000_000


def _wrapped(frame: dict, t_ns: int) -> str:
    return json.dumps({"timestamp": t_ns, "msg": json.dumps(frame)})


def _capture_lines() -> list[str]:
    ms = 1_000_000
    return [
        _wrapped(
            {"id": 1, "type": "subscribed", "msg": {"channel": "orderbook_delta", "sid": 1}}, T0
        ),
        _wrapped(
            {
                "type": "orderbook_snapshot",
                "sid": 1,
                "seq": 1,
                "msg": {
                    "market_ticker": A,
                    "market_id": A_ID,
                    "yes_dollars_fp": [["0.0650", "2.95"], ["0.1200", "10.00"]],
                    "no_dollars_fp": [["0.8000", "5.00"], ["0.8500", "1.50"]],
                },
            },
            T0 + ms,
        ),
        _wrapped(
            {
                "type": "orderbook_delta",
                "sid": 1,
                "seq": 2,
                "msg": {
                    "market_ticker": A,
                    "market_id": A_ID,
                    "price_dollars": "0.1300",
                    "delta_fp": "4.50",
                    "side": "yes",
                    "ts_ms": 1791427623002,
                },
            },
            T0 + 2 * ms,
        ),
        # A raw frame line (no capture wrapper), timed by sending_ts_ms.
        json.dumps(
            {
                "type": "orderbook_delta",
                "sid": 1,
                "seq": 3,
                "msg": {
                    "market_ticker": A,
                    "market_id": A_ID,
                    "price_dollars": "0.8500",
                    "delta_fp": "-1.50",
                    "side": "no",
                },
                "sending_ts_ms": 1791427623003,
            }
        ),
        # Legacy formats: integer cents and contracts, then the 2025 dollars + int sizes.
        json.dumps(
            {
                "type": "orderbook_snapshot",
                "sid": 2,
                "seq": 1,
                "msg": {"market_ticker": B, "yes": [[40, 3]], "no": [[50, 2]]},
            }
        ),
        json.dumps(
            {
                "type": "orderbook_delta",
                "sid": 2,
                "seq": 2,
                "msg": {"market_ticker": B, "price": 41, "delta": 7, "side": "yes"},
            }
        ),
        json.dumps(
            {
                "type": "orderbook_snapshot",
                "sid": 2,
                "seq": 3,
                "msg": {
                    "market_ticker": B,
                    "yes_dollars": [["0.420", 5]],
                    "no_dollars": [["0.500", 2]],
                },
            }
        ),
        _wrapped(
            {
                "type": "trade",
                "sid": 3,
                "seq": 1,
                "msg": {
                    "trade_id": "07257cc9-9041-866a-254b-a961c3a26cf2",
                    "market_ticker": A,
                    "yes_price_dollars": "0.1300",
                    "no_price_dollars": "0.8700",
                    "count_fp": "3.14",
                    "taker_side": "no",
                    "taker_outcome_side": "no",
                    "taker_book_side": "ask",
                    "is_block_trade": False,
                    "ts": 1791427634,
                    "ts_ms": 1791427634402,
                },
            },
            T0 + 4 * ms,
        ),
        "this line is not JSON",
        _wrapped(
            {
                "type": "orderbook_delta",
                "sid": 1,
                "seq": 4,
                "msg": {
                    "market_ticker": A,
                    "market_id": A_ID,
                    "price_dollars": "0.1300",
                    "delta_fp": "-3.14",
                    "side": "yes",
                },
            },
            T0 + 5 * ms,
        ),
        _wrapped({"type": "ticker", "sid": 4, "msg": {"market_ticker": A}}, T0 + 6 * ms),
        # A resync snapshot: subscribers must end up with exactly this book.
        _wrapped(
            {
                "type": "orderbook_snapshot",
                "sid": 1,
                "seq": 5,
                "msg": {
                    "market_ticker": A,
                    "market_id": A_ID,
                    "yes_dollars_fp": [["0.0650", "2.95"], ["0.1000", "1.00"]],
                    "no_dollars_fp": [["0.8000", "7.00"]],
                },
            },
            T0 + 7 * ms,
        ),
    ]


def test_jsonl_replay_streams_the_recorded_books_through_normal_subscriptions(
    tmp_path: Path,
) -> None:
    capture = tmp_path / "capture.jsonl"
    capture.write_text("\n".join(_capture_lines()) + "\n")
    source = JsonlReplaySource(capture, speed=0)

    async def body() -> None:
        exchange = make_exchange(source=source, start_paused=True)
        async with exchange.running() as url:
            assert exchange.tickers() == [A, B]
            assert exchange.market(A).market_id == A_ID
            assert exchange.market(A).price_level_structure == "tapered_deci_cent"
            assert exchange.market(A).fractional
            assert exchange.market(B).price_level_structure == "linear_cent"
            assert not exchange.market(B).fractional
            client = await Client.connect(url)
            await client.send(
                "subscribe", {"channels": ["orderbook_delta"], "market_tickers": [A, B]}
            )
            await client.send("subscribe", {"channels": ["trade"]})
            frames = await client.barrier()
            await exchange.resume()
            await exchange.wait_source_done(timeout_s=5)
            frames += await client.barrier()

            rebuilt = BookRebuilder()
            for frame in frames:
                rebuilt.feed(frame)
            assert rebuilt.gaps() == {1: []}
            # Initial snapshots, then recorded snapshots arrive as the deltas that turn the
            # book into them: 4 + 1 + 1 + 2 + 1 + 3 + 1 + 4 = 17 deltas. One trade on sid 2.
            assert rebuilt.last_seq == {1: 2 + 17, 2: 1}
            expected = {
                A: ([(650, 295), (1_000, 100)], [(8_000, 700)]),
                B: ([(4_200, 500)], [(5_000, 200)]),
            }
            for ticker, levels in expected.items():
                assert exchange.book_levels(ticker) == levels
                assert rebuilt.levels(ticker) == levels
            trades = [f["msg"] for f in frames if f["type"] == "trade"]
            assert len(trades) == 1
            assert trades[0]["trade_id"] == "07257cc9-9041-866a-254b-a961c3a26cf2"
            assert (trades[0]["yes_price_dollars"], trades[0]["count_fp"]) == ("0.1300", "3.14")
            assert (trades[0]["taker_side"], trades[0]["taker_book_side"]) == ("no", "ask")
            assert source.skipped_lines == 1
            assert source.events_applied == 9

    run(body())


def test_jsonl_replay_keeps_the_recorded_pace_scaled_by_speed(tmp_path: Path) -> None:
    frame = {
        "type": "orderbook_delta",
        "sid": 1,
        "seq": 1,
        "msg": {"market_ticker": A, "price_dollars": "0.5000", "delta_fp": "1.00", "side": "yes"},
    }
    capture = tmp_path / "paced.jsonl"
    capture.write_text(_wrapped(frame, T0) + "\n" + _wrapped(frame, T0 + 400_000_000) + "\n")

    async def body() -> None:
        exchange = make_exchange(source=JsonlReplaySource(capture, speed=2), start_paused=True)
        async with exchange.running() as url:
            client = await Client.connect(url)
            await client.send("subscribe", {"channels": ["orderbook_delta"], "market_ticker": A})
            await client.barrier()
            await exchange.resume()
            await client.recv()
            first = time.monotonic()
            await client.recv()
            assert 0.15 <= time.monotonic() - first <= 0.6  # 400 ms recorded at 2x

    run(body())


def test_replaying_real_captured_trades_reprints_them(shared_data: Path) -> None:
    capture = shared_data / "kalshi-captured" / "ssmd-kalshi_trade.jsonl"
    recorded = [json.loads(line)["msg"] for line in capture.read_text().splitlines() if line]

    async def body() -> None:
        exchange = make_exchange(source=JsonlReplaySource(capture, speed=0), start_paused=True)
        async with exchange.running() as url:
            client = await Client.connect(url)
            await client.send("subscribe", {"channels": ["trade"]})
            await client.barrier()
            await exchange.resume()
            await exchange.wait_source_done(timeout_s=5)
            trades = [f["msg"] for f in await client.barrier() if f["type"] in DATA_TYPES]
            assert [t["trade_id"] for t in trades] == [r["trade_id"] for r in recorded]
            for sent, original in zip(trades, recorded, strict=True):
                assert sent["yes_price_dollars"] == original["yes_price_dollars"]
                assert sent["count_fp"] == original["count_fp"]
                assert sent["taker_side"] == original["taker_side"]

    run(body())


# ---- keys and configuration ------------------------------------------------------------


def test_dev_keys_are_generated_once_with_a_private_mode_and_work_end_to_end(
    tmp_path: Path,
) -> None:
    said: list[str] = []
    keys = ensure_dev_keys(tmp_path / "keys", announce=said.append)
    assert re.fullmatch(
        r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", keys.key_id
    )
    assert stat.S_IMODE(keys.private_key_path.stat().st_mode) == 0o600
    assert len(said) == 1 and str(keys.private_key_path) in said[0]
    pem = keys.private_key_path.read_bytes()
    again = ensure_dev_keys(tmp_path / "keys", announce=said.append)
    assert again == keys and keys.private_key_path.read_bytes() == pem and len(said) == 1

    signer = KalshiSigner.from_file(key_id=keys.key_id, path=keys.private_key_path)

    async def body() -> None:
        exchange = LocalExchange(
            ExchangeConfig(keys=(ApiKey(public_key=keys.public_key_path, key_id=keys.key_id),)),
            source=SyntheticSource(),
        )
        async with exchange.running() as url:
            client = await Client.connect(url, signer=signer)
            await client.send("list_subscriptions")
            assert (await client.recv())["type"] == "ok"

    run(body())


def test_an_incomplete_key_directory_is_refused_not_overwritten(tmp_path: Path) -> None:
    keys = ensure_dev_keys(tmp_path, announce=None)
    keys.public_key_path.unlink()
    with pytest.raises(ConfigError, match="incomplete"):
        ensure_dev_keys(tmp_path, announce=None)
    assert keys.private_key_path.exists()


def test_bad_configuration_fails_early_with_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs at least one public key"):
        ExchangeConfig()
    with pytest.raises(ConfigError, match="cannot read the public key file"):
        LocalExchange(ExchangeConfig(keys=(ApiKey(public_key=tmp_path / "missing.pem"),)))
    with pytest.raises(ConfigError, match="not a valid RSA PEM key"):
        LocalExchange(ExchangeConfig(keys=(ApiKey(public_key="-----BEGIN nonsense"),)))
    with pytest.raises(ConfigError, match="drop_after_messages"):
        FaultConfig(drop_after_messages=0)
    with pytest.raises(ConfigError, match="error_code"):
        FaultConfig(error_code=99)
    with pytest.raises(ConfigError, match="ping_interval_s"):
        ExchangeConfig(require_auth=False, ping_interval_s=-1)
    with pytest.raises(ConfigError, match="does not exist"):
        JsonlReplaySource(tmp_path / "nope.jsonl")


# ---- management command ----------------------------------------------------------------


def test_the_command_serves_for_a_duration_and_prints_url_and_key_locations(tmp_path: Path) -> None:
    out = io.StringIO()
    call_command(
        "run_local_exchange",
        "--port",
        "0",
        "--duration",
        "0.4",
        "--progress-interval",
        "0.1",
        "--markets",
        "2",
        "--rate",
        "500",
        "--key-dir",
        str(tmp_path / "k"),
        stdout=out,
    )
    text = out.getvalue()
    assert re.search(r"listening on ws://127\.0\.0\.1:\d+/trade-api/ws/v2", text)
    assert str(tmp_path / "k" / "local-exchange-private.pem") in text
    assert "book msgs/s" in text
    assert "Stopped." in text


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)  # the replay reads in its own thread's connection
def test_the_command_replays_the_database_as_the_one_source(tmp_path: Path) -> None:
    """``--replay-db``: the command builds the database source (it needs Django, which the
    exchange does not import) and the exchange serves the recorded market."""
    now = timezone.now()
    conn = RecordingConnection.objects.create(
        exchange="local", ws_url="ws://x", markets=["KXREC-26DEC31-A"], opened_at=now
    )
    OrderbookSnapshot.objects.create(
        connection=conn, market_ticker="KXREC-26DEC31-A", sid=1, seq=1,
        yes_levels=[[4000, 1000]], no_levels=[[5000, 1000]], received_at=now,
        source="ws", as_of_sid=1, as_of_seq=1,
    )  # fmt: skip
    keys = ["--port", "0", "--key-dir", str(tmp_path / "k")]
    out = io.StringIO()
    call_command("run_local_exchange", "--replay-db", "--duration", "0.3", *keys, stdout=out)
    assert "1 markets; Ctrl-C to stop" in out.getvalue(), out.getvalue()
    with pytest.raises(CommandError, match="choose one source"):
        call_command("run_local_exchange", "--replay-db", "--planted", "lead_lag", *keys)


def test_the_command_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [
            sys.executable,
            "manage.py",
            "run_local_exchange",
            "--port",
            "0",
            "--key-dir",
            str(tmp_path / "k"),
            "--rate",
            "200",
        ],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        seen = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            seen.append(line)
            if "listening on" in line:
                break
        url = re.search(r"ws://\S+", "".join(seen))
        assert url, "".join(seen)
        process.send_signal(signal.SIGTERM)
        rest, _ = process.communicate(timeout=15)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, "".join(seen) + rest
    assert "Stopped." in rest
