"""Recorded books on a common clock, as numpy arrays (pure: no Django, no database).

:class:`HistoryBuilder` replays snapshot, delta and marker events in receive order, keeps one
book per market (a dense price grid, replayed in compiled code: :mod:`apps.simulation.replay`)
and samples every book at each clock tick
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
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from apps.marketdata.kalshi.book import BookError, OrderBook
from apps.simulation import replay

# The per-tick arrays of a RecordedHistory (the builder keeps the same names while it works).
ARRAY_FIELDS = ("times_ns", "yes_px", "yes_sz", "no_px", "no_sz", "trusted", "updates")
HISTORY_FORMAT_VERSION = 3  # 2: compiled replay; 3: unclosed connections end at their last row
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

    def arrays(self) -> dict[str, np.ndarray]:
        """The per-tick arrays by name (``ARRAY_FIELDS`` order)."""
        return {name: getattr(self, name) for name in ARRAY_FIELDS}

    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays().values())

    def quality_report(self) -> dict[str, dict[str, int]]:
        return {m: q.as_dict() for m, q in self.quality.items()}

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(
            tmp,
            **self.arrays(),
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
                **{name: data[name] for name in ARRAY_FIELDS},
                quality={m: MarketQuality(**q) for m, q in meta["quality"].items()},
                step_ns=meta["step_ns"],
            )

    def window(self, start_ns: int, end_ns: int) -> RecordedHistory:
        """The ticks in [start_ns, end_ns) as a new history (arrays are views: read only)."""
        lo = int(np.searchsorted(self.times_ns, start_ns, side="left"))
        hi = int(np.searchsorted(self.times_ns, end_ns, side="left"))
        return RecordedHistory(
            markets=self.markets,
            **{name: a[lo:hi] for name, a in self.arrays().items()},
            quality=self.quality,
            step_ns=self.step_ns,
        )


def cache_key(**query: Any) -> str:
    """A stable key for a load: the query plus the code version of this module."""
    payload = json.dumps({**query, "format": HISTORY_FORMAT_VERSION}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


class HistoryBuilder:
    """Feed events in receive-time order, then call :meth:`finish`.

    Deltas replay in compiled code (:mod:`apps.simulation.replay`) on dense per-market price
    grids; snapshots and markers, which are rare, are applied here.

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
        # Replay state (layouts in apps.simulation.replay).
        self._grid = np.zeros((m, 2, replay.GRID), dtype=np.int64)
        self._best = np.full((m, 2), -1, dtype=np.int64)
        self._trust = np.zeros((m, 5), dtype=np.int64)
        self._trust[:, replay.T_CONN] = -1
        self._trust[:, replay.T_SID] = -1
        self._trust[:, replay.T_SEQ] = -1
        self._trust[:, replay.T_DIRTY] = 1
        self._pending = np.zeros(m, dtype=np.int64)
        self._counters = np.zeros((m, 4), dtype=np.int64)
        self._clock = np.array([0, start_ns], dtype=np.int64)
        self._quality = [MarketQuality() for _ in markets]
        self._connections: dict[object, int] = {}

    # -- events ------------------------------------------------------------------------

    def connection_id(self, connection: object) -> int:
        """The small integer the replay uses for a connection key (any hashable)."""
        return self._connections.setdefault(connection, len(self._connections))

    def advance_to(self, ts_ns: int) -> None:
        """Sample every tick strictly before ``ts_ns`` (an event at ``ts_ns`` comes next)."""
        replay.advance_to(
            min(ts_ns, np.iinfo(np.int64).max), self.step_ns, self._clock, *self._arrays()
        )

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
        j = self.index.get(market)
        if j is None:
            return
        self.advance_to(ts_ns)
        trust = self._trust
        if periodic and trust[j, replay.T_TRUSTED]:
            return  # our own snapshot of a book we already follow adds nothing
        quality = self._quality[j]
        try:
            # The book's own validation: prices in range, positive sizes, no duplicates.
            OrderBook(market).apply_snapshot(yes, no)
        except BookError:
            quality.book_errors += 1
            self._untrust(j)
            return
        grid = self._grid
        grid[j] = 0
        for side, levels in enumerate((yes, no)):
            for price, size in levels:
                grid[j, side, price] = size
            self._best[j, side] = max((p for p, _ in levels), default=-1)
        quality.snapshots += 1
        trust[j] = (1, self.connection_id(connection), as_of_sid, as_of_seq, 1)
        self._pending[j] += 1

    def deltas(
        self,
        ts_ns: Sequence[int],
        market_idx: Sequence[int],
        connection: Sequence[object],
        sid: Sequence[int],
        seq: Sequence[int],
        is_yes: Sequence[bool],
        price_e4: Sequence[int],
        delta_e2: Sequence[int],
    ) -> None:
        """Apply a chunk of deltas (parallel sequences, receive order); connections are any
        hashable keys (see :meth:`deltas_arrays` for the loader's array form)."""
        conn = np.fromiter((self.connection_id(c) for c in connection), np.int64, len(ts_ns))
        self.deltas_arrays(ts_ns, market_idx, conn, sid, seq, is_yes, price_e4, delta_e2)

    def deltas_arrays(
        self,
        ts_ns: Sequence[int] | np.ndarray,
        market_idx: Sequence[int] | np.ndarray,
        connection_ids: Sequence[int] | np.ndarray,
        sid: Sequence[int] | np.ndarray,
        seq: Sequence[int] | np.ndarray,
        is_yes: Sequence[bool] | np.ndarray,
        price_e4: Sequence[int] | np.ndarray,
        delta_e2: Sequence[int] | np.ndarray,
    ) -> None:
        """Apply a chunk of deltas given as arrays; ``connection_ids`` from
        :meth:`connection_id`. The hot path of a load (compiled)."""
        columns = [
            np.ascontiguousarray(c, dtype=np.int64)
            for c in (ts_ns, market_idx, connection_ids, sid, seq, price_e4, delta_e2)
        ]
        ts, market, conn, sid_a, seq_a, price, delta = columns
        if market.size and (market.min() < 0 or market.max() >= len(self.markets)):
            raise ValueError(f"market index outside 0..{len(self.markets) - 1}")
        yes = np.ascontiguousarray(is_yes, dtype=np.bool_)
        replay.apply_deltas(
            ts, market, conn, sid_a, seq_a, yes, price, delta,
            self.step_ns, self._clock, self._grid, self._best, self._trust, self._pending,
            self._counters, *self._arrays()[4:],
        )  # fmt: skip

    def marker(
        self, ts_ns: int, *, kind: str, connection: object, sid: int | None, market: str = ""
    ) -> None:
        """A recording marker (gap, resync, crossed, sub_error, disconnect)."""
        self.advance_to(ts_ns)
        conn = self._connections.get(connection)
        trust = self._trust
        for j, ticker in enumerate(self.markets):
            if conn is None or trust[j, replay.T_CONN] != conn or not trust[j, replay.T_TRUSTED]:
                continue
            if market and ticker != market:
                continue
            if sid is not None and kind == "gap" and trust[j, replay.T_SID] != sid:
                continue
            if kind == "gap":
                self._quality[j].gaps += 1
            else:
                self._quality[j].resets += 1
            self._untrust(j)

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
        counters = self._counters.tolist()
        for j, market in enumerate(self.markets):
            q = self._quality[j]
            applied, skipped, errors, crossed = counters[j]
            q.deltas_applied = applied
            q.deltas_skipped_untrusted = skipped
            q.book_errors += errors
            q.crossed = crossed
            q.untrusted_ticks = int((~self.trusted[:, j]).sum())
            quality[market] = q
        self._count_stale(quality)
        return RecordedHistory(
            markets=self.markets,
            **{name: getattr(self, name) for name in ARRAY_FIELDS},
            quality=quality,
            step_ns=self.step_ns,
        )

    # -- internals -------------------------------------------------------------------------

    def _arrays(self) -> tuple[np.ndarray, ...]:
        return (
            self._grid,
            self._best,
            self._trust,
            self._pending,
            self.yes_px,
            self.yes_sz,
            self.no_px,
            self.no_sz,
            self.trusted,
            self.updates,
            self._sampled,
        )

    def _untrust(self, j: int) -> None:
        replay.untrust(j, self._grid, self._best, self._trust)

    def _count_stale(self, quality: dict[str, MarketQuality]) -> None:
        limit = self.stale_after_ticks
        for j, market in enumerate(self.markets):
            changed = self.updates[:, j] > 0
            # ticks since the last change, per tick
            idx = np.where(changed, np.arange(changed.shape[0]), -1)
            np.maximum.accumulate(idx, out=idx)
            since = np.arange(changed.shape[0]) - idx
            quality[market].stale_ticks = int(((since > limit) & (idx >= 0)).sum())
