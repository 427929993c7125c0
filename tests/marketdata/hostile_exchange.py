"""A small scripted Kalshi-compatible WebSocket server that sends whatever a test tells it to.

Unlike the bundled local exchange, nothing here is well behaved on purpose: after the usual
handshake (signed headers checked like Kalshi does) and ``subscribe`` acks (the shapes the
local exchange and Kalshi use: ``{"id":N,"type":"subscribed","msg":{"channel":..,"sid":..}}``
then one ``orderbook_snapshot`` per market), it runs the test's script, which sends any mix
of valid frames and hostile bytes. Valid frames are built from a simple per-market book kept
here, so the client's books can be compared with it. ``get_snapshot`` requests are answered
like Kalshi does (a snapshot carrying the command id and the sid's next seq) and every
command received is kept in :attr:`HostileExchange.commands`.

Runs in the caller's event loop (``async with exchange.serving() as url``) or in a thread
for a recorder started as a subprocess (``with HostileExchangeThread(exchange) as url``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from http import HTTPStatus
from typing import Any

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from apps.marketdata.exchange import ApiKey
from apps.marketdata.exchange.auth import HandshakeAuth
from apps.marketdata.kalshi.signer import WS_PATH
from apps.marketdata.kalshi.units import e2_to_count, e4_to_dollars

ORDERBOOK = "orderbook_delta"
TRADE = "trade"
Script = Callable[["Session"], Awaitable[None]]


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Session:
    """One client connection: its sids, per-sid seq counters and the books it was sent."""

    def __init__(self, exchange: HostileExchange, ws: ServerConnection) -> None:
        self.exchange = exchange
        self.ws = ws
        self.sids: dict[str, int] = {}
        self._seq: dict[int, int] = {}
        self.subscribed = asyncio.Event()

    def next_seq(self, sid: int) -> int:
        self._seq[sid] = self._seq.get(sid, 0) + 1
        return self._seq[sid]

    async def send(self, raw: str | bytes) -> None:
        await self.ws.send(raw)

    # -- frame builders (each takes the next seq of its sid unless told otherwise) ----------

    def snapshot(
        self, market: str, *, sid: int | None = None, seq: int | None = None, cmd_id: int = 0
    ) -> str:
        sid = self.sids[ORDERBOOK] if sid is None else sid
        book = self.exchange.books[market]
        msg: dict[str, Any] = {"market_ticker": market, "market_id": f"id-{market}"}
        for side in ("yes", "no"):
            if book[side]:
                msg[f"{side}_dollars_fp"] = [
                    [e4_to_dollars(p), e2_to_count(s)] for p, s in sorted(book[side].items())
                ]
        frame: dict[str, Any] = {"type": "orderbook_snapshot", "sid": sid}
        frame["seq"] = self.next_seq(sid) if seq is None else seq
        if cmd_id:
            frame["id"] = cmd_id
        frame["msg"] = msg
        frame["sending_ts_ms"] = now_ms()
        return json.dumps(frame)

    def delta(
        self,
        market: str,
        price_e4: int = 4000,
        delta_e2: int = 100,
        side: str = "yes",
        *,
        sid: int | None = None,
        seq: int | None = None,
        apply: bool = True,
        **overrides: Any,
    ) -> str:
        """A valid delta (applied to this server's book) unless ``overrides`` spoil it."""
        sid = self.sids[ORDERBOOK] if sid is None else sid
        if apply:
            book = self.exchange.books[market][side]
            size = book.get(price_e4, 0) + delta_e2
            if size > 0:
                book[price_e4] = size
            else:
                book.pop(price_e4, None)
        ts = now_ms()
        msg: dict[str, Any] = {
            "market_ticker": market,
            "market_id": f"id-{market}",
            "price_dollars": e4_to_dollars(price_e4),
            "delta_fp": e2_to_count(delta_e2),
            "side": side,
            "ts_ms": ts,
        }
        frame: dict[str, Any] = {"type": "orderbook_delta", "sid": sid}
        frame["seq"] = self.next_seq(sid) if seq is None else seq
        frame["msg"] = msg
        frame["sending_ts_ms"] = ts
        for key, value in overrides.items():
            (frame if key == "sending_ts_ms" else msg)[key] = value
        return json.dumps(frame)

    def trade(self, market: str, *, sid: int | None = None, seq: int | None = None) -> str:
        sid = self.sids[TRADE] if sid is None else sid
        ts = now_ms()
        frame: dict[str, Any] = {"type": "trade", "sid": sid}
        frame["seq"] = self.next_seq(sid) if seq is None else seq
        frame["msg"] = {
            "trade_id": f"t-{frame['seq']}",
            "market_ticker": market,
            "yes_price_dollars": "0.4000",
            "no_price_dollars": "0.6000",
            "count_fp": "2.00",
            "taker_side": "yes",
            "ts": ts // 1000,
            "ts_ms": ts,
        }
        frame["sending_ts_ms"] = ts
        return json.dumps(frame)


class HostileExchange:
    """Serves ``markets`` (empty books unless given) and runs ``script`` on each connection."""

    def __init__(
        self,
        markets: Sequence[str],
        *,
        keys: Sequence[ApiKey],
        script: Script | None = None,
        sids: dict[str, int] | None = None,
        books: dict[str, dict[str, dict[int, int]]] | None = None,
        merge_acks: Sequence[str] = (),
    ) -> None:
        self.markets = list(markets)
        self.books = books or {m: {"yes": {3000: 500}, "no": {5000: 700}} for m in markets}
        self.script = script
        self.sid_of = sids or {ORDERBOOK: 1, TRADE: 2}
        # Channels whose subscribe is answered like a merge into an existing sid: an ``ok``
        # with the sid, a seq and the market list (observed, protocol notes §3).
        self.merge_acks = set(merge_acks)
        self.extra_sids: dict[str, int] = {}
        self.commands: list[dict[str, Any]] = []
        self.sessions: list[Session] = []
        self.script_done = asyncio.Event()
        self.script_error: BaseException | None = None
        self._auth = HandshakeAuth(keys, max_clock_skew_s=60)

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        if request.path.partition("?")[0] != WS_PATH:
            return connection.respond(HTTPStatus.NOT_FOUND, "not found\n")
        reason = self._auth.check(request.headers)
        if reason is not None:
            return connection.respond(HTTPStatus.UNAUTHORIZED, f"Unauthorized: {reason}\n")
        return None

    @contextlib.asynccontextmanager
    async def serving(self, host: str = "127.0.0.1") -> AsyncIterator[str]:
        async with serve(
            self._handle, host, 0, process_request=self._process_request, max_size=2**24
        ) as server:
            port = server.sockets[0].getsockname()[1]
            yield f"ws://{host}:{port}{WS_PATH}"

    async def _handle(self, ws: ServerConnection) -> None:
        session = Session(self, ws)
        self.sessions.append(session)
        script: asyncio.Task | None = None
        try:
            async for raw in ws:
                command = json.loads(raw)
                self.commands.append(command)
                await self._command(session, command)
                if script is None and set(self.sid_of) <= set(session.sids):
                    session.subscribed.set()
                    if self.script is not None:
                        script = asyncio.create_task(self._run_script(session))
        except ConnectionClosed:
            pass
        finally:
            if script is not None:
                script.cancel()

    async def _run_script(self, session: Session) -> None:
        try:
            assert self.script is not None
            await self.script(session)
        except ConnectionClosed:
            pass
        except BaseException as exc:  # shown by the test, not lost in a task
            self.script_error = exc
            raise
        finally:
            self.script_done.set()

    async def _command(self, session: Session, command: dict[str, Any]) -> None:
        params = command.get("params", {})
        cmd_id = command.get("id")
        if command.get("cmd") == "subscribe":
            for channel in params.get("channels", []):
                sid = self.sid_of.get(channel)
                if sid is None:
                    # A channel the script does not use (market_lifecycle_v2): acknowledged on
                    # a sid of its own, and then silent.
                    sid = self.extra_sids.setdefault(
                        channel, max(self.sid_of.values()) + 1 + len(self.extra_sids)
                    )
                session.sids[channel] = sid
                if channel in self.merge_acks:
                    ack = {"type": "ok", "id": cmd_id, "sid": sid, "seq": session.next_seq(sid)}
                    ack["msg"] = {"market_tickers": params.get("market_tickers", [])}
                else:
                    ack = {"id": cmd_id, "type": "subscribed"}
                    ack["msg"] = {"channel": channel, "sid": sid}
                await session.send(json.dumps(ack))
                if channel == ORDERBOOK:
                    for market in params.get("market_tickers", []):
                        await session.send(session.snapshot(market))
        elif command.get("cmd") == "update_subscription" and params.get("action") == "get_snapshot":
            for market in params.get("market_tickers", []):
                await session.send(session.snapshot(market, sid=params["sid"], cmd_id=cmd_id))


class HostileExchangeThread:
    """Runs a :class:`HostileExchange` in its own thread and loop (for subprocess tests)."""

    def __init__(self, exchange: HostileExchange) -> None:
        self.exchange = exchange
        self.url: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, name="hostile-exchange", daemon=True)

    def __enter__(self) -> str:
        self._thread.start()
        if not self._ready.wait(15) or self.url is None:
            raise RuntimeError("the hostile exchange did not start")
        return self.url

    def __exit__(self, *exc_info: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(15)

    def _main(self) -> None:
        async def run() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            # The script's event must belong to this loop.
            self.exchange.script_done = asyncio.Event()
            async with self.exchange.serving() as url:
                self.url = url
                self._ready.set()
                await self._stop.wait()

        try:
            asyncio.run(run())
        finally:
            self._ready.set()

    def script_finished(self) -> bool:
        return self.exchange.script_done.is_set()
