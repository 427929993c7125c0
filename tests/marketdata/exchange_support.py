"""Helpers for the local-exchange tests: a signed client, a plain-dict book rebuilder.

Frames are read with plain ``json.loads`` (the product's parser is tested elsewhere) and
prices/sizes converted with the units module, so these tests check the wire, not our parser.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.frames import Frame, Opcode

from apps.marketdata.exchange import (
    ApiKey,
    ExchangeConfig,
    FaultConfig,
    LocalExchange,
    MarketDataSource,
    SyntheticConfig,
    SyntheticSource,
)
from apps.marketdata.kalshi.signer import KalshiSigner, generate_key_pair
from apps.marketdata.kalshi.units import count_to_e2, dollars_to_e4

PRIVATE_PEM, PUBLIC_PEM = generate_key_pair()
SIGNER = KalshiSigner.from_pem(key_id="test-key-1", pem=PRIVATE_PEM)
DATA_TYPES = ("orderbook_snapshot", "orderbook_delta", "trade")


def run(coro: Coroutine[Any, Any, Any], timeout_s: float = 30.0) -> Any:
    """Run one async test body; a hang fails the test instead of the whole session."""

    async def bounded() -> Any:
        async with asyncio.timeout(timeout_s):
            return await coro

    return asyncio.run(bounded())


def make_exchange(
    *,
    source: MarketDataSource | None = None,
    markets: int = 3,
    rate: float = 0.0,
    seed: int = 1,
    max_messages: int | None = None,
    faults: FaultConfig | None = None,
    **config: Any,
) -> LocalExchange:
    source = source or SyntheticSource(
        SyntheticConfig(markets=markets, rate=rate, seed=seed, max_messages=max_messages)
    )
    return LocalExchange(
        ExchangeConfig(
            keys=(ApiKey(public_key=PUBLIC_PEM),),
            faults=faults or FaultConfig(),
            **config,
        ),
        source=source,
    )


class PingRecordingConnection(ClientConnection):
    """A client connection that remembers the payload of every Ping the server sends."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pings_received: list[bytes] = []

    def process_event(self, event: Any) -> None:
        if isinstance(event, Frame) and event.opcode is Opcode.PING:
            self.pings_received.append(bytes(event.data))
        super().process_event(event)


class Client:
    """A signed test client speaking the command protocol."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.next_id = 1

    @classmethod
    async def connect(cls, url: str, *, signer: KalshiSigner = SIGNER, **kwargs: Any) -> Client:
        ws = await connect(url, additional_headers=signer.headers(), **kwargs)
        return cls(ws)

    async def send(self, cmd: str, params: dict[str, Any] | None = None) -> int:
        cmd_id = self.next_id
        self.next_id += 1
        command: dict[str, Any] = {"id": cmd_id, "cmd": cmd}
        if params is not None:
            command["params"] = params
        await self.ws.send(json.dumps(command))
        return cmd_id

    async def recv_raw(self, timeout_s: float = 5.0) -> str | bytes:
        async with asyncio.timeout(timeout_s):
            return await self.ws.recv()

    async def recv(self, timeout_s: float = 5.0) -> dict[str, Any]:
        raw = await self.recv_raw(timeout_s)
        assert isinstance(raw, str), f"expected a text frame, got {raw!r}"
        frame = json.loads(raw)
        assert isinstance(frame.pop("sending_ts_ms"), int), raw
        return frame

    async def until(
        self, predicate: Callable[[dict[str, Any]], bool], timeout_s: float = 10.0
    ) -> list[dict[str, Any]]:
        """Frames up to and including the first that matches ``predicate``."""
        frames = []
        async with asyncio.timeout(timeout_s):
            while True:
                frame = await self.recv(timeout_s)
                frames.append(frame)
                if predicate(frame):
                    return frames

    async def barrier(self, timeout_s: float = 10.0) -> list[dict[str, Any]]:
        """Every frame the exchange queued before now: its reply to a command is queued after
        them, on the same connection."""
        cmd_id = await self.send("list_subscriptions")
        frames = await self.until(
            lambda f: f.get("id") == cmd_id and f["type"] == "ok" and isinstance(f["msg"], list),
            timeout_s,
        )
        return frames[:-1]

    async def close(self) -> None:
        await self.ws.close()


class BookRebuilder:
    """Applies snapshots and deltas to plain dicts and checks seq continuity per sid.

    ``use_yes_price`` undoes the YES-scale NO prices so books compare in NO prices.
    """

    def __init__(self, *, use_yes_price: bool = False) -> None:
        self.use_yes_price = use_yes_price
        self.books: dict[str, dict[str, dict[int, int]]] = {}
        self.last_seq: dict[int, int] = {}
        self.seq_steps: dict[int, list[int]] = {}
        self.crossed: list[tuple[str, int, int]] = []

    def _price(self, side: str, text: str) -> int:
        price = dollars_to_e4(text)
        return 10_000 - price if self.use_yes_price and side == "no" else price

    def note_seq(self, frame: dict[str, Any]) -> None:
        if "seq" not in frame:
            return
        sid, seq = frame["sid"], frame["seq"]
        if sid in self.last_seq:
            self.seq_steps.setdefault(sid, []).append(seq - self.last_seq[sid])
        self.last_seq[sid] = seq

    def feed(self, frame: dict[str, Any]) -> None:
        self.note_seq(frame)
        kind, msg = frame["type"], frame.get("msg")
        if kind == "orderbook_snapshot":
            self.books[msg["market_ticker"]] = {
                side: {
                    self._price(side, p): count_to_e2(s)
                    for p, s in msg.get(f"{side}_dollars_fp", [])
                }
                for side in ("yes", "no")
            }
        elif kind == "orderbook_delta":
            book = self.books[msg["market_ticker"]][msg["side"]]
            price = self._price(msg["side"], msg["price_dollars"])
            new = book.get(price, 0) + count_to_e2(msg["delta_fp"], signed=True)
            if new > 0:
                book[price] = new
            else:
                book.pop(price, None)
            yes, no = self.books[msg["market_ticker"]].values()
            if yes and no and max(yes) + max(no) >= 10_000:
                self.crossed.append((msg["market_ticker"], max(yes), max(no)))

    def levels(self, ticker: str) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        book = self.books[ticker]
        return sorted(book["yes"].items()), sorted(book["no"].items())

    def gaps(self) -> dict[int, list[int]]:
        """Per sid, the seq steps that were not +1."""
        return {sid: [s for s in steps if s != 1] for sid, steps in self.seq_steps.items()}
