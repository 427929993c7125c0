"""The trading rules, compiled: one step's actions, masks, settlement, equity and the
portfolio-dependent features for all markets in a single call each.

This is the only implementation of the rules that the product executes: the env steps it over
recorded books and the paper trader (:mod:`apps.trading.actor`) runs it on arrays sampled from
the live books, for masks and fills alike. A readable Python model of the same rules lives in
the tests (``tests/simulation/oracle``), and ``tests/simulation/test_kernel.py`` runs the two in
lockstep on random books, portfolios and actions: same fills, fees, refusals, positions and
cash, integer for integer (a deliberately broken kernel rule must fail it:
``tests/simulation/test_kernel_mutants.py``).

Integer arithmetic only (cash and cost in $0.000001, prices in $0.0001, sizes in 0.01
contract); :func:`check_int64_bounds` is how the env and the paper trader prove, before they
start, that no product below can leave int64 for its limits, cash and episode length.

Array layouts and codes (``pos``, ``acct``, ``limits``, ``fills``, refusal and result codes)
are named in :mod:`apps.simulation.layout`, read here as compile-time constants.
:class:`~apps.simulation.portfolio.Portfolio` is the read-only view of ``pos`` / ``acct``.

The portfolio-dependent features are one compiled function, :func:`_position_slot` (via
:func:`write_position_features` for the paper trader's batch and
:func:`write_env_observation` for the env), so they are the same bits on both paths.

Fees (:mod:`apps.simulation.fees`): each level an order takes is one fill; its trade fee is
rounded up to $0.0001, its balance change floored to the account precision
(``limits[L_PRECISION]``), and the order's accumulator of rounding fees refunds a cent each time
it reaches one. Each market's fee row at tick ``t`` is ``fee_table[fee_ids[t, j]]``, so a fee
change applies from its tick on.

Netting: a position holds YES or NO, never both; after a buy, matched YES/NO pairs are
redeemed for $1 each (Kalshi nets them). Selling removes ``cost × sold / held`` of the cost
basis, rounded down to $0.000001 (the rest stays with the contracts still held). A limit only
blocks an order that makes its own measure worse, so a position over a limit can always be
reduced.

Size: just over 700 lines, on purpose: the rules are one compiled unit whose functions call
each other inside numba (``_decide`` from ``execute_all`` and ``action_masks``, the settlement
and marks from the step); keeping them in one module keeps one reading order and one cache.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
from numba import njit

from apps.simulation.fees import CENT_E6, FEE_TERM_DIVISOR, FLAT_TERM, check_account_precision
from apps.simulation.fees import FeeIndex as FeeIndex  # the env and the paper trader use it
from apps.simulation.layout import (
    A_CASH,
    A_EXPOSURE,
    A_FEES,
    A_REALIZED,
    A_ROUNDING,
    ACTIONS_PER_MARKET,
    CASH,
    CLOSED,
    CONCENTRATION,
    EXPOSURE,
    F_ACTION,
    F_CASH,
    F_CONTRACT,
    F_FEE,
    F_FILLED,
    F_NOTIONAL,
    F_REFUSAL,
    F_ROUNDING,
    F_SIDE,
    F_SIZE,
    F_TYPE,
    FEATURES_PER_MARKET,
    FEE_DEN,
    FEE_FLAT,
    FEE_KIND,
    FEE_NUM,
    FEES_CAPITAL_SHARE,
    FILL_COLUMNS,
    HOLD,
    L_CONC_DEN,
    L_CONC_NUM,
    L_EXP_DEN,
    L_EXP_NUM,
    L_MAX_POSITION,
    L_PRECISION,
    N_MARKETS,
    N_SIZES,
    NO_LIQUIDITY,
    NO_POSITION,
    NOT_HELD,
    OFF_ENTRY,
    OFF_EXPOSURE,
    OFF_HAS_NO,
    OFF_HAS_YES,
    OFF_NET,
    OFF_UNREAL,
    OFF_UNREAL_PC,
    P_FEES,
    P_NO,
    P_NO_COST,
    P_REALIZED,
    P_ROUNDING,
    P_SETTLED,
    P_TOUCHED,
    P_YES,
    P_YES_COST,
    POSITION,
    PRICE_SCALE,
    RESULT_NO,
    RESULT_SCALAR,
    RESULT_YES,
    TRADED,
    UNREALIZED_CAPITAL_SHARE,
    UNTRUSTED,
)

# Read through this module by the env and the tests (kernel.REFUSALS, ...).
from apps.simulation.layout import ACCT_SIZE as ACCT_SIZE
from apps.simulation.layout import POS_COLUMNS as POS_COLUMNS
from apps.simulation.layout import REFUSALS as REFUSALS
from apps.simulation.layout import RESULT_UNKNOWN as RESULT_UNKNOWN

_TO_DOLLARS = 1.0 / PRICE_SCALE
_INT64_MAX = 2**63 - 1


def check_int64_bounds(
    *,
    initial_cash_e6: int,
    limits: np.ndarray,
    fee_table: np.ndarray,
    n_markets: int,
    episode_steps: int,
    max_order_e2: int,
) -> None:
    """Raise ValueError unless every product the kernel forms fits in int64.

    Holdings never exceed the position limit after a step (a buy that would is refused), but
    an order is priced before it is checked: an order (at most ``max_order_e2``, the largest
    action size, or the position limit for a FLATTEN) may briefly make the holdings
    ``limit + order``. So a market's cost stays below ``(limit + order) × $1``, one fill's fee
    term below ``order × FLAT_TERM`` (a quadratic term is at most a quarter of that), and
    capital moves by at most that much per market per step.
    """
    max_pos = int(limits[L_MAX_POSITION])
    max_order = max(int(max_order_e2), max_pos)
    max_held = max_pos + max_order
    max_cost = max_held * PRICE_SCALE
    # One fill's fee numerator: rate numerator × term, the term at most order × $0.25 a
    # contract (quadratic: size × p × (1 − p)) or order × FLAT_TERM (flat).
    fee_numerator = 0
    for kind, num, _ in fee_table.tolist():
        term = max_order * (FLAT_TERM if kind == FEE_FLAT else (PRICE_SCALE // 2) ** 2)
        fee_numerator = max(fee_numerator, num * term)
    fee_denominator = max(int(d) for d in fee_table[:, FEE_DEN]) * FEE_TERM_DIVISOR
    capital = initial_cash_e6 + 2 * episode_steps * n_markets * max_cost
    fraction_terms = max(int(x) for x in limits[1:L_PRECISION])
    products = {
        "capital × share": 2 * capital * fraction_terms,
        "cost × share": max_cost * fraction_terms,
        "fee numerator": fee_numerator,
        "fee denominator": fee_denominator,
        "netting": max_cost * max_held,
        "equity ×2": 2 * capital + 2 * n_markets * max_cost * 2,
    }
    for name, value in products.items():
        if value > _INT64_MAX:
            raise ValueError(
                f"these settings overflow the env's 64-bit accounting ({name}); lower the "
                "starting cash, the position limit, the order sizes, the episode length or "
                "the fee/limit fractions' terms"
            )


def limits_array(limits: Any, precision_e4: int = 100) -> np.ndarray:
    """The kernel's ``limits`` array: the :class:`~apps.simulation.portfolio.RiskLimits`
    (exact share fractions) and the account precision (in $0.0001: 100 = $0.01, 1 = $0.0001)."""
    return np.array(
        [
            limits.max_position_e2,
            limits.max_market_share.numerator,
            limits.max_market_share.denominator,
            limits.max_exposure_share.numerator,
            limits.max_exposure_share.denominator,
            check_account_precision(precision_e4) * 100,
        ],
        dtype=np.int64,
    )


class Rules(NamedTuple):
    """A session's trading rules as the kernels read them (after ``pos, acct``)."""

    sizes: np.ndarray  # (5,) order sizes in 0.01 contract
    fee_ids: np.ndarray  # (ticks, n_markets) int32: each market's fee_table row per tick
    fee_table: np.ndarray  # (rows, FEE_COLUMNS) kind, rate numerator, rate denominator
    limits: np.ndarray  # (LIMITS_SIZE,) L_* entries


def trading_rules(
    *,
    fees: FeeIndex,
    times_ns: np.ndarray,
    limits: Any,
    sizes_e2: Sequence[int],
    initial_cash_e6: int,
    episode_steps: int,
    precision_e4: int = 100,
) -> Rules:
    """The kernels' rule arrays for the markets' fee timelines at ``times_ns`` (the ticks),
    the risk limits, the account precision and the five order sizes, after proving
    (:func:`check_int64_bounds`) that nothing can overflow."""
    limit_array = limits_array(limits, precision_e4)
    check_int64_bounds(
        initial_cash_e6=initial_cash_e6,
        limits=limit_array,
        fee_table=fees.table,
        n_markets=len(fees.row_ids),
        episode_steps=episode_steps,
        max_order_e2=max(sizes_e2),
    )
    return Rules(np.array(sizes_e2, dtype=np.int64), fees.ids(times_ns), fees.table, limit_array)


# -- one order ----------------------------------------------------------------------------------


@njit(cache=True, nogil=True)
def _after_fill(
    yes, no, ycost, ncost, realized, is_yes, is_buy, filled, notional, fee_e4, rounding_e6
):
    """Holdings after an order's fills and the cash change (the oracle's
    ``portfolio._after_fill``): cost or proceeds, trade fees and the net rounding fee."""
    if is_buy:
        cash = -notional - fee_e4 * 100 - rounding_e6
        if is_yes:
            yes += filled
            ycost += notional
        else:
            no += filled
            ncost += notional
        pairs = min(yes, no)
        if pairs:
            # Kalshi nets YES against NO: each matched pair is redeemed for $1.
            yes_out = ycost * pairs // yes
            no_out = ncost * pairs // no
            payout = pairs * PRICE_SCALE
            yes -= pairs
            no -= pairs
            ycost -= yes_out
            ncost -= no_out
            realized += payout - yes_out - no_out
            cash += payout
    else:
        cash = notional - fee_e4 * 100 - rounding_e6
        held = yes if is_yes else no
        cost = ycost if is_yes else ncost
        removed = cost * filled // held if held else 0
        if is_yes:
            yes -= filled
            ycost -= removed
        else:
            no -= filled
            ncost -= removed
        realized += notional - removed
    return yes, no, ycost, ncost, realized, cash


@njit(cache=True, nogil=True)
def _decide(px, sz, t, j, action, trusted, pos, acct, sizes, fee_row, limits, rec, margin=0):
    """Evaluate ``action`` for market ``j`` at tick ``t`` (the oracle's ``_Market.decide``),
    its fees from ``fee_row`` (a ``fee_table`` row). ``margin`` (e6) is taken off the cash
    (and so the capital) the limits see after the order: 0 to decide, a cent for the masks'
    shortcut.

    Writes the decision into ``rec`` (a ``fills`` row) and returns its refusal code.
    """
    kind = action // N_SIZES
    size = 0 if kind == 0 or kind == 5 else sizes[action % N_SIZES]
    rec[F_ACTION] = action
    rec[F_TYPE] = kind
    rec[F_SIZE] = size
    rec[F_FILLED] = 0
    rec[F_NOTIONAL] = 0
    rec[F_FEE] = 0
    rec[F_CONTRACT] = 0
    rec[F_SIDE] = 0
    rec[F_CASH] = 0
    rec[F_ROUNDING] = 0
    yes = pos[j, P_YES]
    no = pos[j, P_NO]
    if kind == 0:
        rec[F_REFUSAL] = HOLD
        return HOLD
    if not trusted:
        rec[F_REFUSAL] = UNTRUSTED
        return UNTRUSTED
    if pos[j, P_SETTLED]:
        rec[F_REFUSAL] = CLOSED
        return CLOSED
    # The order: contract (0 YES / 1 NO), side (0 buy / 1 sell), size.
    if kind == 5:  # FLATTEN: after netting only one side is held; sell it
        if yes:
            is_yes, is_buy, order = True, False, yes
        elif no:
            is_yes, is_buy, order = False, False, no
        else:
            rec[F_REFUSAL] = NO_POSITION
            return NO_POSITION
    else:
        is_yes = kind == 1 or kind == 2
        is_buy = kind == 1 or kind == 3
        order = size
    rec[F_CONTRACT] = 0 if is_yes else 1
    rec[F_SIDE] = 0 if is_buy else 1
    if not is_buy and order > (yes if is_yes else no):
        rec[F_REFUSAL] = NOT_HELD
        return NOT_HELD
    # Buying YES takes NO bids at 1 − q; buying NO takes YES bids at 1 − q; sells hit their
    # own side's bids.
    ladder = (1 if is_yes else 0) if is_buy else (0 if is_yes else 1)
    if sz[t, j, ladder, 0] <= 0:
        rec[F_REFUSAL] = NO_LIQUIDITY
        return NO_LIQUIDITY
    # Each level taken is one fill, charged as Kalshi charges it (the fees module docstring):
    # 1. trade fee = rate × term rounded up to $0.0001;
    # 2. the fill's debit (cost, or minus the proceeds, plus the trade fee) rounded up to the
    #    account precision (its balance change floored toward −∞): the excess is a rounding fee;
    # 3. the order's accumulator sums rounding fees and refunds a cent each time it reaches one.
    flat = fee_row[FEE_KIND] == FEE_FLAT
    fee_num = fee_row[FEE_NUM]
    fee_den = fee_row[FEE_DEN] * FEE_TERM_DIVISOR
    precision = limits[L_PRECISION]
    remaining = order
    notional = 0
    fee = 0
    accumulator = 0
    for k in range(px.shape[3]):
        level = sz[t, j, ladder, k]
        if level <= 0:
            break
        price = px[t, j, ladder, k]
        if is_buy:
            price = PRICE_SCALE - price
        take = level if level < remaining else remaining
        money = price * take
        notional += money
        term = take * FLAT_TERM if flat else take * price * (PRICE_SCALE - price)
        trade_fee = 0
        if term > 0 and fee_num > 0:
            trade_fee = -(-(fee_num * term) // fee_den)
        fee += trade_fee
        debit = (money if is_buy else -money) + trade_fee * 100
        accumulator += -(-debit // precision) * precision - debit
        if accumulator >= CENT_E6:
            accumulator -= CENT_E6
        remaining -= take
        if remaining == 0:
            break
    filled = order - remaining
    rec[F_FILLED] = filled
    rec[F_NOTIONAL] = notional
    rec[F_FEE] = fee
    rec[F_ROUNDING] = accumulator
    # Limits, checked in this order; the first breach is reported.
    ycost = pos[j, P_YES_COST]
    ncost = pos[j, P_NO_COST]
    n_yes, n_no, n_ycost, n_ncost, _, cash_delta = _after_fill(
        yes, no, ycost, ncost, 0, is_yes, is_buy, filled, notional, fee, accumulator
    )
    cash_after = acct[A_CASH] + cash_delta - margin
    code = TRADED
    old_cost = ycost + ncost
    new_cost = n_ycost + n_ncost
    total_before = acct[A_EXPOSURE]
    total_after = total_before - old_cost + new_cost
    capital_after = cash_after + total_after
    if cash_after < 0:
        code = CASH
    elif n_yes + n_no > limits[L_MAX_POSITION] and n_yes + n_no > yes + no:
        code = POSITION
    elif new_cost * limits[L_CONC_DEN] > limits[L_CONC_NUM] * capital_after and new_cost > old_cost:
        code = CONCENTRATION
    elif (
        total_after * limits[L_EXP_DEN] > limits[L_EXP_NUM] * capital_after
        and total_after > total_before
    ):
        code = EXPOSURE
    rec[F_REFUSAL] = code
    return code


@njit(cache=True, nogil=True)
def _apply(j, rec, pos, acct):
    """Book a decided fill: holdings, cost basis, netting, cash, fees, realized P&L."""
    filled = rec[F_FILLED]
    if filled == 0:
        return
    yes, no, ycost, ncost, realized, cash_delta = _after_fill(
        pos[j, P_YES],
        pos[j, P_NO],
        pos[j, P_YES_COST],
        pos[j, P_NO_COST],
        pos[j, P_REALIZED],
        rec[F_CONTRACT] == 0,
        rec[F_SIDE] == 0,
        filled,
        rec[F_NOTIONAL],
        rec[F_FEE],
        rec[F_ROUNDING],
    )
    acct[A_EXPOSURE] += ycost + ncost - pos[j, P_YES_COST] - pos[j, P_NO_COST]
    acct[A_CASH] += cash_delta
    rec[F_CASH] = cash_delta
    acct[A_FEES] += rec[F_FEE]
    acct[A_ROUNDING] += rec[F_ROUNDING]
    acct[A_REALIZED] += realized - pos[j, P_REALIZED]
    pos[j, P_YES] = yes
    pos[j, P_NO] = no
    pos[j, P_YES_COST] = ycost
    pos[j, P_NO_COST] = ncost
    pos[j, P_FEES] += rec[F_FEE]
    pos[j, P_ROUNDING] += rec[F_ROUNDING]
    pos[j, P_REALIZED] = realized
    pos[j, P_TOUCHED] = 1


# -- a whole step -------------------------------------------------------------------------------


@njit(cache=True, nogil=True)
def execute_all(px, sz, trusted, pos, acct, sizes, fee_ids, fee_table, limits, t, actions, fills):
    """Carry out one action per market, in market order, against the books at tick ``t``.

    Each market sees the account as the previous markets left it (like calling
    the oracle's ``execute`` market by market). Returns the index of the first action outside
    0..29 (nothing is changed then), or -1. Market ``j`` pays the fees of
    ``fee_table[fee_ids[t, j]]``.
    """
    m = actions.shape[0]
    for j in range(m):
        if actions[j] < 0 or actions[j] >= ACTIONS_PER_MARKET:
            return j
    for j in range(m):
        code = _decide(
            px,
            sz,
            t,
            j,
            actions[j],
            trusted[t, j],
            pos,
            acct,
            sizes,
            fee_table[fee_ids[t, j]],
            limits,
            fills[j],
        )
        if code == TRADED:
            _apply(j, fills[j], pos, acct)
    return -1


@njit(cache=True, nogil=True)
def action_masks(px, sz, trusted, pos, acct, sizes, fee_ids, fee_table, limits, t, out):
    """(n_markets × 30,) True where :func:`execute_all` would trade that action now (HOLD
    always True), for every market against the current account."""
    m = pos.shape[0]
    rec = np.zeros(FILL_COLUMNS, dtype=np.int64)
    by_size = np.argsort(sizes, kind="mergesort")
    out[:] = False
    for j in range(m):
        base = j * ACTIONS_PER_MARKET
        for a in range(N_SIZES):
            out[base + a] = True
        if not trusted[t, j] or pos[j, P_SETTLED]:
            continue
        fee_row = fee_table[fee_ids[t, j]]
        for kind in range(1, 5):
            first = kind * N_SIZES
            is_yes = kind == 1 or kind == 2
            other_held = pos[j, P_NO] if is_yes else pos[j, P_YES]
            if (kind == 1 or kind == 3) and other_held == 0:
                # A buy that does not net: a larger order takes a superset of the levels, so it
                # pays more cost and trade fees and holds more; only its net rounding fee (under
                # a cent) can be smaller. So if the largest passes every rule with a cent less
                # cash and capital, every smaller size passes exactly; else each is evaluated.
                largest = first + by_size[N_SIZES - 1]
                code = _decide(
                    px, sz, t, j, largest, True, pos, acct, sizes, fee_row, limits, rec, CENT_E6
                )
                if code == TRADED:
                    for a in range(first, first + N_SIZES):
                        out[base + a] = True
                    continue
            for a in range(first, first + N_SIZES):
                code = _decide(px, sz, t, j, a, True, pos, acct, sizes, fee_row, limits, rec)
                out[base + a] = code == TRADED
        # FLATTEN ignores the size: evaluate it once.
        flatten = ACTIONS_PER_MARKET - N_SIZES
        code = _decide(px, sz, t, j, flatten, True, pos, acct, sizes, fee_row, limits, rec)
        for a in range(flatten, ACTIONS_PER_MARKET):
            out[base + a] = code == TRADED


@njit(cache=True, nogil=True)
def settle_due(t, times_ns, close_ns, results, values_e4, mid_e4x2, pos, acct, payouts):
    """Settle every unsettled market whose close has come at tick ``t``.

    A known result pays $1/$0 (or the scalar value); an unknown one closes at the last mid
    seen up to ``t`` ($0.50 if there never was one). Writes each settled market's payout
    (e6) into ``payouts`` (-1 elsewhere) and returns how many settled.
    """
    now = times_ns[t]
    count = 0
    for j in range(pos.shape[0]):
        payouts[j] = -1
        if pos[j, P_SETTLED] or now < close_ns[j]:
            continue
        result = results[j]
        if result == RESULT_YES:
            yes_pays = PRICE_SCALE
        elif result == RESULT_NO:
            yes_pays = 0
        elif result == RESULT_SCALAR:
            yes_pays = values_e4[j]
        else:
            yes_pays = 5_000
            for k in range(t, -1, -1):
                if mid_e4x2[k, j] >= 0:
                    yes_pays = mid_e4x2[k, j] // 2
                    break
        cost = pos[j, P_YES_COST] + pos[j, P_NO_COST]
        payout = pos[j, P_YES] * yes_pays + pos[j, P_NO] * (PRICE_SCALE - yes_pays)
        pos[j, P_REALIZED] += payout - cost
        acct[A_REALIZED] += payout - cost
        acct[A_CASH] += payout
        acct[A_EXPOSURE] -= cost
        pos[j, P_YES] = 0
        pos[j, P_NO] = 0
        pos[j, P_YES_COST] = 0
        pos[j, P_NO_COST] = 0
        pos[j, P_SETTLED] = 1
        pos[j, P_TOUCHED] = 1
        payouts[j] = payout
        count += 1
    return count


@njit(cache=True, nogil=True)
def equity_x2(mid_e4x2, t, pos, acct):
    """Twice the equity in $0.000001 at tick ``t``'s marks (the oracle's ``Portfolio.equity_e6x2``):
    a market without a trusted two-sided book is valued at cost."""
    total = 2 * acct[A_CASH]
    for j in range(pos.shape[0]):
        mark = mid_e4x2[t, j]
        if mark >= 0:
            total += pos[j, P_YES] * mark + pos[j, P_NO] * (2 * PRICE_SCALE - mark)
        else:
            total += 2 * (pos[j, P_YES_COST] + pos[j, P_NO_COST])
    return total


# -- the portfolio-dependent features -------------------------------------------------------------


@njit(cache=True, nogil=True)
def _clip32(value):
    v = np.float32(value)
    if v > 1.0:
        return np.float32(1.0)
    if v < -1.0:
        return np.float32(-1.0)
    return v


@njit(cache=True, nogil=True)
def _position_slot(out, base, yes, no, cost, best_yes_e4, best_no_e4, max_position_e2, initial):
    """Features 49–53 of one present market slot (``features`` module docstring).

    ``out[base + 3]`` and ``out[base + 4]`` (has YES / NO bid, already 0 when untrusted) must
    be written first: the mark needs a trusted two-sided book.
    """
    held = yes + no
    out[base + OFF_NET] = _clip32((yes - no) * (1.0 / max_position_e2))
    if held <= 0:
        out[base + OFF_ENTRY] = 0.0
        out[base + OFF_UNREAL_PC] = 0.0
        out[base + OFF_UNREAL] = 0.0
        out[base + OFF_EXPOSURE] = _clip32(cost * (1.0 / initial))
        return
    # cost_e6 / held_e2 is a price in $0.0001 of the held contract.
    entry = cost / held * _TO_DOLLARS
    out[base + OFF_ENTRY] = _clip32(2.0 * entry - 1.0)
    per_contract = 0.0
    if out[base + OFF_HAS_YES] > 0 and out[base + OFF_HAS_NO] > 0:
        yes_mid = (best_yes_e4 - best_no_e4 + PRICE_SCALE) * (0.5 * _TO_DOLLARS)
        mark = yes_mid if yes > 0 else 1.0 - yes_mid
        per_contract = mark - entry
    out[base + OFF_UNREAL_PC] = _clip32(per_contract)
    # per_contract (dollars) × held (0.01 contract) / (share × starting cash in dollars)
    out[base + OFF_UNREAL] = _clip32(
        per_contract * held * (1e4 / (UNREALIZED_CAPITAL_SHARE * initial))
    )
    out[base + OFF_EXPOSURE] = _clip32(cost * (1.0 / initial))


@njit(cache=True, nogil=True)
def _portfolio_block(out, cash, initial, exposure, fees_paid_e4, drawdown, progress):
    base = N_MARKETS * FEATURES_PER_MARKET
    out[base] = _clip32(cash / initial - 1.0)
    out[base + 1] = _clip32(exposure / initial)
    out[base + 2] = _clip32(fees_paid_e4 * 100 / (FEES_CAPITAL_SHARE * initial))
    out[base + 3] = _clip32(drawdown)
    out[base + 4] = _clip32(progress)


@njit(cache=True, nogil=True)
def write_position_features(
    out,
    present,
    yes_held,
    no_held,
    cost,
    best_yes_e4,
    best_no_e4,
    max_position_e2,
    initial,
    cash,
    exposure,
    fees_paid_e4,
    drawdown,
    progress,
):
    """Fill the position and portfolio features of an observation whose per-slot static
    features are already in ``out`` (the :class:`~apps.simulation.features.MarketBatch` path)."""
    for i in range(N_MARKETS):
        if present[i]:
            _position_slot(
                out,
                i * FEATURES_PER_MARKET,
                yes_held[i],
                no_held[i],
                cost[i],
                best_yes_e4[i],
                best_no_e4[i],
                max_position_e2,
                initial,
            )
    _portfolio_block(out, cash, initial, exposure, fees_paid_e4, drawdown, progress)


@njit(cache=True, nogil=True)
def write_env_observation(
    out, static, px, t, pos, acct, max_position_e2, initial, drawdown, progress
):
    """The env's observation at tick ``t``: the precomputed static row (book, history, time,
    flags) plus the position and portfolio features from the account arrays."""
    out[: static.shape[1]] = static[t]
    for j in range(pos.shape[0]):
        _position_slot(
            out,
            j * FEATURES_PER_MARKET,
            pos[j, P_YES],
            pos[j, P_NO],
            pos[j, P_YES_COST] + pos[j, P_NO_COST],
            px[t, j, 0, 0],
            px[t, j, 1, 0],
            max_position_e2,
            initial,
        )
    _portfolio_block(out, acct[A_CASH], initial, acct[A_EXPOSURE], acct[A_FEES], drawdown, progress)


# -- the paper trader's tick --------------------------------------------------------------------


@njit(cache=True, nogil=True)
def tick_marks(px, sz, trusted, out):
    """Twice each market's YES mid in $0.0001 for one tick of books (M, 2, K), -1 without a
    trusted two-sided book: the env's ``_mid_e4x2`` row for that tick."""
    for j in range(px.shape[0]):
        if sz[j, 0, 0] > 0 and sz[j, 1, 0] > 0 and trusted[j]:
            out[j] = px[j, 0, 0] + PRICE_SCALE - px[j, 1, 0]
        else:
            out[j] = -1


@njit(cache=True, nogil=True)
def market_values_x2(mid_e4x2, t, pos, out):
    """Twice each market's holdings value in $0.000001 at tick ``t``'s marks (the terms
    :func:`equity_x2` sums; at cost without a mark)."""
    for j in range(pos.shape[0]):
        mark = mid_e4x2[t, j]
        if mark >= 0:
            out[j] = pos[j, P_YES] * mark + pos[j, P_NO] * (2 * PRICE_SCALE - mark)
        else:
            out[j] = 2 * (pos[j, P_YES_COST] + pos[j, P_NO_COST])


@njit(cache=True, nogil=True)
def mask_bits(masks, out):
    """Each market's (30,) mask as an int, bit ``a`` set when action ``a`` is allowed (how
    the paper trader logs masks)."""
    for j in range(masks.shape[0]):
        bits = 0
        for a in range(masks.shape[1]):
            if masks[j, a]:
                bits |= 1 << a
        out[j] = bits
