"""The account-independent features of one tick, compiled: the paper trader's per-decision path.

:func:`apps.simulation.features.static_features` computes offsets 0–48 of every slot with
elementwise numpy, once over a whole recorded history for the env (a few dozen array
operations amortised over 10⁵ ticks). Called per decision on ten slots, the same operations
cost ~100 µs of numpy call overhead, most of a live decision. :func:`tick_static_features`
does the same arithmetic for a handful of slots in two compiled loops, in the same order and
with the same float64 operations (including the signs of zeros), so it writes the same bits;
the logarithms in between are numpy's own ``log1p``, the function the env's precompute uses.
``tests/simulation/test_features.py`` compares the two bit for bit on random books, and the
env/paper parity tests compare whole observations.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from apps.simulation.layout import (
    DEPTH_LEVELS,
    FEATURES_PER_MARKET,
    HISTORY_NAMES,
    MARKET_FEATURE_NAMES,
    N_HISTORY,
    PRICE_SCALE,
    SIZE_SCALE,
)

_C = {name: i for i, name in enumerate(MARKET_FEATURE_NAMES)}
O_HAS_YES = _C["has_yes_bid"]
O_MID = _C["mid"]
O_YES_BID = _C["yes_bid"]
O_MICRO = _C["microprice_offset"]
O_IMB_1 = _C["imbalance_1"]
O_SIZES = _C["yes_size_1"]  # yes_size_1..5 then no_size_1..5
O_GAPS = _C["yes_gap_2"]  # yes_gap_2..5 then no_gap_2..5
O_IMB_5 = _C["imbalance_5"]  # imbalance_5, imbalance_10
O_DEPTH = _C["yes_depth_10"]  # yes_depth_10, no_depth_10
O_HIST = _C[HISTORY_NAMES[0]]
O_TIME = _C["time_to_close_log"]  # time_to_close_log, time_to_close_1h
TOP = DEPTH_LEVELS
# Columns of the log1p inputs per slot: 5 YES sizes, 5 NO sizes, YES and NO depth over all
# levels, the four update counts, the seconds to close.
L_SIZES, L_DEPTH, L_UPDATES, L_SECONDS = 0, 2 * TOP, 2 * TOP + 2, 2 * TOP + 6
LOG_COLUMNS = 2 * TOP + 7
_PRICE_TO_DOLLARS = 1.0 / PRICE_SCALE
_SIZE_TO_CONTRACTS = 1.0 / SIZE_SCALE
_TINY = 1e-12


@njit(cache=True, nogil=True)
def _log_inputs(sz, history, seconds_to_close, logs):
    """The values :func:`tick_static_features` takes log1p of, per slot."""
    for s in range(sz.shape[0]):
        for side in range(2):
            cum = 0.0
            for k in range(sz.shape[2]):
                size = sz[s, side, k] * _SIZE_TO_CONTRACTS
                cum = size if k == 0 else cum + size  # numpy's cumsum, in order
                if k < TOP:
                    logs[s, L_SIZES + side * TOP + k] = size
            logs[s, L_DEPTH + side] = cum
        for k in range(4):
            logs[s, L_UPDATES + k] = history[s, 4 + k]
        seconds = seconds_to_close[s]
        logs[s, L_SECONDS] = seconds if seconds > 0.0 else 0.0


@njit(cache=True, nogil=True)
def _rows(px, sz, history, trusted, present, is_open, seconds_to_close, logs, k, out):
    """Write offsets 0–48 (float32, clipped; 49–53 zero) of every slot; True if any is NaN.

    ``k`` holds the scales: [10/spread, 0.5/microprice, 1/gap, 1/level-size log,
    1/total-depth log, 1/time log, 1/near seconds, then 12 history inverses, then 4 update
    inverses].
    """
    f = np.zeros(FEATURES_PER_MARKET)
    nan = False
    for s in range(px.shape[0]):
        t = 1.0 if trusted[s] else 0.0
        p = 1.0 if present[s] else 0.0
        yes_bid = px[s, 0, 0] * _PRICE_TO_DOLLARS
        no_bid = px[s, 1, 0] * _PRICE_TO_DOLLARS
        has_yes = 1.0 if sz[s, 0, 0] > 0 else 0.0
        has_no = 1.0 if sz[s, 1, 0] > 0 else 0.0
        two = 1.0 if (has_yes > 0.0 and has_no > 0.0) else 0.0
        f[0] = 1.0
        f[1] = t
        f[2] = 1.0 if is_open[s] else 0.0
        f[O_HAS_YES] = has_yes
        f[O_HAS_YES + 1] = has_no
        f[O_MID] = (yes_bid - no_bid) * two
        spread = (1.0 - yes_bid - no_bid) * two
        f[O_MID + 1] = spread * k[0]
        yes_b = (2.0 * yes_bid - 1.0) * has_yes
        no_b = (2.0 * no_bid - 1.0) * has_no
        f[O_YES_BID] = yes_b
        f[O_YES_BID + 1] = -no_b
        f[O_YES_BID + 2] = no_b
        f[O_YES_BID + 3] = -yes_b
        # Size imbalance over the best level, the top 5 and all levels (cumulative sizes).
        for i, depth in enumerate((0, TOP - 1, sz.shape[2] - 1)):
            cum_yes = 0.0
            cum_no = 0.0
            for level in range(depth + 1):
                y = sz[s, 0, level] * _SIZE_TO_CONTRACTS
                n = sz[s, 1, level] * _SIZE_TO_CONTRACTS
                cum_yes = y if level == 0 else cum_yes + y
                cum_no = n if level == 0 else cum_no + n
            total = cum_yes + cum_no
            imbalance = (cum_yes - cum_no) / (total if total > _TINY else _TINY)
            if i == 0:
                f[O_MICRO] = spread * imbalance * k[1]
                f[O_IMB_1] = imbalance
            else:
                f[O_IMB_5 + i - 1] = imbalance
        for side in range(2):
            f[O_DEPTH + side] = logs[s, L_DEPTH + side] * k[4]
            best = px[s, side, 0] * _PRICE_TO_DOLLARS
            for level in range(TOP):
                f[O_SIZES + side * TOP + level] = logs[s, L_SIZES + side * TOP + level] * k[3]
                if level > 0:
                    gap = 1.0
                    if sz[s, side, level] > 0:
                        gap = (best - px[s, side, level] * _PRICE_TO_DOLLARS) * k[2]
                    f[O_GAPS + side * (TOP - 1) + level - 1] = gap
        for h in range(N_HISTORY):
            f[O_HIST + h] = history[s, h] * k[7 + h]
        for h in range(4):
            f[O_HIST + 4 + h] = logs[s, L_UPDATES + h] * k[7 + N_HISTORY + h]
        for c in range(O_HAS_YES, O_HIST + N_HISTORY):
            f[c] *= t  # a stale book must not look informative
        seconds = seconds_to_close[s]
        seconds = seconds if seconds > 0.0 else 0.0
        f[O_TIME] = logs[s, L_SECONDS] * k[5]
        f[O_TIME + 1] = seconds * k[6]
        for c in range(FEATURES_PER_MARKET):
            v = f[c] * p  # absent slots are all zeros
            if np.isnan(v):
                nan = True
            v32 = np.float32(v)
            if v32 > 1.0:
                v32 = np.float32(1.0)
            elif v32 < -1.0:
                v32 = np.float32(-1.0)
            out[s, c] = v32
            f[c] = 0.0
    return nan


def tick_static_features(
    px: np.ndarray,
    sz: np.ndarray,
    history: np.ndarray,
    trusted: np.ndarray,
    present: np.ndarray,
    is_open: np.ndarray,
    seconds_to_close: np.ndarray,
    scales: np.ndarray,
    out: np.ndarray,
) -> bool:
    """Offsets 0–48 of S slots into ``out`` (S, FEATURES_PER_MARKET) float32 (49–53 zero), as
    ``features.static_features`` computes them; returns True if a feature came out NaN.

    Args:
        px, sz: (S, 2, K) int64 bid prices and sizes.
        history: (S, N_HISTORY) float64 raw history values.
        trusted, present, is_open: (S,) bool.
        seconds_to_close: (S,) float64.
        scales: the constants listed in :func:`_rows` (``features`` owns them).
        out: (S, FEATURES_PER_MARKET) float32.
    """
    logs = np.empty((px.shape[0], LOG_COLUMNS))
    _log_inputs(sz, history, seconds_to_close, logs)
    np.log1p(logs, out=logs)
    return _rows(px, sz, history, trusted, present, is_open, seconds_to_close, logs, scales, out)
