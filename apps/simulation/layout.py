"""The simulator's shared layout: every constant that both the compiled kernels and Python read.

One module, so a number is written once: :mod:`apps.simulation.kernel` and
:mod:`apps.simulation.replay` (numba) read these module-level ints as compile-time constants;
the env, the observation builder, the paper trader and the tests read the same names.

* **Units**: prices in $0.0001 (``PRICE_SCALE`` per dollar), sizes in 0.01 contract.
* **Actions**: 6 types × ``N_SIZES`` sizes per market (:mod:`apps.simulation.actions` names
  them).
* **Observation**: ``N_MARKETS`` slots of ``FEATURES_PER_MARKET`` features plus the portfolio
  block (:mod:`apps.simulation.features` documents each feature); the ``OFF_*`` offsets are
  the ones the kernel writes.
* **Account arrays** (int64) the kernel keeps an account in:

  - ``pos`` (n_markets, ``POS_COLUMNS``): YES held, NO held, YES cost, NO cost, trade fees
    paid (e4), realized P&L (e6), settled (0/1), touched (0/1: the market has a position
    record), net rounding fees paid (e6);
  - ``acct`` (``ACCT_SIZE``,): cash (e6), total exposure (e6), trade fees paid (e4), realized
    (e6), net rounding fees paid (e6);
  - ``limits`` (``LIMITS_SIZE``,): max position (e2), concentration share num/den, exposure
    share num/den, account precision (e6: 10_000 = $0.01, 100 = $0.0001);
  - ``fee_table`` (rows, ``FEE_COLUMNS``): kind (``FEE_QUADRATIC`` / ``FEE_FLAT``), rate
    numerator, rate denominator; ``fee_ids`` (ticks, n_markets) picks each market's row at
    each tick (:mod:`apps.simulation.fees`);
  - ``fills`` (n_markets, ``FILL_COLUMNS``), one row per market and step: action id, type,
    decoded size, filled, notional (e6), trade fee (e4), refusal code (``REFUSALS``), contract
    (0 YES, 1 NO), side (0 buy, 1 sell), the cash the fill moved (e6, netting included), the
    order's net rounding fee (e6).

numba's on-disk cache is keyed on each kernel module's own source, not on these values: after
changing one, delete the kernels' cache files (``__pycache__/kernel*.nbi|nbc``) or edit the
kernel module, or an old compiled kernel keeps the old value.
"""

from __future__ import annotations

from apps.marketdata.kalshi.units import PRICE_SCALE, SIZE_SCALE

__all__ = ["PRICE_SCALE", "SIZE_SCALE"]  # re-exported: the kernels read them from here

BOOK_LEVELS = 10  # bid levels per side the env stores, the fills walk and the features read

# -- actions --------------------------------------------------------------------------------
N_ACTION_TYPES = 6  # HOLD, BUY_YES, SELL_YES, BUY_NO, SELL_NO, FLATTEN
N_SIZES = 5
ACTIONS_PER_MARKET = N_ACTION_TYPES * N_SIZES  # 30

# -- observation ----------------------------------------------------------------------------
N_MARKETS = 10
DEPTH_LEVELS = 5  # per-level sizes and gaps shown for the top 5 levels
HISTORY_WINDOWS = (1, 5, 30, 300)  # steps
VOL_WINDOW = 30  # steps of 1-step mid changes
CHANGE_WINDOW = 5  # steps for spread and depth changes
HISTORY_NAMES: tuple[str, ...] = (
    *(f"mid_change_{w}" for w in HISTORY_WINDOWS),
    *(f"updates_{w}" for w in HISTORY_WINDOWS),
    f"mid_vol_{VOL_WINDOW}",
    f"spread_change_{CHANGE_WINDOW}",
    f"yes_depth_change_{CHANGE_WINDOW}",
    f"no_depth_change_{CHANGE_WINDOW}",
)
N_HISTORY = len(HISTORY_NAMES)  # 12 raw values per market
MARKET_FEATURE_NAMES: tuple[str, ...] = (
    "present",
    "trusted",
    "open",
    "has_yes_bid",
    "has_no_bid",
    "mid",
    "spread",
    "yes_bid",
    "yes_ask",
    "no_bid",
    "no_ask",
    "microprice_offset",
    "imbalance_1",
    *(f"yes_size_{i}" for i in range(1, DEPTH_LEVELS + 1)),
    *(f"no_size_{i}" for i in range(1, DEPTH_LEVELS + 1)),
    *(f"yes_gap_{i}" for i in range(2, DEPTH_LEVELS + 1)),
    *(f"no_gap_{i}" for i in range(2, DEPTH_LEVELS + 1)),
    "imbalance_5",
    f"imbalance_{BOOK_LEVELS}",
    f"yes_depth_{BOOK_LEVELS}",
    f"no_depth_{BOOK_LEVELS}",
    *HISTORY_NAMES,
    "time_to_close_log",
    "time_to_close_1h",
    "net_position",
    "avg_entry",
    "unrealized_per_contract",
    "unrealized",
    "exposure",
)
PORTFOLIO_FEATURE_NAMES: tuple[str, ...] = ("cash", "exposure", "fees_paid", "drawdown", "progress")
FEATURES_PER_MARKET = len(MARKET_FEATURE_NAMES)  # 54
PORTFOLIO_FEATURES = len(PORTFOLIO_FEATURE_NAMES)  # 5
N_FEATURES = N_MARKETS * FEATURES_PER_MARKET + PORTFOLIO_FEATURES  # 545
# The offsets the kernel writes (position features) or reads (has a bid on each side).
OFF_HAS_YES = MARKET_FEATURE_NAMES.index("has_yes_bid")
OFF_HAS_NO = MARKET_FEATURE_NAMES.index("has_no_bid")
OFF_NET = MARKET_FEATURE_NAMES.index("net_position")
OFF_ENTRY = MARKET_FEATURE_NAMES.index("avg_entry")
OFF_UNREAL_PC = MARKET_FEATURE_NAMES.index("unrealized_per_contract")
OFF_UNREAL = MARKET_FEATURE_NAMES.index("unrealized")
OFF_EXPOSURE = MARKET_FEATURE_NAMES.index("exposure")
UNREALIZED_CAPITAL_SHARE = 0.10  # unrealized P&L is shown over 10 % of the starting cash
FEES_CAPITAL_SHARE = 0.01  # fees paid are shown over 1 % of the starting cash

# -- account arrays -------------------------------------------------------------------------
# pos columns
P_YES, P_NO, P_YES_COST, P_NO_COST, P_FEES, P_REALIZED, P_SETTLED, P_TOUCHED, P_ROUNDING = range(9)
POS_COLUMNS = 9
# acct entries
A_CASH, A_EXPOSURE, A_FEES, A_REALIZED, A_ROUNDING = range(5)
ACCT_SIZE = 5
# limits entries
L_MAX_POSITION, L_CONC_NUM, L_CONC_DEN, L_EXP_NUM, L_EXP_DEN, L_PRECISION = range(6)
LIMITS_SIZE = 6
# fee_table columns and kinds
FEE_KIND, FEE_NUM, FEE_DEN = range(3)
FEE_COLUMNS = 3
FEE_QUADRATIC, FEE_FLAT = 0, 1
# fills columns
(
    F_ACTION,
    F_TYPE,
    F_SIZE,
    F_FILLED,
    F_NOTIONAL,
    F_FEE,
    F_REFUSAL,
    F_CONTRACT,
    F_SIDE,
    F_CASH,
    F_ROUNDING,
) = range(11)
FILL_COLUMNS = 11

# Refusal codes (``fills[:, F_REFUSAL]``) and their logged names (None = traded).
TRADED, HOLD, UNTRUSTED, CLOSED, NOT_HELD, NO_POSITION, NO_LIQUIDITY = range(7)
CASH, POSITION, CONCENTRATION, EXPOSURE = range(7, 11)
REFUSALS: tuple[str | None, ...] = (
    None,
    "hold",
    "untrusted",
    "closed",
    "not_held",
    "no_position",
    "no_liquidity",
    "cash",
    "position",
    "concentration",
    "exposure",
)

# Settlement codes of a market's known result (-1: unknown, close at the last mid).
RESULT_UNKNOWN, RESULT_YES, RESULT_NO, RESULT_SCALAR = -1, 0, 1, 2
