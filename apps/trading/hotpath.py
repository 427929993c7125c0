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
:func:`~apps.simulation.kernel.execute_all`) stay separate calls with the kernel's own
arguments: this module knows nothing of fees or limits.
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
    P_YES,
    TRADED,
)

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
def before_decision(px, sz, trusted, pos, acct, marks):
    """Mark one tick of books (``marks`` (1, M): ``kernel.tick_marks``) and return twice the
    equity at those marks in $0.000001 (``kernel.equity_x2``)."""
    kernel.tick_marks(px, sz, trusted, marks[0])
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
def after_fills(marks, pos, acct, fills, masks, values_x2, values_after_x2, rows):
    """After ``kernel.execute_all``: the row columns of each market and the new equity.

    Writes ``rows`` (M, ROW_COLUMNS): quantity filled (0 unless traded), its price in $0.0001
    rounded half to even (``NO_PRICE`` without a fill), the fee (0 unless traded), the
    market's gain ×2 in $0.000001 (its value at the marks minus its value after the previous
    decision, plus twice the cash its fill moved), net contracts after (YES − NO), the refusal
    code, and the mask bits (``kernel.mask_bits``). ``values_x2`` (the values after the
    previous decision) becomes this decision's; ``values_after_x2`` is scratch. Returns twice
    the equity after the fills in $0.000001.

    Args:
        marks: (1, M) int64 twice the YES mids of the tick (-1 without a mark).
        pos, acct: the account after the fills.
        fills: (M, FILL_COLUMNS) int64 what ``execute_all`` wrote.
        masks: (M, 30) bool the masks the policy saw.
        values_x2, values_after_x2: (M,) int64.
        rows: (M, ROW_COLUMNS) int64 to write.
    """
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
