"""Live books sampled on the env's clock, and their history features (pure: no Django).

The env sees a market as rows of a :class:`~apps.simulation.history.RecordedHistory`: at each
tick, the top ``BOOK_LEVELS`` bids of each side (0 where absent, all 0 while untrusted), the
trusted flag, and the number of book updates since the previous tick. :class:`BookSampler`
takes exactly that row from the live :class:`~apps.marketdata.kalshi.book.OrderBook` objects at each
decision, so a paper session is itself a history the env can replay (the parity test does).

History features (mid changes, update counts, volatility, spread and depth changes) are those
of :func:`~apps.simulation.features.history_summaries` over the per-tick series of mid, spread
and top-5 depth. Those series come from :func:`~apps.simulation.features.series_values`, the
very function ``KalshiTradingEnv._precompute`` applies to its whole history, so the series here
are the env's series bit for bit; :class:`LiveHistory` keeps the last ``HISTORY_CAPACITY``
ticks of them and computes the latest row only, compiled. Row ``t`` of ``history_summaries``
reads ticks ``t − 300 … t`` only and adds in a fixed order, so the ring gives the env's row
exactly. ``tests/trading/test_sampling.py`` checks every tick of a history
against the env's own precomputed rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import islice

import numpy as np

from apps.marketdata.kalshi.book import OrderBook
from apps.simulation.books import BOOK_LEVELS, BookView
from apps.simulation.features import HISTORY_CAPACITY, N_HISTORY
from apps.simulation.history_features import push_history, tick_series


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


_ZEROS = [0] * BOOK_LEVELS  # padding for a ladder shorter than BOOK_LEVELS (sliced, never changed)


class BookSampler:
    """Reads the top ``BOOK_LEVELS`` levels of M live books into a :class:`BookSample`.

    The sampler keeps the last sample's arrays and re-reads only the books that changed since:
    an :class:`~apps.marketdata.kalshi.book.OrderBook` counts every snapshot, delta and clear
    in ``updates``, so the same book object with the same count and the same trust holds the
    same levels as when it was last read. (On every book change the paper trader decides, and
    one change touches one book: reading every market's ladders each time cost more than the
    compiled rules.) A view without ``updates`` is read every time.
    """

    def __init__(self, n_markets: int) -> None:
        self.n_markets = n_markets
        self._seen_updates: list[int | None] = [None] * n_markets
        shape = (n_markets, 2, BOOK_LEVELS)
        self._px = np.zeros(shape, dtype=np.int64)
        self._sz = np.zeros(shape, dtype=np.int64)
        # What each row was read from: (book object, its update count, trusted), or None.
        self._read_from: list[tuple[object, int, bool] | None] = [None] * n_markets

    def sample(
        self, books: Sequence[BookView], trusted: Sequence[bool], *, time_ns: int
    ) -> BookSample:
        """Sample every book now.

        Args:
            books: the markets' books in slot order (an ``OrderBook`` exposes ``updates``, the
                count of snapshots, deltas and clears applied; other views count as unchanged
                and are read every time).
            trusted: whether each book is trusted (an untrusted book samples as all zeros,
                as the history loader stores it).
            time_ns: Unix time of the sample in ns.
        """
        m = self.n_markets
        px, sz = self._px, self._sz
        seen = self._seen_updates
        read_from = self._read_from
        counts = [0] * m
        for j, book in enumerate(books):
            count = getattr(book, "updates", -1)  # -1: a view that does not count
            counted = count >= 0
            if not counted:
                count = 0
            previous = seen[j]
            # The first sample counts the updates up to then, like the first tick of a load.
            counts[j] = count - previous if previous is not None else count
            seen[j] = count
            is_trusted = bool(trusted[j])
            source = read_from[j]
            if (
                counted
                and source is not None
                and source[0] is book
                and source[1] == count
                and source[2] == is_trusted
            ):
                continue  # unchanged since it was read: the row holds its levels
            read_from[j] = (book, count, is_trusted) if counted else None
            if not is_trusted:
                px[j] = 0
                sz[j] = 0
                continue
            if type(book) is OrderBook:
                # Its ladders directly: the best prices by reverse iteration, their sizes by
                # lookup (what ``depth`` does, without building the pairs).
                yes, no = book.yes_levels, book.no_levels
                yes_px = list(islice(reversed(yes), BOOK_LEVELS))
                no_px = list(islice(reversed(no), BOOK_LEVELS))
                yes_sz = list(map(yes.__getitem__, yes_px))
                no_sz = list(map(no.__getitem__, no_px))
            else:
                levels = book.depth("yes", BOOK_LEVELS)
                yes_px, yes_sz = [p for p, _ in levels], [z for _, z in levels]
                levels = book.depth("no", BOOK_LEVELS)
                no_px, no_sz = [p for p, _ in levels], [z for _, z in levels]
            yes_pad = _ZEROS[len(yes_px) :]
            no_pad = _ZEROS[len(no_px) :]
            px[j] = (yes_px + yes_pad, no_px + no_pad)
            sz[j] = (yes_sz + yes_pad, no_sz + no_pad)
        return BookSample(
            time_ns=time_ns,
            px=px.copy(),
            sz=sz.copy(),
            trusted=np.array(trusted, dtype=bool),
            updates=np.array(counts, dtype=np.int64),
        )


class LiveHistory:
    """The history features of M markets over their last ``HISTORY_CAPACITY`` ticks.

    One ring per market of (mid, spread, log1p YES depth, log1p NO depth) and of the update
    counts, like :class:`~apps.simulation.features.MarketHistory`; each push appends the tick
    and computes every market's latest row with the compiled
    :func:`~apps.simulation.history_features.push_history`, which does the arithmetic of
    :func:`~apps.simulation.features.history_summaries` at that row in the same order. Before a
    ring is full its oldest slots hold NaN (and 0 updates): a NaN sample counts exactly as a
    window reaching before the first sample (a change of 0, no update, no volatility term),
    so each row is what the env computes at that tick. The tick's series values are
    :func:`~apps.simulation.features.series_values`' arithmetic (compiled, same operations)
    and their log1p is numpy's, as in the env.
    """

    def __init__(self, n_markets: int) -> None:
        self.n_markets = n_markets
        self._ring = np.full((4, n_markets, HISTORY_CAPACITY), np.nan)
        self._updates = np.zeros((n_markets, HISTORY_CAPACITY), dtype=np.int64)
        self._values = np.empty((4, n_markets))

    def push(self, sample: BookSample, out: np.ndarray | None = None) -> np.ndarray:
        """Append one tick; returns the (M, N_HISTORY) raw history values for it (float64,
        a fresh array, or ``out`` written)."""
        values = self._values
        tick_series(sample.px, sample.sz, sample.trusted, values)
        # The env takes log1p of the depth series with numpy: the same function here.
        np.log1p(values[2:], out=values[2:])
        if out is None:
            out = np.empty((self.n_markets, N_HISTORY))
        push_history(self._ring, self._updates, values, sample.updates, out)
        return out
