"""The paper trader's per-decision bookkeeping, compiled (pure: no Django).

:class:`~apps.trading.actor.PaperActor` runs the kernel's rules (masks, fills) on the live
books; around them it marks the books, sums equity, checks the kill switch's position limit
and turns the fills into the columns of its ``rl_trading_actions`` rows. Done as a dozen
small numpy and kernel calls from Python, that bookkeeping cost several times the rules
themselves, so it is two compiled calls here, one before the policy and one after the fills.
Each does the very arithmetic the kernel's helpers do (it calls them:
:func:`~apps.simulation.kernel.tick_marks`, :func:`~apps.simulation.kernel.equity_x2`,
:func:`~apps.simulation.kernel.market_values_x2`, :func:`~apps.simulation.kernel.mask_bits`),
in integers, so the actor's figures are unchanged bit for bit
(``tests/trading/test_parity.py``, ``tests/trading/test_actor.py``).

The rules themselves (:func:`~apps.simulation.kernel.action_masks`,
:func:`~apps.simulation.kernel.execute_all`) are called from here with the tuple
:func:`~apps.simulation.kernel.trading_rules` built, unpacked as it is: this module knows
nothing of sizes, fees or limits.
"""

from __future__ import annotations

from numba import njit

from apps.simulation import kernel
from apps.simulation.layout import (
    F_CASH,
    F_FEE,
    F_FILLED,
    F_NOTIONAL,
    F_REFUSAL,
    P_NO,
    P_NO_COST,
    P_YES,
    P_YES_COST,
    TRADED,
)

NS = 1_000_000_000  # ns per second (the env's ``NS``)

# Columns of the (M, ROW_COLUMNS) int64 array :func:`after_fills` writes, one row per market.
R_FILLED, R_PRICE, R_FEE, R_GAIN_X2, R_NET, R_REFUSAL, R_BITS = range(7)
ROW_COLUMNS = 7
NO_PRICE = -1  # R_PRICE of a market that filled nothing (logged as NULL)


@njit(cache=True, nogil=True)
def first_over_position(pos, max_held_e2):
    """The first market holding more than ``max_held_e2`` (YES + NO, 0.01 contract), or -1."""
    for j in range(pos.shape[0]):
        if pos[j, P_YES] + pos[j, P_NO] > max_held_e2:
            return j
    return -1


@njit(cache=True, nogil=True)
def before_decision(
    px,
    sz,
    trusted,
    pos,
    acct,
    rules,
    marks,
    masks,
    close_ns,
    time_ns,
    batch_px,
    batch_sz,
    batch_trusted,
    batch_seconds,
    batch_yes,
    batch_no,
    batch_cost,
):
    """Mark one tick of books, write the observation's per-market inputs and the masks.

    ``px``, ``sz``, ``trusted`` are the books as a tick axis of one ((1, M, 2, K), (1, M)),
    the kernel's layout; ``rules`` is ``kernel.trading_rules``' fields as a plain tuple,
    passed through as it is. Writes ``masks`` (M × 30,) (``kernel.action_masks``), ``marks`` (1, M)
    (``kernel.tick_marks``) and the first M slots of a
    :class:`~apps.simulation.features.MarketBatch`'s arrays: the books, their trust, seconds to
    close (``(close_ns − time_ns) / NS`` as float64, as numpy divides int64 by an int) and the
    holdings from ``pos``. Returns twice the equity at the marks in $0.000001
    (``kernel.equity_x2``).
    """
    kernel.tick_marks(px[0], sz[0], trusted[0], marks[0])
    for j in range(px.shape[1]):
        batch_px[j] = px[0, j]
        batch_sz[j] = sz[0, j]
        batch_trusted[j] = trusted[0, j]
        batch_seconds[j] = (close_ns[j] - time_ns) / NS
        batch_yes[j] = pos[j, P_YES]
        batch_no[j] = pos[j, P_NO]
        batch_cost[j] = pos[j, P_YES_COST] + pos[j, P_NO_COST]
    kernel.action_masks(px, sz, trusted, pos, acct, *rules, 0, masks)
    return kernel.equity_x2(marks, 0, pos, acct)


@njit(cache=True, nogil=True)
def _round_half_even(numerator, denominator):
    """``round(Fraction(numerator, denominator))`` for a positive denominator (floor division
    and modulo follow Python's signs in numba, as in the Python twin this replaced)."""
    quotient = numerator // denominator
    twice = 2 * (numerator - quotient * denominator)
    if twice > denominator or (twice == denominator and quotient % 2 != 0):
        return quotient + 1
    return quotient


@njit(cache=True, nogil=True)
def after_fills(
    px,
    sz,
    trusted,
    pos,
    acct,
    rules,
    actions,
    fills,
    marks,
    masks,
    values_x2,
    values_after_x2,
    rows,
):
    """Carry out ``actions`` (``kernel.execute_all`` with the rules tuple as it is, into
    ``fills``), then the row columns of each market and the new equity.

    Writes ``rows`` (M, ROW_COLUMNS): quantity filled (0 unless traded), its price in $0.0001
    rounded half to even (``NO_PRICE`` without a fill), the fee (0 unless traded), the
    market's gain ×2 in $0.000001 (its value at the marks minus its value after the previous
    decision, plus twice the cash its fill moved), net contracts after (YES − NO), the refusal
    code, and the mask bits (``kernel.mask_bits``). ``values_x2`` (the values after the
    previous decision) becomes this decision's; ``values_after_x2`` is scratch. Returns twice
    the equity after the fills in $0.000001.

    Args:
        px, sz, trusted, rules: as for :func:`before_decision`.
        pos, acct: the account (the fills change it).
        actions: (M,) int64 action ids, each in 0..29 (the caller checked).
        fills: (M, FILL_COLUMNS) int64 for ``execute_all`` to write.
        marks: (1, M) int64 twice the YES mids of the tick (-1 without a mark).
        masks: (M, 30) bool the masks the policy saw.
        values_x2, values_after_x2: (M,) int64.
        rows: (M, ROW_COLUMNS) int64 to write.
    """
    kernel.execute_all(px, sz, trusted, pos, acct, *rules, 0, actions, fills)
    kernel.market_values_x2(marks, 0, pos, values_after_x2)
    kernel.mask_bits(masks, rows[:, R_BITS])
    for j in range(pos.shape[0]):
        code = fills[j, F_REFUSAL]
        traded = code == TRADED
        filled = fills[j, F_FILLED] if traded else 0
        rows[j, R_FILLED] = filled
        rows[j, R_PRICE] = (
            _round_half_even(fills[j, F_NOTIONAL], filled) if filled != 0 else NO_PRICE
        )
        rows[j, R_FEE] = fills[j, F_FEE] if traded else 0
        gain = values_after_x2[j] - values_x2[j]
        if traded:
            gain += 2 * fills[j, F_CASH]
        rows[j, R_GAIN_X2] = gain
        rows[j, R_NET] = pos[j, P_YES] - pos[j, P_NO]
        rows[j, R_REFUSAL] = code
        values_x2[j] = values_after_x2[j]
    return kernel.equity_x2(marks, 0, pos, acct)


__all__ = [
    "NO_PRICE",
    "ROW_COLUMNS",
    "after_fills",
    "before_decision",
    "first_over_position",
]
