"""The real client against the real local exchange: books survive drops, gaps and garbage."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

from apps.marketdata.exchange import ApiKey, FaultConfig
from apps.marketdata.kalshi.client import TRADE, ClientConfig, KalshiClient
from apps.marketdata.kalshi.rejects import read_rejected_frames
from tests.marketdata.exchange_support import PUBLIC_PEM, SIGNER, make_exchange, run
from tests.marketdata.hostile_exchange import HostileExchange, Session


class MemorySink:
    """Keeps every callback, in order, like the recorder's writer would."""

    def __init__(self) -> None:
        self.connections: list[uuid.UUID] = []
        self.snapshots: list[tuple[uuid.UUID, Any, str]] = []
        self.deltas: list[tuple[uuid.UUID, Any]] = []
        self.trades: list[tuple[uuid.UUID, Any]] = []
        self.events: list[tuple[uuid.UUID, str, dict[str, Any]]] = []

    def on_connect(self, connection_id, url, markets) -> None:
        self.connections.append(connection_id)

    def on_snapshot(self, connection_id, msg, received_ns, source) -> None:
        self.snapshots.append((connection_id, msg, source))

    def on_delta(self, connection_id, msg, received_ns) -> None:
        self.deltas.append((connection_id, msg))

    def on_trade(self, connection_id, msg, received_ns) -> None:
        self.trades.append((connection_id, msg))

    def on_event(self, connection_id, kind, **fields) -> None:
        self.events.append((connection_id, kind, fields))

    def on_disconnect(self, connection_id, reason) -> None:
        pass

    def kinds(self) -> list[str]:
        return [kind for _, kind, _ in self.events]


async def wait_for(predicate, timeout_s: float = 20.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not predicate():  # noqa: ASYNC110 (polling a plain predicate on purpose)
            await asyncio.sleep(0.02)


async def follow(exchange, sink, *, settle: Any, **config: Any) -> KalshiClient:
    """Run a client until ``settle(client)`` is true, pause the exchange, drain, stop."""
    async with exchange.running() as url:
        client = KalshiClient(
            ClientConfig(
                ws_url=url, markets=exchange.tickers(), reconnect_initial_s=0.05, **config
            ),
            signer=SIGNER,
            sink=sink,
        )
        task = asyncio.create_task(client.run())
        await wait_for(lambda: settle(client))
        await exchange.pause()
        await exchange.flush()
        # Every book trusted again means every resync answered.
        await wait_for(lambda: all(client.is_trusted(m) for m in exchange.tickers()))
        await asyncio.sleep(0.2)
        client.stop()
        await asyncio.wait_for(task, 10)
        return client


def assert_books_match(client: KalshiClient, exchange) -> None:
    for ticker in exchange.tickers():
        assert client.books[ticker].snapshot_levels() == exchange.book_levels(ticker), ticker


def test_it_keeps_every_book_equal_to_the_exchange() -> None:
    exchange = make_exchange(markets=4, rate=3000)
    sink = MemorySink()
    client = run(follow(exchange, sink, settle=lambda c: c.stats.deltas > 3000))
    assert_books_match(client, exchange)
    assert client.stats.gaps == 0 and client.stats.malformed == 0
    assert {source for _, _, source in sink.snapshots} == {"ws"}
    assert len(sink.trades) > 0


def test_books_survive_dropped_connections_gaps_and_malformed_frames() -> None:
    faults = FaultConfig(drop_after_messages=1500, seq_gap_every=400, malformed_every=300)
    exchange = make_exchange(markets=3, rate=4000, faults=faults)
    sink = MemorySink()
    client = run(follow(exchange, sink, settle=lambda c: c.stats.connections >= 4), timeout_s=60)
    assert_books_match(client, exchange)
    assert client.stats.reconnects >= 3
    assert client.stats.gaps > 0 and client.stats.resyncs > 0
    assert client.stats.malformed > 0
    assert len(set(sink.connections)) == client.stats.connections
    assert {"gap", "resync", "disconnect"} <= set(sink.kinds())
    assert "resync" in {source for _, _, source in sink.snapshots}


def test_a_dead_subscription_is_resubscribed_on_a_new_sid() -> None:
    exchange = make_exchange(markets=2, rate=1000)
    sink = MemorySink()

    def settle(client: KalshiClient) -> bool:
        if client.stats.deltas > 300 and not getattr(client, "_errored", False):
            exchange.emit_subscription_error(code=25)
            client._errored = True
        return client.stats.resubscribes >= 1 and client.stats.deltas > 1500

    client = run(follow(exchange, sink, settle=settle))
    assert_books_match(client, exchange)
    assert "sub_error" in sink.kinds()
    sids = {msg.sid for _, msg, _ in sink.snapshots}
    assert len(sids) >= 2, "the markets must come back on a new sid"


def test_a_silent_socket_is_detected_by_ping_timeout_and_reconnected() -> None:
    exchange = make_exchange(markets=1, rate=200)
    sink = MemorySink()

    def settle(client: KalshiClient) -> bool:
        if client.stats.deltas > 50 and not getattr(client, "_stalled", False):
            exchange.stall(3, ignore_pings=True)
            client._stalled = True
        return client.stats.connections >= 2 and client.stats.deltas > 100

    client = run(
        follow(exchange, sink, settle=settle, ping_interval_s=0.3, ping_timeout_s=0.6),
        timeout_s=40,
    )
    assert client.stats.reconnects >= 1
    details = [f["detail"] for _, kind, f in sink.events if kind == "disconnect"]
    assert any("keepalive ping timeout" in d for d in details), details
    assert_books_match(client, exchange)


def test_backoff_grows_exponentially_with_jitter_and_is_capped() -> None:
    client = KalshiClient(
        ClientConfig(ws_url="ws://x", markets=["M"], reconnect_initial_s=1, reconnect_max_s=8),
        signer=SIGNER,
        sink=MemorySink(),
    )
    delays = [client.backoff_delay(n) for n in range(1, 8)]
    assert 0.5 <= delays[0] <= 1 and 1 <= delays[1] <= 2 and 2 <= delays[2] <= 4
    assert all(4 <= d <= 8 for d in delays[3:])


# -- a scripted hostile server: sids the client never acknowledged, failing sinks ---------------

A, B = "KXHOST-A", "KXHOST-B"


class Phases:
    """Lets a server script wait for the test between phases (same event loop)."""

    def __init__(self) -> None:
        self._events: dict[int, asyncio.Event] = {}

    def _event(self, n: int) -> asyncio.Event:
        return self._events.setdefault(n, asyncio.Event())

    async def reached(self, n: int) -> None:
        await asyncio.wait_for(self._event(n).wait(), 20)

    def go(self, n: int) -> None:
        self._event(n).set()


async def run_against(exchange: HostileExchange, sink, body, **config: Any) -> KalshiClient:
    """Connect a client to ``exchange``, run ``body(client)``, stop the client."""
    async with exchange.serving() as url:
        client = KalshiClient(
            ClientConfig(ws_url=url, markets=exchange.markets, reconnect_initial_s=0.05, **config),
            signer=SIGNER,
            sink=sink,
        )
        task = asyncio.create_task(client.run())
        try:
            await body(client)
        finally:
            client.stop()
            await asyncio.wait_for(task, 10)
        assert exchange.script_error is None, exchange.script_error
        return client


def server_levels(exchange: HostileExchange, market: str) -> tuple[list, list]:
    book = exchange.books[market]
    return sorted(book["yes"].items()), sorted(book["no"].items())


def snapshot_requests(exchange: HostileExchange) -> list[tuple[int, list[str]]]:
    return [
        (c["params"]["sid"], c["params"]["market_tickers"])
        for c in exchange.commands
        if c.get("cmd") == "update_subscription"
    ]


def test_a_snapshot_on_a_sid_never_acknowledged_cannot_move_a_market_off_its_sid() -> None:
    """Issue 12, item 8. Before: the bogus snapshot reassigned A to sid 9, so the gap on
    sid 1 untrusted B only and A kept a book that had missed a delta."""
    phases = Phases()

    async def script(s: Session) -> None:
        await s.send(s.delta(A, 4100, 200))  # sid 1 seq 3
        await s.send(s.snapshot(A, sid=9, seq=1))  # sid 9 was never acknowledged
        await s.send(s.delta(A, 4200, 300, sid=9, seq=2, apply=False))
        await s.send(s.delta(A, 4300, 300, sid=2, seq=1, apply=False))  # the trade sid
        await s.send(s.delta(B, 4100, 100))  # sid 1 seq 4
        await phases.reached(1)
        s.next_seq(1)  # seq 5 is lost
        await s.send(s.delta(A, 4100, 100))  # seq 6: a gap on sid 1
        await s.send(s.delta(B, 4100, 100))

    exchange = HostileExchange([A, B], keys=(ApiKey(public_key=PUBLIC_PEM),), script=script)
    sink = MemorySink()

    async def body(client: KalshiClient) -> None:
        await wait_for(lambda: client.stats.messages >= 2 + 2 + 5)  # acks, snapshots, phase 0
        for market in (A, B):
            assert client.is_trusted(market), market
            assert client.books[market].snapshot_levels() == server_levels(exchange, market)
        assert client.book_position(A) == (1, 3)
        phases.go(1)
        await wait_for(lambda: client.stats.gaps == 1)
        await wait_for(lambda: client.is_trusted(A) and client.is_trusted(B))

    client = run(run_against(exchange, sink, body))
    assert client.stats.malformed_reasons == {"unacknowledged_sid": 2, "wrong_channel": 1}
    assert client.stats.malformed == 3
    # Nothing from the foreign sids reached the sink (so nothing was stored).
    assert {msg.sid for _, msg, _ in sink.snapshots} == {1}
    assert {msg.sid for _, msg in sink.deltas} == {1}
    # The gap untrusted both markets of sid 1 and the resync went to sid 1 for both.
    gap = next(f for _, kind, f in sink.events if kind == "gap")
    assert gap["sid"] == 1 and (gap["expected_seq"], gap["got_seq"]) == (5, 6)
    assert "markets=2" in gap["detail"]
    assert [(sid, sorted(markets)) for sid, markets in snapshot_requests(exchange)] == [(1, [A, B])]
    for market in (A, B):
        assert client.books[market].snapshot_levels() == server_levels(exchange, market)
    assert [r.code for r in client.rejected.recent()] == [
        "unacknowledged_sid",
        "unacknowledged_sid",
        "wrong_channel",
    ]


class FailingSink(MemorySink):
    """A sink whose on_delta raises for one marked delta, as a broken writer would."""

    def __init__(self, poison_e2: int) -> None:
        super().__init__()
        self.poison_e2 = poison_e2

    def on_delta(self, connection_id, msg, received_ns) -> None:
        if msg.delta_e2 == self.poison_e2:
            raise RuntimeError("the writer refused the row")
        super().on_delta(connection_id, msg, received_ns)


def test_a_sink_that_raises_on_one_frame_costs_that_frame_not_the_client(tmp_path) -> None:
    phases = Phases()

    async def script(s: Session) -> None:
        await s.send(s.delta(A, 4100, 200))
        await s.send(s.delta(A, 4200, 777))  # the sink raises on this one
        await s.send(s.delta(B, 4100, 100))
        await s.send(s.delta(A, 4300, 100))
        await phases.reached(1)

    exchange = HostileExchange([A, B], keys=(ApiKey(public_key=PUBLIC_PEM),), script=script)
    sink = FailingSink(poison_e2=777)

    async def body(client: KalshiClient) -> None:
        await wait_for(lambda: client.stats.messages >= 2 + 2 + 4)
        # The failed frame's market was untrusted and resynced; the other one never was.
        await wait_for(lambda: client.is_trusted(A) and client.stats.resyncs == 1)
        phases.go(1)

    client = run(run_against(exchange, sink, body, rejected_frames_dir=tmp_path / "rejected"))
    assert client.stats.handler_errors == 1
    assert client.stats.malformed_reasons == {"handler_error": 1}
    assert "RuntimeError while handling OrderbookDelta" in client.stats.last_malformed_reason
    assert [d.delta_e2 for _, d in sink.deltas] == [200, 100, 100]
    resync = [f for _, kind, f in sink.events if kind == "resync" and f.get("market_ticker")]
    assert [(f["market_ticker"], f["sid"]) for f in resync] == [(A, 1)]
    assert "frame not handled" in resync[0]["detail"]
    assert snapshot_requests(exchange) == [(1, [A])]
    for market in (A, B):
        assert client.books[market].snapshot_levels() == server_levels(exchange, market)
    # The frame itself is kept on disk, whole, with its reason.
    records = read_rejected_frames(tmp_path / "rejected")
    assert [r["code"] for r in records] == ["handler_error"]
    assert json.loads(records[0]["raw"])["msg"]["delta_fp"] == "7.77"
    assert records[0]["connection_id"] == str(client.connection_id)


def test_only_acks_of_our_own_subscribe_commands_create_sids_a_merging_ok_included() -> None:
    phases = Phases()

    async def script(s: Session) -> None:
        # A "subscribed" answering no command we sent: sid 7 must not come to exist.
        await s.send('{"id":99,"type":"subscribed","msg":{"channel":"orderbook_delta","sid":7}}')
        await s.send(s.snapshot(A, sid=7, seq=1))
        await s.send(s.trade(A))  # on sid 2, acknowledged by a merging "ok"
        await s.send(s.delta(A, 4100, 100))
        await phases.reached(1)

    exchange = HostileExchange(
        [A], keys=(ApiKey(public_key=PUBLIC_PEM),), script=script, merge_acks=[TRADE]
    )
    sink = MemorySink()

    async def body(client: KalshiClient) -> None:
        await wait_for(lambda: client.stats.messages >= 2 + 1 + 4)
        assert client.book_position(A) == (1, 2)  # still on sid 1, the delta applied
        phases.go(1)

    client = run(run_against(exchange, sink, body))
    assert client.stats.malformed_reasons == {"unexpected_ack": 1, "unacknowledged_sid": 1}
    assert [(t.sid, t.seq) for _, t in sink.trades] == [(2, 2)]  # seq 1 was the ok's
    assert [(m.sid, m.seq) for _, m, _ in sink.snapshots] == [(1, 1)]
    assert client.books[A].snapshot_levels() == server_levels(exchange, A)
