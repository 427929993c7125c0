"""The Kalshi market-data client: connect -> sign -> subscribe -> read, with its own watchdogs.

One :class:`KalshiClient` owns one logical feed (a list of markets). It keeps one in-memory
:class:`~apps.marketdata.kalshi.book.OrderBook` per market and hands every frame it receives to a
:class:`FeedSink` (the recorder stores them; tests and the demo print them). Rules:

* ``seq`` is checked per sid. A gap makes every book on that sid untrusted (a new book
  epoch): the book is dropped, deltas are not applied until a fresh snapshot (requested with
  ``update_subscription``/``get_snapshot``), and the gap is reported to the sink as a marker.
  Frames are still passed to the sink: recording is lossless, trust is the reader's business.
* Deltas that arrive for a market waiting for its snapshot are buffered (bounded) and those
  newer than the snapshot are applied after it, never applied to an empty book.
* A crossed book after a delta triggers the same resync for that market.
* An unsolicited subscription error (codes 10, 17, 25) kills that sid: the client
  resubscribes its markets on a new sid.
* A sid exists for the client only once a ``subscribed`` (or merging ``ok``) answered one of
  its own ``subscribe`` commands; a market belongs to the sid that answered the command that
  asked for it. A data frame on any other sid (never acknowledged, another channel's, or not
  the one carrying its market) is rejected: it can neither reassign a market's sid nor touch
  a book, and its seq is not tracked (so garbage sids cannot grow the tracker either).
* One frame never ends the recorder: any exception while decoding or handling it (sink
  callbacks included) makes it a counted malformed frame (``stats.malformed``, per reason in
  ``stats.malformed_reasons``), kept in a bounded :class:`RejectedFrameStore` (on disk under
  ``config.rejected_frames_dir`` when set), logged at most every few seconds, and skipped. A
  frame that failed *after* it was decoded may have been half handled, so its market's book
  is untrusted and resynced, and the marker says so.
* A dropped or silent socket (no pong within ``ping_timeout_s``) reconnects with exponential
  backoff and full jitter, then resubscribes everything on a new connection id.

No Django here: the sink is the only bridge to storage. Above 700 lines on purpose: one
connection's state machine (sid ownership, seq checks, resyncs, reconnects) is one invariant,
and splitting it would spread that invariant over modules.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections import deque
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import websockets
from websockets.asyncio.client import ClientConnection, connect

from apps.marketdata.kalshi.book import BookError, OrderBook
from apps.marketdata.kalshi.commands import CommandBuilder
from apps.marketdata.kalshi.messages import (
    ErrorMessage,
    FrameDecoder,
    Lifecycle,
    Ok,
    OrderbookDelta,
    OrderbookSnapshot,
    ProtocolError,
    Subscribed,
    Trade,
    Unsubscribed,
)
from apps.marketdata.kalshi.ratelog import RateLimitedLog
from apps.marketdata.kalshi.rejects import RejectedFrameStore
from apps.marketdata.kalshi.seq import SeqStatus, SeqTracker
from apps.marketdata.kalshi.signer import WS_PATH, KalshiSigner
from apps.marketdata.kalshi.urls import redact_url, scrub

log = logging.getLogger(__name__)

ORDERBOOK = "orderbook_delta"
TRADE = "trade"
# No market filter (documented): the client subscribes it for every market.
LIFECYCLE = "market_lifecycle_v2"
FATAL_SUB_ERRORS = frozenset({10, 17, 25})

# Marker kinds reported to the sink (stored in rl_recording_events by the recorder).
EVENT_CONNECTED = "connected"
EVENT_GAP = "gap"
EVENT_RESYNC = "resync"
EVENT_CROSSED = "crossed"
EVENT_SUB_ERROR = "sub_error"
EVENT_DISCONNECT = "disconnect"

# Snapshot sources (rl_orderbook_snapshots.source).
SOURCE_WS = "ws"
SOURCE_RESYNC = "resync"

# The channel a data frame must arrive on.
_CHANNEL_OF: dict[type, str] = {
    OrderbookDelta: ORDERBOOK,
    OrderbookSnapshot: ORDERBOOK,
    Trade: TRADE,
    Lifecycle: LIFECYCLE,
}
_FRAME_NAME: dict[type, str] = {
    Lifecycle: "lifecycle",
    OrderbookDelta: "orderbook_delta",
    OrderbookSnapshot: "orderbook_snapshot",
    Trade: "trade",
}
# Malformed-frame counters are keyed by ProtocolError.code, a small fixed set; the cap only
# guards against a future code path that would make keys from data.
_MAX_REASON_KEYS = 64


class HandshakeRejected(ConnectionError):
    """The exchange refused the signed handshake (HTTP 401/403) ``attempts`` times in a row."""

    def __init__(self, status: int, url: str, attempts: int) -> None:
        self.status = status
        self.url = url  # already redacted
        self.attempts = attempts
        super().__init__(
            f"the exchange at {url} refused the signed WebSocket handshake with HTTP {status} "
            f"{attempts} times in a row"
        )


class FeedSink(Protocol):
    """Receives everything the client sees. Methods are called on the event loop: be O(1)."""

    def on_connect(self, connection_id: uuid.UUID, url: str, markets: list[str]) -> None: ...

    def on_snapshot(
        self, connection_id: uuid.UUID, msg: OrderbookSnapshot, received_ns: int, source: str
    ) -> None: ...

    def on_delta(self, connection_id: uuid.UUID, msg: OrderbookDelta, received_ns: int) -> None: ...

    def on_trade(self, connection_id: uuid.UUID, msg: Trade, received_ns: int) -> None: ...

    def on_lifecycle(self, connection_id: uuid.UUID, msg: Lifecycle, received_ns: int) -> None: ...

    def on_event(
        self,
        connection_id: uuid.UUID,
        kind: str,
        *,
        market_ticker: str = "",
        sid: int | None = None,
        expected_seq: int | None = None,
        got_seq: int | None = None,
        detail: str = "",
    ) -> None: ...

    def on_disconnect(self, connection_id: uuid.UUID, reason: str) -> None: ...


@dataclass
class ClientConfig:
    """How to reach the exchange and what to follow. Times in seconds."""

    ws_url: str
    markets: list[str]
    channels: tuple[str, ...] = (ORDERBOOK, TRADE)
    use_yes_price: bool = False
    open_timeout_s: float = 10.0
    ping_interval_s: float = 10.0
    ping_timeout_s: float = 20.0
    close_timeout_s: float = 2.0
    reconnect_initial_s: float = 0.25
    reconnect_max_s: float = 30.0
    # A connection that lived this long resets the backoff: it was not a flapping endpoint.
    reconnect_reset_after_s: float = 30.0
    pending_delta_limit: int = 10_000
    max_reconnects: int | None = None  # None = forever
    # A handshake refused with 401/403 this many times in a row ends run(): a wrong key does
    # not get better by retrying, and retrying forever hides the problem.
    max_auth_failures: int = 3
    latency_sample_every: int = 0  # 0 = off; N = time recv->book-applied for every Nth frame
    # Where rejected frames are kept (rotating JSONL, see kalshi/rejects.py); None = memory only.
    rejected_frames_dir: Path | None = None
    rejected_frames_file_max_bytes: int = 16 * 2**20  # x4 files at most


@dataclass
class ClientStats:
    """Counters since the client was created (all connections)."""

    connections: int = 0
    reconnects: int = 0
    messages: int = 0
    snapshots: int = 0
    deltas: int = 0
    trades: int = 0
    lifecycle: int = 0
    acks: int = 0
    malformed: int = 0
    malformed_reasons: dict[str, int] = field(default_factory=dict)  # ProtocolError.code -> n
    last_malformed_reason: str = ""
    handler_errors: int = 0  # frames that decoded but raised while being handled
    gaps: int = 0
    missed_seqs: int = 0
    stale: int = 0
    resyncs: int = 0
    resubscribes: int = 0
    crossed: int = 0
    book_errors: int = 0
    sub_errors: int = 0
    buffered_deltas: int = 0
    dropped_pending: int = 0
    last_message_at: float = 0.0
    last_exchange_lag_ms: float | None = None
    connected: bool = False
    last_disconnect_reason: str = ""
    latency_ns: deque[int] = field(default_factory=lambda: deque(maxlen=100_000))

    def as_dict(self) -> dict[str, object]:
        data = {k: v for k, v in self.__dict__.items() if k != "latency_ns"}
        data["malformed_reasons"] = dict(self.malformed_reasons)
        return data

    def malformed_summary(self) -> str:
        """``"3 (number_too_long 1, too_deep 2)"``: the count and its reasons, for one line."""
        if not self.malformed_reasons:
            return str(self.malformed)
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(self.malformed_reasons.items()))
        return f"{self.malformed} ({reasons})"


@dataclass
class _MarketState:
    sid: int | None = None  # orderbook sid carrying this market
    trusted: bool = False
    awaiting_resync: bool = False
    applied_seq: int | None = None  # seq (on ``sid``) of the last frame the book reflects
    pending: deque[OrderbookDelta] = field(default_factory=deque)


class KalshiClient:
    """Follows the order books (and public trades) of ``config.markets`` until stopped."""

    def __init__(
        self,
        config: ClientConfig,
        *,
        signer: KalshiSigner,
        sink: FeedSink,
        rng: random.Random | None = None,
    ) -> None:
        if not config.markets:
            raise ValueError("the client needs at least one market ticker")
        self.config = config
        self.signer = signer
        self.sink = sink
        self.books: dict[str, OrderBook] = {m: OrderBook(m) for m in config.markets}
        self.stats = ClientStats()
        self.connection_id: uuid.UUID | None = None
        self._rng = rng or random.Random()
        self._markets: dict[str, _MarketState] = {m: _MarketState() for m in config.markets}
        self._decoder = FrameDecoder(use_yes_price=config.use_yes_price)
        self._seq = SeqTracker()
        self._commands = CommandBuilder()
        self._sid_channel: dict[int, str] = {}
        self._pending_cmds: dict[int, tuple[str, list[str]]] = {}
        self._ws: ClientConnection | None = None
        self._stopping = asyncio.Event()
        self._warn = RateLimitedLog(log, interval_s=5.0)
        self._tasks: set[asyncio.Future] = set()
        self._auth_failures = 0
        # What logs, progress lines and the connection row show: never embedded credentials.
        self.display_url = redact_url(config.ws_url)
        self.rejected = RejectedFrameStore(
            config.rejected_frames_dir, file_max_bytes=config.rejected_frames_file_max_bytes
        )

    # -- public control -----------------------------------------------------------------

    def stop(self) -> None:
        """Ask :meth:`run` to close the socket and return (safe from signal handlers)."""
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def is_trusted(self, market: str) -> bool:
        return self._markets[market].trusted

    def book_position(self, market: str) -> tuple[int, int] | None:
        """(sid, seq) of the last frame a trusted book reflects, or None when untrusted."""
        state = self._markets[market]
        if not state.trusted or state.sid is None or state.applied_seq is None:
            return None
        return state.sid, state.applied_seq

    async def run(self) -> None:
        """Connect, follow the markets, reconnect on failure; returns after :meth:`stop`."""
        try:
            await self._run()
        finally:
            self.rejected.close()  # reopened on the next rejected frame, if any

    async def _run(self) -> None:
        attempt = 0
        while not self._stopping.is_set():
            started = time.monotonic()
            reason = "closed"
            try:
                await self._session()
            except websockets.InvalidStatus as exc:
                status = exc.response.status_code
                reason = f"HTTP {status} at the handshake"
                if status in (401, 403):
                    self._auth_failures += 1
                    if self._auth_failures >= self.config.max_auth_failures:
                        log.error("%s: giving up", reason)
                        raise HandshakeRejected(
                            status, self.display_url, self._auth_failures
                        ) from None
            except (OSError, websockets.WebSocketException, TimeoutError) as exc:
                reason = scrub(f"{type(exc).__name__}: {exc}", self.config.ws_url)[:200]
            if self._stopping.is_set():
                break
            self.stats.reconnects += 1
            if time.monotonic() - started >= self.config.reconnect_reset_after_s:
                attempt = 0
            attempt += 1
            if self.config.max_reconnects is not None and attempt > self.config.max_reconnects:
                log.error("giving up after %d reconnect attempts: %s", attempt - 1, reason)
                raise ConnectionError(f"could not stay connected to {self.display_url}: {reason}")
            delay = self.backoff_delay(attempt)
            log.warning("feed disconnected (%s); reconnecting in %.2fs", reason, delay)
            try:
                await asyncio.wait_for(self._stopping.wait(), timeout=delay)
            except TimeoutError:
                pass

    def backoff_delay(self, attempt: int) -> float:
        """Exponential backoff with jitter: uniform(cap/2, cap), cap = min(max, first*2**(n-1))."""
        cap = min(self.config.reconnect_max_s, self.config.reconnect_initial_s * 2 ** (attempt - 1))
        return self._rng.uniform(cap / 2, cap)

    # -- one connection -----------------------------------------------------------------

    async def _session(self) -> None:
        headers = self.signer.headers(method="GET", path=WS_PATH)
        async with connect(
            self.config.ws_url,
            additional_headers=headers,
            open_timeout=self.config.open_timeout_s,
            ping_interval=self.config.ping_interval_s,
            ping_timeout=self.config.ping_timeout_s,
            # A silent peer will not answer the close handshake either: do not wait long.
            close_timeout=self.config.close_timeout_s,
            max_size=2**24,
            max_queue=4096,
            compression=None,
        ) as ws:
            self._start_connection(ws)
            closer = asyncio.ensure_future(self._close_on_stop(ws))
            reason = "closed by the exchange"
            try:
                await self._subscribe(self.config.channels, self.config.markets)
                await self._read_loop(ws)
            except (OSError, websockets.WebSocketException, TimeoutError) as exc:
                reason = scrub(f"{type(exc).__name__}: {exc}", self.config.ws_url)[:200]
                raise
            finally:
                closer.cancel()
                self._end_connection("stopped" if self._stopping.is_set() else reason)

    async def _close_on_stop(self, ws: ClientConnection) -> None:
        await self._stopping.wait()
        await ws.close()

    def _start_connection(self, ws: ClientConnection) -> None:
        self._ws = ws
        self.connection_id = uuid.uuid4()
        self._seq.reset()
        self._sid_channel.clear()
        self._pending_cmds.clear()
        self._commands = CommandBuilder()
        for market, state in self._markets.items():
            # A new connection is a new book epoch for every market.
            state.sid = None
            state.trusted = False
            state.awaiting_resync = False
            state.pending.clear()
            self.books[market].clear()
        self.stats.connections += 1
        self.stats.connected = True
        self._auth_failures = 0
        self.sink.on_connect(self.connection_id, self.display_url, list(self.config.markets))
        log.info(
            "connected to %s as connection %s (%d markets)",
            self.display_url,
            self.connection_id,
            len(self._markets),
        )

    def _end_connection(self, reason: str) -> None:
        if self.connection_id is not None:
            self.sink.on_event(self.connection_id, EVENT_DISCONNECT, detail=reason)
            self.sink.on_disconnect(self.connection_id, reason)
        for state in self._markets.values():
            state.trusted = False
        self.stats.connected = False
        self.stats.last_disconnect_reason = reason
        self._ws = None

    async def _read_loop(self, ws: ClientConnection) -> None:
        sample_every = self.config.latency_sample_every
        handle = self.handle_frame
        latency = self.stats.latency_ns
        # A clean close ends the loop; an abnormal one raises ConnectionClosedError.
        async for raw in ws:
            received_ns = time.time_ns()
            handle(raw, received_ns)
            if sample_every and self.stats.messages % sample_every == 0:
                latency.append(time.time_ns() - received_ns)

    def handle_frame(self, raw: str | bytes, received_ns: int) -> None:
        """Decode, sequence-check, apply and hand on one frame (the hot path; never awaits).

        Never raises (short of BaseExceptions such as cancellation): whatever goes wrong
        with one frame is counted, kept and skipped, see :meth:`_reject`.
        """
        stats = self.stats
        stats.messages += 1
        stats.last_message_at = received_ns / 1e9
        msg = None
        try:
            msg = self._decoder.decode(raw)
            kind = type(msg)
            sid = msg.sid
            if sid is not None:
                channel = self._sid_channel.get(sid)
                wanted = _CHANNEL_OF.get(kind)
                if wanted is not None and channel != wanted:
                    raise self._foreign_sid(kind, sid, channel, wanted)
                seq = msg.seq
                # Only acknowledged sids are sequence-checked: numbers on a sid we never
                # subscribed mean nothing, and tracking them would let a peer grow the tracker.
                if seq is not None and channel is not None:
                    check = self._seq.observe(sid, seq)
                    if check.status is SeqStatus.STALE:
                        stats.stale += 1
                        return
                    if check.status is SeqStatus.GAP:
                        self._on_gap(sid, check.expected, seq)
            if kind is OrderbookDelta:
                self._on_delta(msg, received_ns)
            elif kind is Trade:
                stats.trades += 1
                self.sink.on_trade(self.connection_id, msg, received_ns)
            elif kind is OrderbookSnapshot:
                self._on_snapshot(msg, received_ns)
            elif kind is Lifecycle:
                stats.lifecycle += 1
                self.sink.on_lifecycle(self.connection_id, msg, received_ns)
            elif kind is Subscribed:
                stats.acks += 1
                self._on_subscribed(msg)
            elif kind is ErrorMessage:
                self._on_error(msg)
            elif kind is Ok or kind is Unsubscribed:
                stats.acks += 1
                if kind is Ok:
                    self._on_ok(msg)
                else:
                    self._seq.forget(msg.sid)
                    self._sid_channel.pop(msg.sid, None)
        except ProtocolError as exc:
            self._reject(raw, exc.code, exc.reason, received_ns)
        except Exception as exc:  # one frame must never end the recorder
            self._handler_failed(raw, msg, exc, received_ns)

    def _foreign_sid(self, kind: type, sid: int, channel: str | None, wanted: str) -> ProtocolError:
        name = _FRAME_NAME[kind]
        if channel is None:
            return ProtocolError(
                f"{name} frame on sid {sid}, which no subscription of this connection acknowledged",
                code="unacknowledged_sid",
            )
        return ProtocolError(
            f"{name} frame on sid {sid}, which carries {channel}, not {wanted}",
            code="wrong_channel",
        )

    def _reject(self, raw: object, code: str, reason: str, received_ns: int) -> None:
        """Count, keep and log (rate limited) one frame that will not be used."""
        try:
            stats = self.stats
            stats.malformed += 1
            reasons = stats.malformed_reasons
            if code not in reasons and len(reasons) >= _MAX_REASON_KEYS:
                code = "other"
            reasons[code] = reasons.get(code, 0) + 1
            stats.last_malformed_reason = reason
            self.rejected.add(
                raw,
                code=code,
                reason=reason,
                connection_id=self.connection_id,
                received_ns=received_ns,
            )
            self._warn.warning("malformed", "skipped a malformed frame (%s): %s", code, reason)
        except Exception:  # counting must not fail either; keep the loop alive regardless
            log.debug("could not record a rejected frame", exc_info=True)

    def _handler_failed(self, raw: object, msg: object, exc: Exception, received_ns: int) -> None:
        """A frame raised something other than ProtocolError: a bug or a failing sink."""
        self.stats.handler_errors += 1
        where = type(msg).__name__ if msg is not None else "the frame"
        reason = f"{type(exc).__name__} while handling {where}: {_describe(exc)}"
        self._reject(raw, "handler_error", reason[:400], received_ns)
        self._warn.warning(
            "handler", "a frame raised while being handled: %s", reason[:400], exc_info=exc
        )
        # The frame may have been half handled (stored but not applied, or the reverse): do
        # not trust its market's book, and leave a marker so history does not either.
        market = getattr(msg, "market_ticker", None)
        if market in self._markets:
            try:
                self._untrust(market, EVENT_RESYNC, detail=f"frame not handled: {reason}"[:200])
            except Exception as again:
                self._warn.warning(
                    "handler-untrust", "could not untrust %s: %s", market, _describe(again)
                )

    # -- data frames --------------------------------------------------------------------

    def _on_delta(self, msg: OrderbookDelta, received_ns: int) -> None:
        state = self._markets.get(msg.market_ticker)
        if state is not None and state.sid is not None and state.sid != msg.sid:
            raise _not_its_sid("orderbook_delta", msg.market_ticker, msg.sid, state.sid)
        self.stats.deltas += 1
        if msg.sending_ts_ms is not None:
            self.stats.last_exchange_lag_ms = received_ns / 1e6 - msg.sending_ts_ms
        self.sink.on_delta(self.connection_id, msg, received_ns)
        if state is None:
            return  # a market we did not ask for: stored, not followed
        if not state.trusted:
            if len(state.pending) >= self.config.pending_delta_limit:
                state.pending.popleft()
                self.stats.dropped_pending += 1
            state.pending.append(msg)
            self.stats.buffered_deltas += 1
            return
        self._apply_delta(msg, state)

    def _apply_delta(self, msg: OrderbookDelta, state: _MarketState) -> None:
        book = self.books[msg.market_ticker]
        try:
            book.apply_delta(msg.side, msg.price_e4, msg.delta_e2)
        except BookError as exc:
            self.stats.book_errors += 1
            self._warn.warning("book", "book out of sync: %s", exc)
            self._untrust(msg.market_ticker, EVENT_RESYNC, detail=str(exc)[:200])
            return
        state.applied_seq = msg.seq
        if book.is_crossed():
            self.stats.crossed += 1
            self._untrust(msg.market_ticker, EVENT_CROSSED, detail=repr(book)[:200])

    def _on_snapshot(self, msg: OrderbookSnapshot, received_ns: int) -> None:
        state = self._markets.get(msg.market_ticker)
        if state is not None and state.sid is not None and state.sid != msg.sid:
            # Never move a market to another sid on a snapshot's word: its sid is the one
            # that acknowledged our subscribe, and gaps/resyncs are keyed on it.
            raise _not_its_sid("orderbook_snapshot", msg.market_ticker, msg.sid, state.sid)
        self.stats.snapshots += 1
        source = SOURCE_RESYNC if state is not None and state.awaiting_resync else SOURCE_WS
        self.sink.on_snapshot(self.connection_id, msg, received_ns, source)
        if state is None:
            return
        book = self.books[msg.market_ticker]
        try:
            book.apply_snapshot(msg.yes, msg.no)
        except BookError as exc:
            self.stats.book_errors += 1
            self._warn.warning("snapshot", "unusable snapshot: %s", exc)
            return
        # Only reached with state.sid None (an ack that named no markets) or equal: the sid
        # was checked to be an acknowledged orderbook sid before this call.
        state.sid = msg.sid
        state.trusted = True
        state.awaiting_resync = False
        state.applied_seq = msg.seq
        # Deltas buffered while waiting: the ones the snapshot already contains are older.
        pending, state.pending = state.pending, deque()
        for delta in pending:
            if delta.sid == msg.sid and msg.seq is not None and delta.seq <= msg.seq:
                continue
            if state.trusted:
                self._apply_delta(delta, state)

    # -- control frames -----------------------------------------------------------------

    def _on_subscribed(self, msg: Subscribed) -> None:
        self._acknowledge(msg.id, msg.channel, msg.sid)

    def _on_ok(self, msg: Ok) -> None:
        # A subscribe for a channel already open is merged into its sid and answered by an
        # ``ok`` (observed, protocol notes §3): that too acknowledges the sid.
        if msg.sid is not None and msg.id is not None and msg.id in self._pending_cmds:
            self._acknowledge(msg.id, None, msg.sid)

    def _acknowledge(self, cmd_id: int | None, channel: str | None, sid: int) -> None:
        """Adopt ``sid`` only as the answer to one of our own pending subscribe commands."""
        if cmd_id is None:
            # No id echoed: accept it for the oldest pending command of that channel.
            cmd_id = next((i for i, (ch, _) in self._pending_cmds.items() if ch == channel), None)
        pending = self._pending_cmds.get(cmd_id) if cmd_id is not None else None
        if pending is None or (channel is not None and channel != pending[0]):
            raise ProtocolError(
                f"subscription ack for sid {sid} ({channel or 'ok'!r}) answers no pending "
                f"subscribe command (id {cmd_id})",
                code="unexpected_ack",
            )
        in_use = self._sid_channel.get(sid)
        if in_use is not None and in_use != pending[0]:
            raise ProtocolError(
                f"subscription ack gives sid {sid} to {pending[0]}, but it carries {in_use}",
                code="unexpected_ack",
            )
        del self._pending_cmds[cmd_id]
        channel, markets = pending
        self._sid_channel[sid] = channel
        if channel == ORDERBOOK:
            for market in markets:
                state = self._markets.get(market)
                if state is not None:
                    state.sid = sid

    def _on_gap(self, sid: int, expected: int | None, got: int) -> None:
        self.stats.gaps += 1
        if expected is not None:
            self.stats.missed_seqs += got - expected
        channel = self._sid_channel.get(sid, "")
        markets = [m for m, s in self._markets.items() if s.sid == sid]
        self._warn.warning(
            "gap", "seq gap on sid %s (%s): expected %s, got %s", sid, channel, expected, got
        )
        self.sink.on_event(
            self.connection_id,
            EVENT_GAP,
            sid=sid,
            expected_seq=expected,
            got_seq=got,
            detail=f"{channel} markets={len(markets)}",
        )
        if channel == ORDERBOOK and markets:
            for market in markets:
                self._drop_book(market)
            self._spawn(self._request_snapshots(sid, markets))

    def _on_error(self, msg: ErrorMessage) -> None:
        self.stats.sub_errors += 1
        self._warn.warning("error", "exchange error %s: %s", msg.code, msg.message)
        if self.connection_id is None:
            return
        # Free text from the peer goes into text columns: PostgreSQL refuses U+0000 in them.
        self.sink.on_event(
            self.connection_id,
            EVENT_SUB_ERROR,
            market_ticker=(msg.market_ticker or "").replace("\x00", "")[:128],
            sid=msg.sid,
            detail=f"code {msg.code}: {msg.message}".replace("\x00", "\\x00")[:200],
        )
        if msg.code in FATAL_SUB_ERRORS and msg.sid is not None:
            # The subscription is dead: resubscribe its markets on a new sid.
            channel = self._sid_channel.pop(msg.sid, "")
            self._seq.forget(msg.sid)
            if channel == ORDERBOOK:
                markets = [m for m, s in self._markets.items() if s.sid == msg.sid]
                for market in markets:
                    self._drop_book(market)
                    self._markets[market].awaiting_resync = True
            else:
                markets = list(self._markets)
            if channel:
                self.stats.resubscribes += 1
                self._spawn(self._subscribe((channel,), markets))

    def _untrust(self, market: str, kind: str, *, detail: str = "") -> None:
        """Drop a market's book and ask for a fresh snapshot (scheduled, not awaited here)."""
        state = self._markets[market]
        self.sink.on_event(
            self.connection_id, kind, market_ticker=market, sid=state.sid, detail=detail
        )
        self._drop_book(market)
        if state.sid is not None:
            self._spawn(self._request_snapshots(state.sid, [market]))

    def _drop_book(self, market: str) -> None:
        state = self._markets[market]
        state.trusted = False
        state.pending.clear()
        self.books[market].clear()

    def _spawn(self, coro: Coroutine[object, object, None]) -> None:
        """Send a command without blocking the frame handler; failures are only logged."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Future) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("command to the exchange failed: %s", task.exception())

    async def _request_snapshots(self, sid: int, markets: Iterable[str]) -> None:
        markets = list(markets)
        for market in markets:
            self._markets[market].awaiting_resync = True
        self.stats.resyncs += 1
        if self.connection_id is not None:
            self.sink.on_event(
                self.connection_id, EVENT_RESYNC, sid=sid, detail=f"get_snapshot x{len(markets)}"
            )
        cmd = self._commands.update_subscription(
            sid=sid, action="get_snapshot", market_tickers=markets
        )
        await self._send(cmd.text)

    async def _subscribe(self, channels: Iterable[str], markets: list[str]) -> None:
        for channel in channels:
            cmd = self._commands.subscribe(
                [channel],
                None if channel == LIFECYCLE else markets,
                use_yes_price=self.config.use_yes_price if channel == ORDERBOOK else None,
            )
            self._pending_cmds[cmd.id] = (channel, list(markets))
            await self._send(cmd.text)

    async def _send(self, text: str) -> None:
        if self._ws is None:
            return
        try:
            await self._ws.send(text)
        except websockets.ConnectionClosed:
            pass  # the read loop sees the close and reconnects


def _not_its_sid(name: str, market: str, sid: int, own_sid: int) -> ProtocolError:
    return ProtocolError(
        f"{name} frame of {market!r} on sid {sid}, but it is subscribed on sid {own_sid}",
        code="wrong_sid",
    )


def _describe(exc: BaseException) -> str:
    """``str(exc)`` cut short, and safe even when ``__str__`` itself fails."""
    try:
        return str(exc)[:300].replace("\x00", "\\x00")  # it may end up in a text column
    except Exception:
        return f"<unprintable {type(exc).__name__}>"
