"""One client connection: its commands, subscriptions, seq counters, outgoing queue and faults.

Ordering is the point of this module. Every frame for a connection — acks, errors, snapshots,
deltas, trades, fault markers — goes through one FIFO queue, and a seq number is assigned
when a frame is *queued*, synchronously with the book change that caused it. So the order a
client reads is exactly the order of events, seq numbers on a sid have no gaps (unless a fault
knob asks), and a snapshot sits exactly between the deltas before and after it. A writer task
drains the queue to the socket; a slow client only delays its own queue.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from apps.marketdata.kalshi.commands import CHANNELS

from . import frames
from .config import FaultConfig
from .errors import CommandError
from .stats import ExchangeStats
from .venue import Venue

logger = logging.getLogger(__name__)

# Channels Kalshi knows (2026 enum, shared with the client) and the ones this exchange serves.
KNOWN_CHANNELS = CHANNELS
SERVED_CHANNELS = ("orderbook_delta", "trade", "ticker", "market_lifecycle_v2")
# Channels that take no market filter: every market, whatever the subscribe lists (§5).
ALL_MARKETS_CHANNELS = frozenset({"market_lifecycle_v2"})
SEQUENCED_CHANNELS = frozenset({"orderbook_delta", "trade"})
UPDATE_ACTIONS = ("add_markets", "delete_markets", "get_snapshot")

# Queue item kinds that are instructions to the writer rather than frames.
_ABORT = "_abort"
_STALL = "_stall"


class Subscription:
    """One sid on one connection. ``markets`` keeps insertion order (acks list them so)."""

    __slots__ = (
        "alive",
        "all_markets",
        "channel",
        "data_count",
        "markets",
        "seq",
        "session",
        "sid",
        "skip_next",
        "use_yes_price",
    )

    def __init__(
        self,
        session: Session,
        sid: int,
        channel: str,
        markets: list[str] | None,
        *,
        use_yes_price: bool,
    ) -> None:
        self.session = session
        self.sid = sid
        self.channel = channel
        self.all_markets = markets is None
        self.markets: dict[str, None] = dict.fromkeys(markets or ())
        self.use_yes_price = use_yes_price
        self.seq = 0  # last seq used on this sid
        self.data_count = 0  # data frames sent on this sid (for the seq-gap knobs)
        self.skip_next = False  # a runtime seq gap is pending
        self.alive = True

    @property
    def sequenced(self) -> bool:
        return self.channel in SEQUENCED_CHANNELS

    def markets_msg(self, *, skip_ticker_ack: bool) -> dict[str, Any]:
        if skip_ticker_ack or self.all_markets:
            return {}
        return {"market_tickers": list(self.markets)}


def _is_int(value: object) -> bool:
    return type(value) is int


class Session:
    """State and tasks of one WebSocket connection to the local exchange.

    ``faults`` are the fault knobs in force; turning them at runtime replaces this attribute
    on every open session (``faults.FaultInjector.set_faults``).
    """

    def __init__(
        self,
        venue: Venue,
        ws: ServerConnection,
        number: int,
        *,
        stats: ExchangeStats,
        faults: FaultConfig,
        max_queue_frames: int,
    ) -> None:
        self.venue = venue
        self.ws = ws
        self.number = number
        self.stats = stats
        self.faults = faults
        self.max_queue_frames = max_queue_frames
        self.queue: deque[tuple[str, Any]] = deque()
        self.wakeup = asyncio.Event()  # set: the writer has something to do
        self.idle = asyncio.Event()  # set: everything queued has been written (or closed)
        self.idle.set()
        self.subs: dict[int, Subscription] = {}
        self.by_channel: dict[str, Subscription] = {}
        self.next_sid = 1
        self.data_count = 0  # data frames queued on this connection
        self.closing = False
        self.stalled = False
        self.reading_paused = False
        self.drop_at: int | None = None  # runtime drop_connections(): data count to abort at
        self.malformed_index = 0
        self._stall_handle: asyncio.TimerHandle | None = None

    # ---- queueing -------------------------------------------------------------------------

    def enqueue(self, kind: str, payload: Any) -> None:
        self.queue.append((kind, payload))
        if not self.wakeup.is_set():
            self.wakeup.set()
            self.idle.clear()

    def send_control(self, kind: str, frame: dict[str, Any]) -> None:
        if not self.closing:
            self.enqueue(kind, frames.control_frame(frame))

    def send_error(
        self, code: int, cmd_id: int | None, *, sid: int | None = None, **extra: Any
    ) -> None:
        if not self.closing:
            self.enqueue("error", frames.error_frame(code, cmd_id, sid=sid, **extra))

    def next_seq(self, sub: Subscription) -> int:
        """The seq of a non-data frame on ``sub`` (ok / unsubscribed); never gapped."""
        sub.seq += 1
        return sub.seq

    def send_data(
        self, sub: Subscription, kind: str, body: str, *, cmd_id: int | None = None
    ) -> None:
        """Queue one sequenced data frame (snapshot, delta, trade) and apply the fault knobs."""
        if self.closing or not sub.alive:
            return
        if len(self.queue) >= self.max_queue_frames:
            self.overflow()
            return
        faults = self.faults
        sub.data_count += 1
        n_sub = sub.data_count
        if (
            sub.skip_next
            or (faults.seq_gap_every and n_sub % faults.seq_gap_every == 0)
            or (faults.seq_gap_after and n_sub == faults.seq_gap_after + 1)
        ):
            sub.skip_next = False
            sub.seq += 1
            self.stats.gaps_injected += 1
        sub.seq += 1
        self.enqueue(kind, frames.data_frame(kind, sub.sid, sub.seq, body, cmd_id=cmd_id))
        self.data_count += 1
        n = self.data_count
        if faults.malformed_every and n % faults.malformed_every == 0:
            self.send_malformed()
        if faults.error_after_messages == n:
            self.kill_subscription(sub, faults.error_code)
        if faults.stall_after_messages == n:
            self.enqueue(_STALL, (faults.stall_s, faults.stall_ignores_pings))
        if (faults.drop_after_messages is not None and n >= faults.drop_after_messages) or (
            self.drop_at is not None and n >= self.drop_at
        ):
            self.abort()

    def send_unsequenced(self, sub: Subscription, kind: str, body: str) -> None:
        if not self.closing and sub.alive:
            self.enqueue(kind, frames.unsequenced_frame(kind, sub.sid, body))

    def send_malformed(self, kind: str | None = None) -> None:
        if self.closing:
            return
        if kind is None:
            kind = frames.MALFORMED_KINDS[self.malformed_index % len(frames.MALFORMED_KINDS)]
            self.malformed_index += 1
        self.enqueue("malformed", frames.malformed_frame(kind))

    # ---- faults and failure modes ---------------------------------------------------------

    def abort(self) -> None:
        """Drop the TCP connection after what is already queued; nothing more is queued."""
        if not self.closing:
            self.enqueue(_ABORT, None)
            self.closing = True

    def kill_subscription(self, sub: Subscription, code: int) -> None:
        """Unsolicited error on ``sub``'s sid; the subscription is dead afterwards (§3)."""
        if not sub.alive:
            return
        self.send_error(code, None, sid=sub.sid)
        self.remove_subscription(sub)
        self.stats.subscription_errors += 1

    def overflow(self) -> None:
        """Kalshi's answer to a client that reads too slowly: error 25 and lost subscriptions."""
        logger.warning(
            "connection %d: %d frames queued, ending its data subscriptions with error 25",
            self.number,
            len(self.queue),
        )
        for sub in [s for s in self.subs.values() if s.sequenced]:
            self.kill_subscription(sub, 25)

    def stall(self, seconds: float, *, ignore_pings: bool) -> None:
        """Send nothing for ``seconds``; with ``ignore_pings`` also stop reading the socket."""
        loop = asyncio.get_running_loop()
        self.stalled = True
        self.stats.stalls += 1
        if ignore_pings and not self.reading_paused:
            # Pings are answered by the protocol layer as frames are read, so not reading is
            # the only way to leave them unanswered while keeping the socket open.
            self.ws.transport.pause_reading()
            self.reading_paused = True
        if self._stall_handle is not None:
            self._stall_handle.cancel()
        self._stall_handle = loop.call_later(seconds, self._end_stall)

    def _end_stall(self) -> None:
        self._stall_handle = None
        self.stalled = False
        if self.reading_paused:
            self.reading_paused = False
            self.ws.transport.resume_reading()
        self.wakeup.set()

    # ---- tasks ----------------------------------------------------------------------------

    async def writer(self) -> None:
        """Drain the queue to the socket, in order."""
        ws, queue, stats = self.ws, self.queue, self.stats
        sent = 0
        try:
            while True:
                if not queue or self.stalled:
                    self.wakeup.clear()
                    if not queue:
                        self.idle.set()
                    await self.wakeup.wait()
                    continue
                kind, payload = queue.popleft()
                if kind == _ABORT:
                    stats.connections_dropped += 1
                    ws.transport.abort()
                    return
                if kind == _STALL:
                    self.stall(payload[0], ignore_pings=payload[1])
                    continue
                await ws.send(payload)
                stats.messages_sent[kind] += 1
                sent += 1
                if sent % 512 == 0:
                    # ws.send() rarely yields when the socket keeps up; let others run.
                    await asyncio.sleep(0)
        except ConnectionClosed:
            return

    async def heartbeat(self, interval_s: float, pong_timeout_s: float | None) -> None:
        """Ping with payload ``heartbeat`` every ``interval_s`` like Kalshi (§6)."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[float] | None = None
        sent_at = 0.0
        try:
            while True:
                await asyncio.sleep(interval_s)
                if self.stalled or self.closing:
                    continue
                if waiter is not None and not waiter.done():
                    if pong_timeout_s is not None and loop.time() - sent_at > pong_timeout_s:
                        # A peer that answers no ping would not answer a close frame either:
                        # cut the connection instead of waiting for a closing handshake.
                        logger.info("connection %d: no pong, dropping it", self.number)
                        self.stats.pong_timeouts += 1
                        self.closing = True
                        self.ws.transport.abort()
                        return
                    continue
                waiter = await self.ws.ping(b"heartbeat")  # type: ignore[assignment]
                sent_at = loop.time()
                self.stats.pings_sent += 1
        except ConnectionClosed:
            return

    def close(self) -> None:
        """The connection is gone: forget its subscriptions and timers."""
        self.closing = True
        for sub in list(self.subs.values()):
            self.remove_subscription(sub)
        if self._stall_handle is not None:
            self._stall_handle.cancel()
            self._stall_handle = None
        self.queue.clear()
        self.idle.set()

    # ---- subscriptions --------------------------------------------------------------------

    def add_subscription(
        self, channel: str, markets: list[str] | None, *, use_yes_price: bool
    ) -> Subscription:
        sub = Subscription(self, self.next_sid, channel, markets, use_yes_price=use_yes_price)
        self.next_sid += 1
        self.subs[sub.sid] = sub
        self.by_channel[channel] = sub
        self.venue.index_add(sub, None if markets is None else markets)
        return sub

    def remove_subscription(self, sub: Subscription) -> None:
        sub.alive = False
        self.subs.pop(sub.sid, None)
        if self.by_channel.get(sub.channel) is sub:
            del self.by_channel[sub.channel]
        self.venue.index_remove(sub, None)

    def send_initial_data(self, sub: Subscription, markets: list[str], *, snapshot: bool) -> None:
        venue = self.venue
        if sub.channel == "orderbook_delta":
            for ticker in markets:
                market = venue.market(ticker)
                body = frames.snapshot_body(market, use_yes_price=sub.use_yes_price)
                self.send_data(sub, "orderbook_snapshot", body)
        elif sub.channel == "ticker" and snapshot:
            ts = frames.now_ms()
            for ticker in markets:
                self.send_unsequenced(sub, "ticker", frames.ticker_body(venue.market(ticker), ts))

    # ---- commands -------------------------------------------------------------------------

    def handle_message(self, raw: str | bytes) -> None:
        """Parse and run one client command; every problem becomes a documented error frame."""
        try:
            text = raw.decode() if isinstance(raw, bytes) else raw
            command = json.loads(text)
        except (UnicodeDecodeError, ValueError):
            self.send_error(1, 0)
            return
        if not isinstance(command, dict):
            self.send_error(1, 0)
            return
        cmd_id = command.get("id", 0)
        if not _is_int(cmd_id) or cmd_id < 0:
            self.send_error(1, 0)
            return
        name = command.get("cmd")
        handler = (
            {
                "subscribe": self._subscribe,
                "unsubscribe": self._unsubscribe,
                "update_subscription": self._update_subscription,
                "list_subscriptions": self._list_subscriptions,
            }.get(name)
            if isinstance(name, str)
            else None
        )
        if handler is None:
            self.stats.commands["unknown"] += 1
            self.send_error(5, cmd_id)
            return
        self.stats.commands[name] += 1
        try:
            handler(cmd_id, command.get("params"))
        except CommandError as exc:
            self.send_error(exc.code, cmd_id, **exc.extra)

    @staticmethod
    def _params(params: object) -> dict[str, Any]:
        if params is None:
            raise CommandError(2)
        if not isinstance(params, dict):
            raise CommandError(11)
        return params

    def _market_spec(self, params: dict[str, Any]) -> list[str] | None:
        """``market_ticker`` xor ``market_tickers`` -> tickers (deduplicated), None if absent."""
        has_one, has_many = "market_ticker" in params, "market_tickers" in params
        if has_one and has_many:
            raise CommandError(11)
        if has_one:
            ticker = params["market_ticker"]
            if not isinstance(ticker, str) or not ticker:
                raise CommandError(11)
            tickers = [ticker]
        elif has_many:
            raw = params["market_tickers"]
            if not isinstance(raw, list) or not raw or not all(isinstance(t, str) for t in raw):
                raise CommandError(11)
            tickers = list(dict.fromkeys(raw))
        else:
            return None
        for ticker in tickers:
            if not self.venue.has_market(ticker):
                raise CommandError(16, market_ticker=ticker)
        return tickers

    def _market_ids(self, params: dict[str, Any]) -> list[str] | None:
        """``market_id`` / ``market_ids`` (ticker channel only) -> tickers."""
        has_one, has_many = "market_id" in params, "market_ids" in params
        if not has_one and not has_many:
            return None
        if has_one and has_many:
            raise CommandError(11)
        raw = [params["market_id"]] if has_one else params["market_ids"]
        if not isinstance(raw, list) or not raw or not all(isinstance(i, str) for i in raw):
            raise CommandError(11)
        tickers = []
        for market_id in dict.fromkeys(raw):
            ticker = self.venue.ticker_for_id(market_id)
            if ticker is None:
                raise CommandError(16, market_id=market_id)
            tickers.append(ticker)
        return tickers

    @staticmethod
    def _flag(params: dict[str, Any], name: str) -> bool:
        value = params.get(name, False)
        if not isinstance(value, bool):
            raise CommandError(11)
        return value

    def _subscribe(self, cmd_id: int, params: object) -> None:
        p = self._params(params)
        channels = p.get("channels")
        if channels is None or channels == []:
            raise CommandError(3)
        if not isinstance(channels, list) or not all(isinstance(c, str) for c in channels):
            raise CommandError(11)
        channels = list(dict.fromkeys(channels))
        use_yes_price = self._flag(p, "use_yes_price")
        initial_ticker = self._flag(p, "send_initial_snapshot")
        skip_ticker_ack = self._flag(p, "skip_ticker_ack")
        tickers = self._market_spec(p)
        by_id = self._market_ids(p)
        for channel in channels:
            if channel not in KNOWN_CHANNELS:
                raise CommandError(8)
            if channel not in SERVED_CHANNELS:
                # A real channel this exchange does not simulate (private or lifecycle data).
                raise CommandError(10)
            if channel == "orderbook_delta" and tickers is None:
                raise CommandError(14)
            if by_id is not None and channel != "ticker":
                raise CommandError(11)
        if by_id is not None:
            if tickers is not None:
                raise CommandError(11)
            tickers = by_id
        # Everything validated: from here on the command succeeds for every channel.
        for channel in channels:
            existing = self.by_channel.get(channel)
            wanted = None if channel in ALL_MARKETS_CHANNELS else tickers
            if existing is not None:
                self._merge(existing, cmd_id, wanted, skip_ticker_ack, initial_ticker)
                continue
            sub = self.add_subscription(channel, wanted, use_yes_price=use_yes_price)
            self.send_control(
                "subscribed",
                {"id": cmd_id, "type": "subscribed", "msg": {"channel": channel, "sid": sub.sid}},
            )
            markets = wanted if wanted is not None else self.venue.tickers()
            self.send_initial_data(sub, markets, snapshot=initial_ticker)

    def _merge(
        self,
        sub: Subscription,
        cmd_id: int,
        tickers: list[str] | None,
        skip_ticker_ack: bool,
        initial_ticker: bool,
    ) -> None:
        """A second subscribe to a channel joins the existing sid (observed Aug 2026, §3)."""
        if sub.all_markets:
            new: list[str] = []
        elif tickers is None:
            # Widening to all markets (trade / ticker): re-index as an all-markets sid.
            new = [t for t in self.venue.tickers() if t not in sub.markets]
            self.venue.index_remove(sub, None)
            sub.all_markets = True
            sub.markets.clear()
            self.venue.index_add(sub, None)
        else:
            new = [t for t in tickers if t not in sub.markets]
            sub.markets.update(dict.fromkeys(new))
            self.venue.index_add(sub, new)
        self._ok(sub, cmd_id, skip_ticker_ack=skip_ticker_ack)
        self.send_initial_data(sub, new, snapshot=initial_ticker)

    def _ok(self, sub: Subscription, cmd_id: int, *, skip_ticker_ack: bool = False) -> None:
        frame: dict[str, Any] = {"type": "ok", "id": cmd_id, "sid": sub.sid}
        if sub.sequenced:
            frame["seq"] = self.next_seq(sub)
        frame["msg"] = sub.markets_msg(skip_ticker_ack=skip_ticker_ack)
        self.send_control("ok", frame)

    def _unsubscribe(self, cmd_id: int, params: object) -> None:
        p = self._params(params)
        sids = p.get("sids")
        if sids is None or sids == []:
            raise CommandError(4)
        if not isinstance(sids, list) or not all(_is_int(s) for s in sids):
            raise CommandError(11)
        for sid in sids:
            if sid not in self.subs:
                raise CommandError(7)
        for sid in dict.fromkeys(sids):
            sub = self.subs[sid]
            frame: dict[str, Any] = {"id": cmd_id, "sid": sid}
            if sub.sequenced:
                frame["seq"] = self.next_seq(sub)
            frame["type"] = "unsubscribed"
            self.remove_subscription(sub)
            self.send_control("unsubscribed", frame)

    def _update_subscription(self, cmd_id: int, params: object) -> None:
        p = self._params(params)
        action = p.get("action")
        if action is None:
            raise CommandError(15)
        if action not in UPDATE_ACTIONS:
            raise CommandError(13)
        has_sid, has_sids = "sid" in p, "sids" in p
        if has_sid == has_sids:
            raise CommandError(12)
        if has_sid:
            sid = p["sid"]
        else:
            sids = p["sids"]
            if not isinstance(sids, list) or len(sids) != 1:
                raise CommandError(12)
            sid = sids[0]
        if not _is_int(sid):
            raise CommandError(11)
        sub = self.subs.get(sid)
        if sub is None:
            raise CommandError(7)
        tickers = self._market_spec(p)
        if action == "get_snapshot":
            self._get_snapshot(sub, cmd_id, tickers)
            return
        if tickers is None:
            raise CommandError(14)
        if sub.all_markets:
            raise CommandError(11)
        if action == "add_markets":
            new = [t for t in tickers if t not in sub.markets]
            sub.markets.update(dict.fromkeys(new))
            self.venue.index_add(sub, new)
            self._ok(sub, cmd_id)
            self.send_initial_data(sub, new, snapshot=True)
        else:
            gone = [t for t in tickers if t in sub.markets]
            for ticker in gone:
                del sub.markets[ticker]
            self.venue.index_remove(sub, gone)
            self._ok(sub, cmd_id)

    def _get_snapshot(self, sub: Subscription, cmd_id: int, tickers: list[str] | None) -> None:
        """Fresh snapshots on the same sid, carrying the command id (observed); no ``ok``."""
        if sub.channel != "orderbook_delta":
            raise CommandError(11)
        targets = tickers if tickers is not None else list(sub.markets)
        for ticker in targets:
            if ticker not in sub.markets:
                raise CommandError(11, market_ticker=ticker)
        for ticker in targets:
            market = self.venue.market(ticker)
            body = frames.snapshot_body(market, use_yes_price=sub.use_yes_price)
            self.send_data(sub, "orderbook_snapshot", body, cmd_id=cmd_id)

    def _list_subscriptions(self, cmd_id: int, params: object) -> None:
        listing = [
            {"channel": s.channel, "sid": s.sid}
            for s in sorted(self.subs.values(), key=lambda s: s.sid)
        ]
        self.send_control("ok", {"id": cmd_id, "type": "ok", "msg": listing})
