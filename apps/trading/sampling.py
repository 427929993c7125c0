"""Live books sampled on the env's clock, and their history features (pure: no Django).

The env sees a market as rows of a :class:`~apps.simulation.history.RecordedHistory`: at each
tick, the top ``BOOK_LEVELS`` bids of each side (0 where absent, all 0 while untrusted), the
trusted flag, and the number of book updates since the previous tick. :class:`BookSampler`
takes exactly that row from the live :class:`~apps.marketdata.book.OrderBook` objects at each
decision, so a paper session is itself a history the env can replay (the parity test does).

History features (mid changes, update counts, volatility, spread and depth changes) come from
:func:`~apps.simulation.features.history_summaries` over the per-tick series of mid, spread
and top-5 depth. Those series come from :func:`~apps.simulation.features.series_values`, the
very function ``KalshiTradingEnv._precompute`` applies to its whole history, so the series here
are the env's series bit for
bit; :class:`LiveHistory` keeps the last ``HISTORY_CAPACITY`` ticks of them and reruns
``history_summaries`` on that ring. Row ``t`` of ``history_summaries`` reads ticks
``t − 300 … t`` only and adds in the same order however long the series is, so the ring gives
the env's row exactly. ``tests/trading/test_sampling.py`` checks every tick of a history
against the env's own precomputed rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from apps.simulation.features import HISTORY_CAPACITY, history_summaries, series_values
from apps.simulation.fills import BOOK_LEVELS, BookView


@dataclass(frozen=True, slots=True)
class BookSample:
    """Every followed market at one decision, in the env's layout (fresh arrays).

    Attributes:
        time_ns: Unix time of the sample in ns.
        px: (M, 2, BOOK_LEVELS) int64 bid prices in $0.0001, [:, 0] YES and [:, 1] NO,
            best first, 0 where absent.
        sz: (M, 2, BOOK_LEVELS) int64 bid sizes in 0.01 contract, 0 where absent.
        trusted: (M,) bool, the client's seq-checked trust in each book.
        updates: (M,) int64 book updates applied since the previous sample.
    """

    time_ns: int
    px: np.ndarray
    sz: np.ndarray
    trusted: np.ndarray
    updates: np.ndarray


class BookSampler:
    """Reads the top ``BOOK_LEVELS`` levels of M live books into a :class:`BookSample`."""

    def __init__(self, n_markets: int) -> None:
        self.n_markets = n_markets
        self._seen_updates: list[int | None] = [None] * n_markets

    def sample(
        self, books: Sequence[BookView], trusted: Sequence[bool], *, time_ns: int
    ) -> BookSample:
        """Sample every book now.

        Args:
            books: the markets' books in slot order (an ``OrderBook`` exposes ``updates``, the
                count of snapshots, deltas and clears applied; other views count as unchanged).
            trusted: whether each book is trusted (an untrusted book samples as all zeros,
                as the history loader stores it).
            time_ns: Unix time of the sample in ns.
        """
        m = self.n_markets
        px = np.zeros((m, 2, BOOK_LEVELS), dtype=np.int64)
        sz = np.zeros((m, 2, BOOK_LEVELS), dtype=np.int64)
        updates = np.zeros(m, dtype=np.int64)
        ok = np.zeros(m, dtype=bool)
        for j, book in enumerate(books):
            count = getattr(book, "updates", 0)
            previous = self._seen_updates[j]
            # The first sample counts the updates up to then, like the first tick of a load.
            updates[j] = count - previous if previous is not None else count
            self._seen_updates[j] = count
            if not trusted[j]:
                continue
            ok[j] = True
            for side in (0, 1):
                levels = book.depth("yes" if side == 0 else "no", BOOK_LEVELS)
                for i, (price_e4, size_e2) in enumerate(levels):
                    px[j, side, i] = price_e4
                    sz[j, side, i] = size_e2
        return BookSample(time_ns=time_ns, px=px, sz=sz, trusted=ok, updates=updates)


class LiveHistory:
    """The history features of M markets over their last ``HISTORY_CAPACITY`` ticks.

    One ring of (mid, spread, updates, yes_depth, no_depth) per market, like
    :class:`~apps.simulation.features.MarketHistory`, but all markets in one array and
    summarised with one :func:`~apps.simulation.features.history_summaries` call over the
    markets' rings laid end to end. Before a ring is full its oldest slots hold NaN (and 0
    updates): ``history_summaries`` treats a NaN sample exactly as a window reaching before the
    first sample (a change of 0, no update, no volatility term), so each ring's last row is
    what the env computes at that tick, and no window of one market reaches into another's
    ring (windows span at most ``HISTORY_CAPACITY`` ticks).
    """

    def __init__(self, n_markets: int) -> None:
        self.n_markets = n_markets
        self._series = np.full((4, n_markets, HISTORY_CAPACITY), np.nan)  # mid, spread, depths
        self._updates = np.zeros((n_markets, HISTORY_CAPACITY), dtype=np.int64)
        self._last_rows = np.arange(1, n_markets + 1) * HISTORY_CAPACITY - 1

    def push(self, sample: BookSample) -> np.ndarray:
        """Append one tick; returns the (M, N_HISTORY) raw history values for it (float64)."""
        series, updates = self._series, self._updates
        series[:, :, :-1] = series[:, :, 1:]
        updates[:, :-1] = updates[:, 1:]
        series[:, :, -1] = series_values(sample.px, sample.sz, sample.trusted)
        updates[:, -1] = sample.updates
        mid, spread, yes_depth, no_depth = (s.reshape(-1) for s in series)
        rows = history_summaries(mid, spread, updates.reshape(-1), yes_depth, no_depth)
        return rows[self._last_rows]
