"""Recorded books on a common clock, as numpy arrays (pure: no Django, no database).

:class:`HistoryBuilder` replays snapshot, delta and marker events in receive order, keeps one
:class:`~apps.marketdata.book.OrderBook` per market and samples every book at each clock tick
``t_k = start + k * step``: the state at ``t_k`` includes exactly the events received at or
before ``t_k`` (never later ones, so nothing downstream can look ahead).

Trust follows the recorder's rules: a book is trusted from a snapshot until a gap, resync,
crossed or disconnect marker for its connection (and sid); a delta is applied only when it
continues the frames the current book reflects (same connection and sid, higher seq).

Arrays (``T`` ticks, ``M`` markets, ``K`` levels, best level first, 0 where absent):

* ``yes_px``, ``no_px``: int32 (T, M, K) bid prices in $0.0001 (NO side in NO prices)
* ``yes_sz``, ``no_sz``: int64 (T, M, K) sizes in 0.01 contract
* ``trusted``: bool (T, M); ``updates``: int32 (T, M) book changes since the previous tick
* ``times_ns``: int64 (T,) tick times in Unix nanoseconds
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from apps.marketdata.book import BookError, OrderBook

HISTORY_FORMAT_VERSION = 1
DEFAULT_LEVELS = 10


@dataclass
class MarketQuality:
    """What the replay saw for one market; reported, never hidden."""

    snapshots: int = 0
    deltas_applied: int = 0
    deltas_skipped_untrusted: int = 0
    gaps: int = 0
    resets: int = 0
    crossed: int = 0
    book_errors: int = 0
    untrusted_ticks: int = 0
    stale_ticks: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class RecordedHistory:
    markets: list[str]
    times_ns: np.ndarray
    yes_px: np.ndarray
    yes_sz: np.ndarray
    no_px: np.ndarray
    no_sz: np.ndarray
    trusted: np.ndarray
    updates: np.ndarray
    quality: dict[str, MarketQuality] = field(default_factory=dict)
    step_ns: int = 1_000_000_000

    @property
    def n_ticks(self) -> int:
        return int(self.times_ns.shape[0])

    @property
    def n_levels(self) -> int:
        return int(self.yes_px.shape[2])

    def nbytes(self) -> int:
        return sum(
            a.nbytes
            for a in (
                self.times_ns,
                self.yes_px,
                self.yes_sz,
                self.no_px,
                self.no_sz,
                self.trusted,
                self.updates,
            )
        )

    def quality_report(self) -> dict[str, dict[str, int]]:
        return {m: q.as_dict() for m, q in self.quality.items()}

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(
            tmp,
            times_ns=self.times_ns,
            yes_px=self.yes_px,
            yes_sz=self.yes_sz,
            no_px=self.no_px,
            no_sz=self.no_sz,
            trusted=self.trusted,
            updates=self.updates,
            meta=np.array(
                json.dumps(
                    {
                        "markets": self.markets,
                        "step_ns": self.step_ns,
                        "quality": self.quality_report(),
                        "format": HISTORY_FORMAT_VERSION,
                    }
                )
            ),
        )
        tmp.replace(path)  # atomic: a crash never leaves a half-written cache

    @classmethod
    def load_npz(cls, path: Path) -> RecordedHistory:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            return cls(
                markets=meta["markets"],
                times_ns=data["times_ns"],
                yes_px=data["yes_px"],
                yes_sz=data["yes_sz"],
                no_px=data["no_px"],
                no_sz=data["no_sz"],
                trusted=data["trusted"],
                updates=data["updates"],
                quality={m: MarketQuality(**q) for m, q in meta["quality"].items()},
                step_ns=meta["step_ns"],
            )

    def window(self, start_ns: int, end_ns: int) -> RecordedHistory:
        """The ticks in [start_ns, end_ns) as a new history (arrays are views: read only)."""
        lo = int(np.searchsorted(self.times_ns, start_ns, side="left"))
        hi = int(np.searchsorted(self.times_ns, end_ns, side="left"))
        return RecordedHistory(
            markets=self.markets,
            times_ns=self.times_ns[lo:hi],
            yes_px=self.yes_px[lo:hi],
            yes_sz=self.yes_sz[lo:hi],
            no_px=self.no_px[lo:hi],
            no_sz=self.no_sz[lo:hi],
            trusted=self.trusted[lo:hi],
            updates=self.updates[lo:hi],
            quality=self.quality,
            step_ns=self.step_ns,
        )


def cache_key(**query: Any) -> str:
    """A stable key for a load: the query plus the code version of this module."""
    payload = json.dumps({**query, "format": HISTORY_FORMAT_VERSION}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


class _MarketReplay:
    __slots__ = ("book", "conn", "dirty", "quality", "seq", "sid", "trusted", "updates")

    def __init__(self, ticker: str) -> None:
        self.book = OrderBook(ticker)
        self.conn: object = None
        self.sid = -1
        self.seq = -1
        self.trusted = False
        self.dirty = True
        self.updates = 0
        self.quality = MarketQuality()


class HistoryBuilder:
    """Feed events in receive-time order, then call :meth:`finish`.

    ``stale_after_ticks``: ticks without any book change after which a tick counts as stale
    in the quality report (the book is still used).
    """

    def __init__(
        self,
        markets: list[str],
        *,
        start_ns: int,
        end_ns: int,
        step_ns: int,
        levels: int = DEFAULT_LEVELS,
        stale_after_ticks: int = 300,
    ) -> None:
        if not markets:
            raise ValueError("history needs at least one market")
        if len(set(markets)) != len(markets):
            raise ValueError("markets must be distinct")
        if step_ns <= 0 or end_ns <= start_ns:
            raise ValueError("need step > 0 and end after start")
        self.markets = list(markets)
        self.index = {m: i for i, m in enumerate(markets)}
        self.start_ns = start_ns
        self.step_ns = step_ns
        self.levels = levels
        self.stale_after_ticks = stale_after_ticks
        n = (end_ns - start_ns + step_ns - 1) // step_ns
        self.times_ns = start_ns + np.arange(n, dtype=np.int64) * step_ns
        m = len(markets)
        self.yes_px = np.zeros((n, m, levels), dtype=np.int32)
        self.no_px = np.zeros((n, m, levels), dtype=np.int32)
        self.yes_sz = np.zeros((n, m, levels), dtype=np.int64)
        self.no_sz = np.zeros((n, m, levels), dtype=np.int64)
        self.trusted = np.zeros((n, m), dtype=bool)
        self.updates = np.zeros((n, m), dtype=np.int32)
        self._sampled = np.zeros((n, m), dtype=bool)
        self._replays = [_MarketReplay(t) for t in markets]
        self._next_tick = 0  # first tick not yet sampled
        self._next_tick_ns = start_ns

    # -- events ------------------------------------------------------------------------

    def advance_to(self, ts_ns: int) -> None:
        """Sample every tick strictly before ``ts_ns`` (an event at ``ts_ns`` comes next)."""
        n = self.times_ns.shape[0]
        while self._next_tick < n and self._next_tick_ns < ts_ns:
            self._sample(self._next_tick)
            self._next_tick += 1
            self._next_tick_ns += self.step_ns

    def snapshot(
        self,
        ts_ns: int,
        market: str,
        *,
        connection: object,
        as_of_sid: int,
        as_of_seq: int,
        yes: list[tuple[int, int]],
        no: list[tuple[int, int]],
        periodic: bool = False,
    ) -> None:
        replay = self._replay(market, ts_ns)
        if replay is None:
            return
        if periodic and replay.trusted:
            return  # our own snapshot of a book we already follow adds nothing
        try:
            replay.book.apply_snapshot(yes, no)
        except BookError:
            replay.quality.book_errors += 1
            self._untrust(replay)
            return
        replay.quality.snapshots += 1
        replay.conn, replay.sid, replay.seq = connection, as_of_sid, as_of_seq
        replay.trusted = True
        replay.dirty = True
        replay.updates += 1

    def deltas(
        self,
        ts_ns: list[int],
        market_idx: list[int],
        connection: list[object],
        sid: list[int],
        seq: list[int],
        is_yes: list[bool],
        price_e4: list[int],
        delta_e2: list[int],
    ) -> None:
        """Apply a chunk of deltas (parallel lists, receive order). The hot loop of a load."""
        replays = self._replays
        next_tick_ns = self._next_tick_ns
        n_ticks = self.times_ns.shape[0]
        side_names = ("no", "yes")  # indexed by is_yes
        for ts, mi, conn, sid_i, seq_i, yes_i, price, delta in zip(
            ts_ns, market_idx, connection, sid, seq, is_yes, price_e4, delta_e2, strict=True
        ):
            if ts > next_tick_ns and self._next_tick < n_ticks:
                self.advance_to(ts)
                next_tick_ns = self._next_tick_ns
            replay = replays[mi]
            if (
                not replay.trusted
                or seq_i <= replay.seq
                or replay.sid != sid_i
                or replay.conn != conn
            ):
                replay.quality.deltas_skipped_untrusted += 1
                continue
            book = replay.book
            side = side_names[yes_i]
            try:
                book.apply_delta(side, price, delta)
            except BookError:
                replay.quality.book_errors += 1
                self._untrust(replay)
                continue
            replay.seq = seq_i
            replay.dirty = True
            replay.updates += 1
            replay.quality.deltas_applied += 1
            # Only added size can cross a book that was not crossed before, and only at the
            # price it was added at.
            if delta > 0 and book.crosses(side, price):
                replay.quality.crossed += 1
                self._untrust(replay)

    def marker(
        self, ts_ns: int, *, kind: str, connection: object, sid: int | None, market: str = ""
    ) -> None:
        """A recording marker (gap, resync, crossed, sub_error, disconnect)."""
        self.advance_to(ts_ns)
        for replay in self._replays:
            if replay.conn != connection or not replay.trusted:
                continue
            if market and replay.book.market_ticker != market:
                continue
            if sid is not None and kind == "gap" and replay.sid != sid:
                continue
            if kind == "gap":
                replay.quality.gaps += 1
            else:
                replay.quality.resets += 1
            self._untrust(replay)

    # -- output --------------------------------------------------------------------------

    def finish(self) -> RecordedHistory:
        self.advance_to(np.iinfo(np.int64).max)
        # Ticks where a book did not change reuse the last sampled row (forward fill).
        n, m = self._sampled.shape
        rows = np.where(self._sampled, np.arange(n)[:, None], 0)
        np.maximum.accumulate(rows, axis=0, out=rows)
        cols = np.arange(m)[None, :]
        for name in ("yes_px", "no_px", "yes_sz", "no_sz"):
            arr = getattr(self, name)
            setattr(self, name, arr[rows, cols])
        self.trusted = self.trusted[rows, cols] & (self._sampled.cumsum(axis=0) > 0)
        quality = {}
        for j, replay in enumerate(self._replays):
            replay.quality.untrusted_ticks = int((~self.trusted[:, j]).sum())
            quality[replay.book.market_ticker] = replay.quality
        self._count_stale(quality)
        return RecordedHistory(
            markets=self.markets,
            times_ns=self.times_ns,
            yes_px=self.yes_px,
            yes_sz=self.yes_sz,
            no_px=self.no_px,
            no_sz=self.no_sz,
            trusted=self.trusted,
            updates=self.updates,
            quality=quality,
            step_ns=self.step_ns,
        )

    # -- internals -------------------------------------------------------------------------

    def _replay(self, market: str, ts_ns: int) -> _MarketReplay | None:
        j = self.index.get(market)
        if j is None:
            return None
        self.advance_to(ts_ns)
        return self._replays[j]

    def _untrust(self, replay: _MarketReplay) -> None:
        replay.trusted = False
        replay.book.clear()
        replay.dirty = True

    def _sample(self, k: int) -> None:
        levels = self.levels
        for j, replay in enumerate(self._replays):
            if replay.updates:
                self.updates[k, j] = replay.updates
                replay.updates = 0
            if not replay.dirty:
                continue
            replay.dirty = False
            self._sampled[k, j] = True
            self.trusted[k, j] = replay.trusted
            # Rows start at zero and each (tick, market) row is written at most once, so an
            # untrusted book and the unused tail levels need no writes at all.
            if not replay.trusted:
                continue
            book = replay.book
            for ladder, px, sz in (
                (book.yes_levels, self.yes_px, self.yes_sz),
                (book.no_levels, self.no_px, self.no_sz),
            ):
                prices = list(islice(reversed(ladder), levels))  # best first
                if prices:
                    count = len(prices)
                    px[k, j, :count] = prices
                    sz[k, j, :count] = [ladder[p] for p in prices]

    def _count_stale(self, quality: dict[str, MarketQuality]) -> None:
        limit = self.stale_after_ticks
        for j, market in enumerate(self.markets):
            changed = self.updates[:, j] > 0
            # ticks since the last change, per tick
            idx = np.where(changed, np.arange(changed.shape[0]), -1)
            np.maximum.accumulate(idx, out=idx)
            since = np.arange(changed.shape[0]) - idx
            quality[market].stale_ticks = int(((since > limit) & (idx >= 0)).sum())
