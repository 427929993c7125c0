"""History features: the per-market values that summarise the last steps of a book.

Mid changes over 1/5/30/300 steps, update counts over the same windows, the 30-step mid
volatility, and the 5-step changes of the spread and of the log top-5 depths
(``layout.HISTORY_NAMES``; :mod:`apps.simulation.features` documents their scales in the
observation). :func:`history_summaries` computes them for every step of a series at once (the
env, over a whole recording); :class:`MarketHistory` keeps a ring of the last
``HISTORY_CAPACITY`` samples and reruns that same code. Both read only samples at or before the
current step; a step whose book is unknown (untrusted, or one side empty) records NaN and
contributes no change.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from apps.simulation.books import BookView, book_to_arrays
from apps.simulation.layout import (
    CHANGE_WINDOW,
    DEPTH_LEVELS,
    HISTORY_WINDOWS,
    N_HISTORY,
    VOL_WINDOW,
)

HISTORY_CAPACITY = max(HISTORY_WINDOWS) + 1  # samples a ring buffer keeps


def book_stats(
    yes_px: np.ndarray, yes_sz: np.ndarray, no_px: np.ndarray, no_sz: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Mid, spread and top-5 depths of top-K ladders (any leading shape, levels last).

    Args:
        yes_px, no_px: bid prices in $0.0001, best first.
        yes_sz, no_sz: bid sizes in 0.01 contract, 0 = empty slot.

    Returns:
        (mid in dollars, spread in dollars, YES top-5 contracts, NO top-5 contracts); mid and
        spread are NaN unless both sides have a level.
    """
    # One formula for mid/spread/depth everywhere: the env's (series_values).
    px = np.stack([np.asarray(yes_px), np.asarray(no_px)], axis=-2)
    sz = np.stack([np.asarray(yes_sz), np.asarray(no_sz)], axis=-2)
    return series_values(px, sz, np.ones(px.shape[:-2], dtype=bool))


def _lag_change(series: np.ndarray, lag: int) -> np.ndarray:
    """series[t] − series[t − lag], 0 where the earlier sample is missing or either is NaN."""
    out = np.zeros_like(series)
    if lag < len(series):
        out[lag:] = series[lag:] - series[:-lag]
    return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)


def series_values(
    px: np.ndarray, sz: np.ndarray, trusted: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The raw inputs of :func:`history_summaries` for books at any leading shape.

    The env calls it once over a whole recorded history and the paper trader once per tick:
    one formula, so both feed ``history_summaries`` the same numbers bit for bit.

    Args:
        px: (..., 2, K) integer bid prices in $0.0001 ([..., 0, :] YES, [..., 1, :] NO).
        sz: (..., 2, K) integer bid sizes in 0.01 contract.
        trusted: (...) bool.

    Returns:
        (mid, spread) in dollars, NaN unless trusted and two-sided; (yes_depth, no_depth) in
        contracts over the top ``DEPTH_LEVELS`` levels, NaN unless trusted. Each (...) float64.
    """
    yes_bid = px[..., 0, 0] / 1e4
    no_bid = px[..., 1, 0] / 1e4
    two = (sz[..., 0, 0] > 0) & (sz[..., 1, 0] > 0) & trusted
    mid = np.where(two, (yes_bid + 1.0 - no_bid) / 2, np.nan)
    spread = np.where(two, 1.0 - yes_bid - no_bid, np.nan)
    yes_depth = np.where(trusted, sz[..., 0, :DEPTH_LEVELS].sum(axis=-1) / 100, np.nan)
    no_depth = np.where(trusted, sz[..., 1, :DEPTH_LEVELS].sum(axis=-1) / 100, np.nan)
    return mid, spread, yes_depth, no_depth


def history_block(
    px: np.ndarray, sz: np.ndarray, trusted: np.ndarray, updates: np.ndarray
) -> np.ndarray:
    """:func:`history_summaries` of every market of a recorded history: (T, M, N_HISTORY).

    Args:
        px, sz: (T, M, 2, K) integer bid prices and sizes (as :func:`series_values`).
        trusted: (T, M) bool.
        updates: (T, M) book updates applied during each step.
    """
    mid, spread, yes_depth, no_depth = series_values(px, sz, trusted)
    out = np.zeros((*np.shape(trusted), N_HISTORY))
    for j in range(out.shape[1]):
        out[:, j] = history_summaries(
            mid[:, j], spread[:, j], updates[:, j], yes_depth[:, j], no_depth[:, j]
        )
    return out


def history_summaries(
    mid: np.ndarray,
    spread: np.ndarray,
    updates: np.ndarray,
    yes_depth: np.ndarray,
    no_depth: np.ndarray,
) -> np.ndarray:
    """Raw history values (``HISTORY_NAMES``) for every step of a series: (T, 12) float64.

    Row ``t`` uses samples 0..t only. A window reaching before the first sample, or touching
    a NaN (no two-sided or no trusted book), contributes 0 for a change.

    Args:
        mid: (T,) YES mid in dollars, NaN when unknown.
        spread: (T,) spread in dollars, NaN when unknown.
        updates: (T,) book updates (snapshots + deltas) applied during each step, integers.
        yes_depth, no_depth: (T,) contracts in the top 5 levels, NaN when unknown.
    """
    mid = np.asarray(mid, dtype=np.float64)
    n = len(mid)
    out = np.zeros((n, N_HISTORY), dtype=np.float64)
    for j, w in enumerate(HISTORY_WINDOWS):
        out[:, j] = _lag_change(mid, w)
    counts = np.concatenate(([0], np.cumsum(np.asarray(updates, dtype=np.int64))))
    ends = np.arange(1, n + 1)
    for j, w in enumerate(HISTORY_WINDOWS):
        out[:, 4 + j] = counts[ends] - counts[np.maximum(ends - w, 0)]
    # Std of the last VOL_WINDOW one-step changes; summed offset by offset (not with a
    # reduction) so every row adds in the same order however long the series is.
    diffs = np.full(n + VOL_WINDOW - 1, np.nan)
    if n > 1:
        diffs[VOL_WINDOW:] = mid[1:] - mid[:-1]
    total = np.zeros(n)
    total_sq = np.zeros(n)
    count = np.zeros(n)
    for j in range(VOL_WINDOW):
        window = diffs[j : j + n]
        ok = np.isfinite(window)
        value = np.where(ok, window, 0.0)
        total += value
        total_sq += value * value
        count += ok
    safe = np.maximum(count, 1)
    mean = total / safe
    var = np.maximum(total_sq / safe - mean * mean, 0.0)
    out[:, 8] = np.where(count >= 2, np.sqrt(var), 0.0)
    out[:, 9] = _lag_change(np.asarray(spread, dtype=np.float64), CHANGE_WINDOW)
    out[:, 10] = _lag_change(np.log1p(np.asarray(yes_depth, dtype=np.float64)), CHANGE_WINDOW)
    out[:, 11] = _lag_change(np.log1p(np.asarray(no_depth, dtype=np.float64)), CHANGE_WINDOW)
    return out


class MarketHistory:
    """A fixed ring of the last ``HISTORY_CAPACITY`` samples of one market (paper trader).

    Push one sample per step; :meth:`summary` returns what :func:`history_summaries` gives
    for the latest step of the same sequence (it reruns that code on the ring, about 0.15 ms:
    fine for a live trader, while the env should call :func:`history_summaries` once per
    series).
    """

    __slots__ = ("_arrays", "_n")

    def __init__(self) -> None:
        # Rows: mid, spread, updates, yes_depth, no_depth; oldest first.
        self._arrays = np.zeros((5, HISTORY_CAPACITY), dtype=np.float64)
        self._n = 0

    def __len__(self) -> int:
        return self._n

    def push(
        self, *, mid: float, spread: float, updates: int, yes_depth: float, no_depth: float
    ) -> None:
        """Append one step.

        Args:
            mid: YES mid in dollars (NaN when unknown).
            spread: spread in dollars (NaN when unknown).
            updates: book updates applied during the step.
            yes_depth, no_depth: contracts in the top 5 levels (NaN when unknown).
        """
        if self._n == HISTORY_CAPACITY:
            self._arrays[:, :-1] = self._arrays[:, 1:]
            self._n -= 1
        self._arrays[:, self._n] = (mid, spread, updates, yes_depth, no_depth)
        self._n += 1

    def push_book(self, book: BookView, *, updates: int, trusted: bool = True) -> None:
        """Append one step read from a book (an untrusted book records unknowns).

        Args:
            book: the market's book as it stands at the end of the step.
            updates: book updates applied during the step.
            trusted: False while the book is untrusted.
        """
        if not trusted:
            self.push(mid=np.nan, spread=np.nan, updates=updates, yes_depth=np.nan, no_depth=np.nan)
            return
        mid, spread, yes_depth, no_depth = book_stats(*book_to_arrays(book, DEPTH_LEVELS))
        self.push(
            mid=float(mid),
            spread=float(spread),
            updates=updates,
            yes_depth=float(yes_depth),
            no_depth=float(no_depth),
        )

    def summary(self) -> np.ndarray:
        """(12,) raw history values for the latest step (zeros before the first push)."""
        if self._n == 0:
            return np.zeros(N_HISTORY)
        a = self._arrays[:, : self._n]
        return history_summaries(a[0], a[1], a[2].astype(np.int64), a[3], a[4])[-1]


# -- the live ring, compiled -------------------------------------------------------------------


@njit(cache=True, nogil=True)
def _finite_or_zero(value):
    return value if np.isfinite(value) else 0.0


@njit(cache=True, nogil=True)
def tick_series(px, sz, trusted, values):
    """:func:`series_values` of one tick of M books into ``values`` (4, M): mid, spread and the
    two top-5 depths, with the same float64 operations in the same order (the caller takes
    numpy's log1p of the depths, as the env does)."""
    for j in range(px.shape[0]):
        yes_bid = px[j, 0, 0] / 1e4
        no_bid = px[j, 1, 0] / 1e4
        if sz[j, 0, 0] > 0 and sz[j, 1, 0] > 0 and trusted[j]:
            values[0, j] = (yes_bid + 1.0 - no_bid) / 2
            values[1, j] = 1.0 - yes_bid - no_bid
        else:
            values[0, j] = np.nan
            values[1, j] = np.nan
        for side in range(2):
            if trusted[j]:
                total = 0
                for k in range(DEPTH_LEVELS):
                    total += sz[j, side, k]
                values[2 + side, j] = total / 100
            else:
                values[2 + side, j] = np.nan


@njit(cache=True, nogil=True)
def push_history(ring, ring_updates, values, updates, out):
    """Append one tick to M rings and write each ring's latest :func:`history_summaries` row.

    The same arithmetic as :func:`history_summaries` at its last row, in the same order, on
    the last ``HISTORY_CAPACITY`` samples (every window fits in them), so the row is the env's
    bit for bit (``tests/trading/test_sampling.py`` checks every tick of a history).

    Args:
        ring: (4, M, HISTORY_CAPACITY) float64 mid, spread, log1p(YES top-5 depth),
            log1p(NO top-5 depth), oldest first; NaN where unknown or before the first sample.
        ring_updates: (M, HISTORY_CAPACITY) int64 book updates per tick (0 before the first).
        values: (4, M) float64 the new tick's values, in ``ring``'s order.
        updates: (M,) int64 the new tick's book updates.
        out: (M, N_HISTORY) float64 to write.
    """
    n_series, m, cap = ring.shape
    for s in range(n_series):
        for j in range(m):
            for i in range(cap - 1):
                ring[s, j, i] = ring[s, j, i + 1]
            ring[s, j, cap - 1] = values[s, j]
    for j in range(m):
        for i in range(cap - 1):
            ring_updates[j, i] = ring_updates[j, i + 1]
        ring_updates[j, cap - 1] = updates[j]
    t = cap - 1
    for j in range(m):
        for k in range(len(HISTORY_WINDOWS)):
            w = HISTORY_WINDOWS[k]
            out[j, k] = _finite_or_zero(ring[0, j, t] - ring[0, j, t - w])
            count = 0
            for i in range(cap - w, cap):
                count += ring_updates[j, i]
            out[j, 4 + k] = count
        # Offset by offset in time order, adding 0.0 for a missing change (as the numpy code).
        total = 0.0
        total_sq = 0.0
        n = 0.0
        for i in range(t - VOL_WINDOW + 1, t + 1):
            d = ring[0, j, i] - ring[0, j, i - 1]
            ok = np.isfinite(d)
            value = d if ok else 0.0
            total += value
            total_sq += value * value
            n += 1.0 if ok else 0.0
        safe = n if n > 1.0 else 1.0
        mean = total / safe
        var = total_sq / safe - mean * mean
        var = var if var >= 0.0 else 0.0
        out[j, 8] = np.sqrt(var) if n >= 2.0 else 0.0
        out[j, 9] = _finite_or_zero(ring[1, j, t] - ring[1, j, t - CHANGE_WINDOW])
        out[j, 10] = _finite_or_zero(ring[2, j, t] - ring[2, j, t - CHANGE_WINDOW])
        out[j, 11] = _finite_or_zero(ring[3, j, t] - ring[3, j, t - CHANGE_WINDOW])
