"""Replay recorded Kalshi frames (JSONL) through the local exchange.

Accepted line formats:

* a raw server frame per line (``{"type":"orderbook_delta","sid":1,...}``);
* the landonct capture format ``{"timestamp": <ns>, "msg": "<raw frame as a JSON string>"}``.

Only the market content of frames is used: ``orderbook_snapshot`` sets the book (subscribers
receive the difference as deltas), ``orderbook_delta`` applies, ``trade`` is re-printed, and
the lifecycle channel's frames (``market_lifecycle_v2``, ``event_lifecycle``,
``event_fee_update``) are sent again with their ``msg`` unchanged (and the replayed markets
take the state they announce); acks, ticker frames and unknown types are skipped. Lifecycle
frames do not define markets: only book and trade frames do.
Recorded sid/seq are ignored: the exchange gives
every client its own, so a replay looks like a normal live stream. Every historic wire format
(integer cents, ``_dollars``, ``_fp``) is read into the product's fixed-point units.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import reduce
from pathlib import Path
from typing import Any

from apps.marketdata.kalshi.units import (
    PRICE_SCALE,
    UnitError,
    cents_to_e4,
    contracts_to_e2,
    count_to_e2,
    dollars_to_e4,
)

from .errors import ConfigError, MarketError
from .markets import Market
from .sources import MarketDataSource
from .venue import Venue

logger = logging.getLogger(__name__)


class ReplayError(ValueError):
    """A frame whose market content cannot be read."""


@dataclass(frozen=True)
class ReplayEvent:
    """One replayable event. ``t_ns`` is the recording time (None when the line has none)."""

    kind: str  # "snapshot" | "delta" | "trade" | "lifecycle"
    ticker: str
    market_id: str | None
    t_ns: int | None
    yes: dict[int, int] | None = None
    no: dict[int, int] | None = None
    side: str = ""
    price_e4: int = 0
    delta_e2: int = 0
    yes_price_e4: int = 0
    count_e2: int = 0
    taker_side: str = ""
    ts_ms: int | None = None
    trade_id: str | None = None
    frame_type: str = ""  # lifecycle: the recorded frame type
    msg: dict[str, Any] | None = None  # lifecycle: the recorded msg, sent as it was


LIFECYCLE_TYPES = ("market_lifecycle_v2", "event_lifecycle", "event_fee_update")


def lifecycle_event(frame: dict[str, Any], t_ns: int | None) -> ReplayEvent:
    """A replay event for one recorded lifecycle frame (already a JSON object)."""
    msg = frame.get("msg")
    if not isinstance(msg, dict):
        raise ReplayError(f"{frame.get('type')} without msg")
    ticker = msg.get("market_ticker") if isinstance(msg.get("market_ticker"), str) else ""
    if t_ns is None and type(frame.get("sending_ts_ms")) is int:
        t_ns = frame["sending_ts_ms"] * 1_000_000
    return ReplayEvent("lifecycle", ticker, None, t_ns, frame_type=frame["type"], msg=msg)


def _price(msg: dict[str, Any], dollars_key: str, cents_key: str) -> int:
    if dollars_key in msg:
        return dollars_to_e4(msg[dollars_key])
    if cents_key in msg:
        return cents_to_e4(msg[cents_key])
    raise ReplayError(f"no {dollars_key} or {cents_key}")


def _size(msg: dict[str, Any], fp_key: str, int_key: str, *, signed: bool) -> int:
    if fp_key in msg:
        return count_to_e2(msg[fp_key], signed=signed)
    if int_key in msg:
        return contracts_to_e2(msg[int_key], signed=signed)
    raise ReplayError(f"no {fp_key} or {int_key}")


def _levels(msg: dict[str, Any], side: str, *, yes_scale: bool) -> dict[int, int]:
    """A snapshot side in any historic format; an absent side is empty."""
    if f"{side}_dollars_fp" in msg:
        raw, parse = msg[f"{side}_dollars_fp"], lambda p, s: (dollars_to_e4(p), count_to_e2(s))
    elif f"{side}_dollars" in msg:
        raw, parse = msg[f"{side}_dollars"], lambda p, s: (dollars_to_e4(p), contracts_to_e2(s))
    elif side in msg:
        raw, parse = msg[side], lambda p, s: (cents_to_e4(p), contracts_to_e2(s))
    else:
        return {}
    if raw is None:
        return {}
    if not isinstance(raw, list):
        raise ReplayError(f"{side} levels are not a list")
    book: dict[int, int] = {}
    for level in raw:
        if not isinstance(level, list) or len(level) != 2:
            raise ReplayError(f"bad {side} level {level!r}")
        price, size = parse(*level)
        if yes_scale and side == "no":
            price = PRICE_SCALE - price
        if size > 0:
            book[price] = size
    return book


def parse_line(line: str, *, recorded_use_yes_price: bool = False) -> ReplayEvent | None:
    """One JSONL line -> a replay event, None for frames without book content.

    Raises ``ReplayError`` (or ``ValueError``) for lines that cannot be read.
    """
    record = json.loads(line)
    if not isinstance(record, dict):
        raise ReplayError("line is not a JSON object")
    t_ns: int | None = None
    frame: Any = record
    if "type" not in record and "msg" in record:
        # Capture wrapper: {"timestamp": ns, "msg": "<raw frame>"}.
        inner = record["msg"]
        frame = json.loads(inner) if isinstance(inner, str) else inner
        stamp = record.get("timestamp")
        if type(stamp) is int:
            t_ns = stamp
    if not isinstance(frame, dict):
        raise ReplayError("frame is not a JSON object")
    kind = frame.get("type")
    if kind in LIFECYCLE_TYPES:
        return lifecycle_event(frame, t_ns)
    if kind not in ("orderbook_snapshot", "orderbook_delta", "trade"):
        return None
    msg = frame.get("msg")
    if not isinstance(msg, dict) or not isinstance(msg.get("market_ticker"), str):
        raise ReplayError(f"{kind} without msg.market_ticker")
    if t_ns is None and type(frame.get("sending_ts_ms")) is int:
        t_ns = frame["sending_ts_ms"] * 1_000_000
    ts_ms = msg.get("ts_ms") if type(msg.get("ts_ms")) is int else None
    if t_ns is None and ts_ms is not None:
        t_ns = ts_ms * 1_000_000
    ticker = msg["market_ticker"]
    market_id = msg.get("market_id") if isinstance(msg.get("market_id"), str) else None
    if kind == "orderbook_snapshot":
        return ReplayEvent(
            "snapshot",
            ticker,
            market_id,
            t_ns,
            yes=_levels(msg, "yes", yes_scale=False),
            no=_levels(msg, "no", yes_scale=recorded_use_yes_price),
            ts_ms=ts_ms,
        )
    if kind == "orderbook_delta":
        side = msg.get("side")
        if side not in ("yes", "no"):
            raise ReplayError(f"delta side {side!r}")
        price = _price(msg, "price_dollars", "price")
        if recorded_use_yes_price and side == "no":
            price = PRICE_SCALE - price
        delta = _size(msg, "delta_fp", "delta", signed=True)
        return ReplayEvent(
            "delta", ticker, market_id, t_ns, side=side, price_e4=price, delta_e2=delta, ts_ms=ts_ms
        )
    taker = msg.get("taker_side")
    if taker not in ("yes", "no"):
        raise ReplayError(f"trade taker_side {taker!r}")
    if ts_ms is None and type(msg.get("ts")) is int:
        ts_ms = msg["ts"] * 1000
    trade_id = msg.get("trade_id") if isinstance(msg.get("trade_id"), str) else None
    return ReplayEvent(
        "trade",
        ticker,
        market_id,
        t_ns,
        yes_price_e4=_price(msg, "yes_price_dollars", "yes_price"),
        count_e2=_size(msg, "count_fp", "count", signed=False),
        taker_side=taker,
        ts_ms=ts_ms,
        trade_id=trade_id,
    )


def infer_structure(prices: set[int]) -> str:
    """The coarsest documented tick grid that holds every recorded price."""
    if not prices:
        return "linear_cent"
    step = reduce(math.gcd, prices)
    if step % 100 == 0:
        return "linear_cent"
    if step % 10 == 0:
        fine = [p for p in prices if p % 100]
        if all(p < 1_000 or p > 9_000 for p in fine):
            return "tapered_deci_cent"
        return "deci_cent"
    return "center_deci_edge_centi_cent"


def market_from_ticker(
    ticker: str, *, market_id: str | None, prices: set[int], sizes_fractional: bool
) -> Market:
    """A Market for a ticker seen only in recorded frames.

    The event and series tickers follow Kalshi's naming convention (``SERIES-EVENT-MARKET``);
    recorded frames do not carry them, and nothing here depends on them but REST filters.
    """
    event = ticker.rsplit("-", 1)[0] if ticker.count("-") >= 2 else ticker
    structure = infer_structure(prices)
    try:
        return Market(
            ticker=ticker,
            event_ticker=event,
            series_ticker=event.split("-", 1)[0],
            price_level_structure=structure,
            fractional=sizes_fractional,
            market_id=market_id or "",
            title=f"Replayed market {ticker}",
        )
    except MarketError as exc:
        raise ConfigError(f"cannot replay market {ticker!r}: {exc}") from None


def event_prices(event: ReplayEvent) -> tuple[set[int], bool]:
    """Prices (NO side as NO prices) and whether any size is fractional."""
    if event.kind == "snapshot":
        levels = [*(event.yes or {}).items(), *(event.no or {}).items()]
        return {p for p, _ in levels}, any(s % 100 for _, s in levels)
    if event.kind == "delta":
        return {event.price_e4}, bool(event.delta_e2 % 100)
    return set(), bool(event.count_e2 % 100)


class ReplayPacer:
    """Applies events to a venue at ``speed`` x the recorded pace (<= 0: as fast as the
    clients read). Keeps its clock across ``play()`` calls, so a replay fed in chunks (the DB
    source) keeps the recorded spacing at chunk boundaries. Shared by both replay sources."""

    def __init__(self, venue: Venue, *, speed: float, restamp: bool, batch: int = 2_000) -> None:
        self.venue = venue
        self.speed = speed
        self.restamp = restamp
        self.batch = batch
        self.applied = 0
        self.skipped = 0
        self._first_t: int | None = None
        self._start: float | None = None
        self._pending: list[ReplayEvent] = []

    def _apply(self, event: ReplayEvent) -> None:
        venue = self.venue
        ts_ms = None if self.restamp else event.ts_ms
        if event.kind == "snapshot":
            venue.set_book(event.ticker, yes=event.yes, no=event.no, ts_ms=ts_ms)
        elif event.kind == "delta":
            venue.apply_delta(event.ticker, event.side, event.price_e4, event.delta_e2, ts_ms=ts_ms)
        elif event.kind == "lifecycle":
            venue.replay_lifecycle(event.frame_type, event.msg or {})
        else:
            venue.apply_trade(
                event.ticker,
                yes_price_e4=event.yes_price_e4,
                count_e2=event.count_e2,
                taker_side=event.taker_side,
                ts_ms=ts_ms,
                trade_id=event.trade_id,
            )

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        paused_at = loop.time()
        if await self.venue.gate() and self._start is not None:
            self._start += loop.time() - paused_at  # a pause does not count as replay time
        # From here to the end of the loop nothing awaits: a batch is applied atomically.
        for event in self._pending:
            try:
                self._apply(event)
            except MarketError as exc:
                # A recorded value the exchange cannot hold (zero delta, a $0 or $1 price):
                # skip that event rather than end the replay.
                self.skipped += 1
                logger.warning("replay event skipped: %s", exc)
                continue
            self.applied += 1
        self._pending.clear()

    async def play(self, events: Iterable[ReplayEvent]) -> None:
        loop = asyncio.get_running_loop()
        if self._start is None:
            self._start = loop.time()
        for event in events:
            if self.speed > 0 and event.t_ns is not None:
                if self._first_t is None:
                    self._first_t = event.t_ns
                due = self._start + (event.t_ns - self._first_t) / 1e9 / self.speed
                if due - loop.time() > 0.002:
                    await self._flush()
                    await asyncio.sleep(max(0.0, due - loop.time()))
            self._pending.append(event)
            if len(self._pending) >= self.batch:
                await self._flush()
                if self.speed <= 0:
                    # Unpaced replay waits for slow clients instead of overflowing them.
                    await self.venue.flush_below(50_000)
                else:
                    await asyncio.sleep(0)
        await self._flush()


class JsonlReplaySource(MarketDataSource):
    """Replays a JSONL capture; ``speed`` x real time (<= 0: as fast as clients read).

    - ``recorded_use_yes_price``: the capture was subscribed with ``use_yes_price: true``
      (its NO prices are on the YES scale); they are converted back to NO prices.
    - ``restamp``: give replayed deltas/trades the current time (default) rather than the
      recorded ``ts_ms``, so the stream looks live to a recorder.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        speed: float = 1.0,
        recorded_use_yes_price: bool = False,
        restamp: bool = True,
    ) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise ConfigError(f"replay file {self.path} does not exist")
        if not math.isfinite(speed):
            raise ConfigError(f"replay speed must be finite, got {speed!r}")
        self.speed = speed
        self.recorded_use_yes_price = recorded_use_yes_price
        self.restamp = restamp
        self.skipped_lines = 0
        self.events_applied = 0

    def events(self, *, warn: bool = True) -> Iterator[ReplayEvent]:
        """Every replayable event in file order; unreadable lines are counted and skipped
        (the first few logged when ``warn``)."""
        self.skipped_lines = 0
        with self.path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    event = parse_line(line, recorded_use_yes_price=self.recorded_use_yes_price)
                except (ValueError, UnitError, TypeError) as exc:
                    self.skipped_lines += 1
                    if warn and self.skipped_lines <= 5:
                        logger.warning("%s:%d skipped: %s", self.path, number, exc)
                    continue
                if event is not None:
                    yield event

    async def prepare(self) -> list[Market]:
        return await asyncio.to_thread(self._scan)

    def _scan(self) -> list[Market]:
        found: dict[str, tuple[str | None, set[int], bool]] = {}
        for event in self.events(warn=False):  # run() reports bad lines, once
            if event.kind == "lifecycle":
                continue  # lifecycle messages name markets, they do not define them
            market_id, prices, fractional = found.get(event.ticker, (None, set(), False))
            more_prices, more_fractional = event_prices(event)
            found[event.ticker] = (
                market_id or event.market_id,
                prices | more_prices,
                fractional or more_fractional,
            )
        if not found:
            raise ConfigError(f"{self.path} holds no orderbook or trade frames to replay")
        return [
            market_from_ticker(t, market_id=i, prices=p, sizes_fractional=f)
            for t, (i, p, f) in found.items()
        ]

    async def run(self, venue: Venue) -> None:
        pacer = ReplayPacer(venue, speed=self.speed, restamp=self.restamp)
        await pacer.play(self.events())
        self.events_applied = pacer.applied
        logger.info(
            "replay of %s finished: %d events applied, %d skipped, %d lines unreadable",
            self.path,
            pacer.applied,
            pacer.skipped,
            self.skipped_lines,
        )
