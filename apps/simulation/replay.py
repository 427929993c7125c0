"""The history load's hot loop, compiled: apply recorded deltas to per-market books and sample
the books on the clock.

:class:`~apps.simulation.history.HistoryBuilder` keeps every market's book as a dense grid of
sizes indexed by price (``grid[market, side, price_e4]``, side 0 = YES, 1 = NO: 10,001 prices
a side, 160 KB a market), plus the best price of each side. A delta is then one array update
and the trust checks are integer comparisons, so a million deltas replay in milliseconds
instead of the seconds a Python loop over sorted dicts takes. Snapshots and markers are rare
and stay in Python (they write the same arrays).

Rules (the recorder's, as :class:`~apps.marketdata.kalshi.book.OrderBook` applies them): a delta
applies only to a trusted book, from the same connection and sid, with a higher seq; a size
that would go negative (or a price outside [0, 10000]) is a book error that untrusts the
market; added size that meets the other side's best bid (crossed) untrusts it too. Untrusted
books are cleared and wait for the next snapshot.

State arrays (M markets): ``grid`` (M, 2, 10001) int64; ``best`` (M, 2) int64 (-1 = empty);
``trust`` (M, 5) int64 with columns trusted, connection id, sid, seq, dirty; ``pending``
(M,) int64 updates since the last sample; ``counters`` (M, 4) int64: deltas applied, skipped
(untrusted or out of sequence), book errors, crossed; ``clock`` (2,) int64: next tick to
sample and its time.
"""

from __future__ import annotations

from numba import njit

from apps.simulation.layout import PRICE_SCALE

GRID = PRICE_SCALE + 1

T_TRUSTED, T_CONN, T_SID, T_SEQ, T_DIRTY = range(5)
C_APPLIED, C_SKIPPED, C_BOOK_ERRORS, C_CROSSED = range(4)


@njit(cache=True, nogil=True)
def untrust(j, grid, best, trust):
    """Drop market ``j``'s book until its next snapshot."""
    trust[j, T_TRUSTED] = 0
    trust[j, T_DIRTY] = 1
    if best[j, 0] >= 0 or best[j, 1] >= 0:
        grid[j, :, :] = 0
    best[j, 0] = -1
    best[j, 1] = -1


@njit(cache=True, nogil=True)
def sample(k, grid, best, trust, pending, yes_px, yes_sz, no_px, no_sz, trusted, updates, sampled):
    """Write tick ``k``'s row for every market that changed since its last sample.

    Rows start at zero and each (tick, market) row is written at most once, so an untrusted
    book and the unused tail levels need no writes; unchanged markets are forward-filled
    later.
    """
    levels = yes_px.shape[2]
    for j in range(grid.shape[0]):
        if pending[j]:
            updates[k, j] = pending[j]
            pending[j] = 0
        if not trust[j, T_DIRTY]:
            continue
        trust[j, T_DIRTY] = 0
        sampled[k, j] = True
        trusted[k, j] = trust[j, T_TRUSTED] != 0
        if not trust[j, T_TRUSTED]:
            continue
        for side in range(2):
            px = yes_px if side == 0 else no_px
            sz = yes_sz if side == 0 else no_sz
            count = 0
            price = best[j, side]
            while price >= 0 and count < levels:
                size = grid[j, side, price]
                if size > 0:
                    px[k, j, count] = price
                    sz[k, j, count] = size
                    count += 1
                price -= 1


@njit(cache=True, nogil=True)
def advance_to(
    ts, step_ns, clock, grid, best, trust, pending, yes_px, yes_sz, no_px, no_sz, trusted,
    updates, sampled,
):  # fmt: skip
    """Sample every tick strictly before ``ts`` (an event at ``ts`` comes next)."""
    n = yes_px.shape[0]
    while clock[0] < n and clock[1] < ts:
        sample(
            clock[0], grid, best, trust, pending, yes_px, yes_sz, no_px, no_sz, trusted,
            updates, sampled,
        )  # fmt: skip
        clock[0] += 1
        clock[1] += step_ns


@njit(cache=True, nogil=True)
def apply_deltas(
    ts_ns, market, conn, sid, seq, is_yes, price_e4, delta_e2,
    step_ns, clock, grid, best, trust, pending, counters,
    yes_px, yes_sz, no_px, no_sz, trusted, updates, sampled,
):  # fmt: skip
    """Apply a chunk of deltas in receive order (parallel arrays), sampling ticks as time
    passes them."""
    n_ticks = yes_px.shape[0]
    for i in range(ts_ns.shape[0]):
        ts = ts_ns[i]
        if ts > clock[1] and clock[0] < n_ticks:
            advance_to(
                ts, step_ns, clock, grid, best, trust, pending, yes_px, yes_sz, no_px, no_sz,
                trusted, updates, sampled,
            )  # fmt: skip
        j = market[i]
        if (
            not trust[j, T_TRUSTED]
            or seq[i] <= trust[j, T_SEQ]
            or sid[i] != trust[j, T_SID]
            or conn[i] != trust[j, T_CONN]
        ):
            counters[j, C_SKIPPED] += 1
            continue
        side = 0 if is_yes[i] else 1
        price = price_e4[i]
        if price < 0 or price > PRICE_SCALE:
            counters[j, C_BOOK_ERRORS] += 1
            untrust(j, grid, best, trust)
            continue
        delta = delta_e2[i]
        size = grid[j, side, price] + delta
        if size < 0:
            counters[j, C_BOOK_ERRORS] += 1
            untrust(j, grid, best, trust)
            continue
        grid[j, side, price] = size
        if size > 0:
            if price > best[j, side]:
                best[j, side] = price
        elif price == best[j, side]:
            # The best level went away: the next one down is the new best.
            p = price - 1
            while p >= 0 and grid[j, side, p] == 0:
                p -= 1
            best[j, side] = p
        trust[j, T_SEQ] = seq[i]
        trust[j, T_DIRTY] = 1
        pending[j] += 1
        counters[j, C_APPLIED] += 1
        # Only added size can cross a book that was not crossed before, and only at the
        # price it was added at.
        other = best[j, 1 - side]
        if delta > 0 and other >= 0 and price + other >= PRICE_SCALE:
            counters[j, C_CROSSED] += 1
            untrust(j, grid, best, trust)
