"""Seeded synthetic histories with the same layout as recorded ones (for tests, benchmarks,
and trying the env without a recording). Pure numpy, no database."""

from __future__ import annotations

import numpy as np

from apps.simulation.history import DEFAULT_LEVELS, MarketQuality, RecordedHistory

NS = 1_000_000_000


def synthetic_history(
    *,
    markets: int = 3,
    ticks: int = 2_000,
    levels: int = DEFAULT_LEVELS,
    step_s: float = 1.0,
    start_ns: int = 1_790_000_000 * NS,
    untrusted_share: float = 0.0,
    seed: int = 0,
) -> RecordedHistory:
    """Books around a random-walk mid: ``levels`` bids a side, 1-cent ticks, sizes 1-500
    contracts; ``untrusted_share`` of the ticks fall in untrusted stretches (as after gaps)."""
    rng = np.random.default_rng(seed)
    step_ns = int(step_s * NS)
    times = start_ns + np.arange(ticks, dtype=np.int64) * step_ns
    shape = (ticks, markets, levels)
    # Mid in cents, a bounded random walk; spread 1-3 cents.
    steps = rng.choice([-1, 0, 0, 0, 1], size=(ticks, markets))
    mid = np.clip(50 + np.cumsum(steps, axis=0), 10, 90)
    spread = rng.integers(1, 4, size=(ticks, markets))
    yes_best = mid - (spread + 1) // 2
    yes_ask = yes_best + spread
    offsets = np.arange(levels)
    yes_px = (yes_best[..., None] - offsets) * 100
    no_px = (100 - yes_ask[..., None] - offsets) * 100
    yes_sz = rng.integers(1, 501, size=shape) * 100
    no_sz = rng.integers(1, 501, size=shape) * 100
    # Levels must stay inside (0, $1): drop the ones that fall off the grid.
    yes_sz[yes_px <= 0] = 0
    no_sz[no_px <= 0] = 0
    yes_px[yes_px <= 0] = 0
    no_px[no_px <= 0] = 0
    trusted = np.ones((ticks, markets), dtype=bool)
    if untrusted_share > 0:
        for j in range(markets):
            bad = 0
            while bad < untrusted_share * ticks:
                start = int(rng.integers(0, ticks))
                length = int(rng.integers(5, 30))
                trusted[start : start + length, j] = False
                bad = int((~trusted[:, j]).sum())
    for arr in (yes_px, no_px, yes_sz, no_sz):
        arr[~trusted] = 0
    updates = rng.poisson(5, size=(ticks, markets)).astype(np.int32)
    tickers = [f"KXSYN-SIM-M{j:02d}" for j in range(markets)]
    return RecordedHistory(
        markets=tickers,
        times_ns=times,
        yes_px=yes_px.astype(np.int32),
        yes_sz=yes_sz.astype(np.int64),
        no_px=no_px.astype(np.int32),
        no_sz=no_sz.astype(np.int64),
        trusted=trusted,
        updates=updates,
        quality={t: MarketQuality() for t in tickers},
        step_ns=step_ns,
    )
