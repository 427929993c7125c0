"""The real client against the real local exchange: books survive drops, gaps and garbage."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from apps.marketdata.exchange import FaultConfig
from apps.marketdata.kalshi.client import ClientConfig, KalshiClient
from tests.marketdata.exchange_support import SIGNER, make_exchange, run


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
