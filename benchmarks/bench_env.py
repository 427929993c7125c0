"""Benchmark: KalshiTradingEnv steps/s against CartPole-v1, and the history load against a raw COPY.

Run from anywhere: ``.venv/bin/python benchmarks/bench_env.py [--delta-rows N] [--profile]``.

Part 1, the env (no database). Synthetic histories with 10 book levels a side; every step
takes one random *valid* action per market (drawn from ``action_masks()``). Measured in the
same process, best of ``--repeat`` runs:

  (a) ``env.step`` alone, for 1 and for 10 markets;
  (b) ``env.action_masks()`` + ``env.step`` (what a MaskablePPO rollout pays per step);
  (c) the baseline: ``gymnasium.make("CartPole-v1").step`` with pre-drawn actions.

Only the calls named are inside the clock (drawing actions and resets are not), for both.
Target: our step costs at most 5x CartPole's for 10 markets. ``--profile`` adds a cProfile
of ``env.step`` for 10 markets and of one history load (top functions by own time).

Part 2, the history load (PostgreSQL). A scratch database (``--db``, default
``kalshiflow_bench_env``; dropped at the end) is migrated and filled through psycopg ``COPY``
with one recording connection: per market a ``ws`` snapshot (``as_of_sid=1``) just before the
window, then ``--delta-rows`` deltas across 10 markets that keep every book valid (pairs of
+a / -a at an existing level, and removal / re-adding of whole levels, 60 % of them in the
top 10), spread over ``--hours`` of receive time on one shared sid. Measured:

  (d) the baseline: the loader's own ``COPY (SELECT ...) TO STDOUT (FORMAT BINARY)`` of those
      delta rows, read to the end and discarded (a separate psycopg connection);
  (e) ``loader.load(markets, start, end, step_s=--step-s, use_cache=False)``: rows/s are the
      delta rows over the whole load (snapshots, counts, replay, arrays);
  (f) peak memory of one more load under ``tracemalloc`` (and the peak-RSS rise of a timed
      load, from ``/proc/self/status`` VmHWM), against the size of the final arrays.

Part 3, the load from many partitions (issue 16). The recorded tables are time partitions on
PostgreSQL (``apps/marketdata/partitions.py``); part 2's rows sit in one. A second recording
(other markets, ``--delta-rows`` rows over ``--partitioned-hours``, default 96 h) is spread
over daily partitions by ``partitions.ensure`` (which moves the rows out of the default
partition), then (d) and (e) are measured again on it, in this run, with the clock step
scaled so that the arrays have part 2's number of ticks.

Each load is checked: every delta applied, no book error, every book trusted, and at >= 90 %
of the (tick, market) cells the sampled top 10 equal the model book (pairs restore it).
Targets: load >= 0.3x raw COPY (0.5x over several partitions), peak <= 3x the arrays. The
last line printed is one JSON object with the figures (units in the key names).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import cProfile
import io
import json
import pstats
import time
import tracemalloc
from datetime import UTC, datetime, timedelta
from typing import Any

import gymnasium
import numpy as np
import psycopg

from apps.simulation.env import EnvConfig, KalshiTradingEnv
from apps.simulation.synthetic import synthetic_history
from benchmarks.scratchdb import drop_scratch_database, setup_scratch_django

TARGET_RATIO_VS_CARTPOLE = 5.0
TARGET_LOAD_RATIO_VS_COPY = 0.3
TARGET_PARTITIONED_LOAD_RATIO_VS_COPY = 0.5
TARGET_PEAK_RATIO_VS_ARRAYS = 3.0
N_MARKETS = 10
LADDER_LEVELS = 30  # levels a side in the generated books
MB = 1024 * 1024
WINDOW_START = datetime(2026, 10, 8, 0, 0, tzinfo=UTC)


# -- part 1: the env ----------------------------------------------------------------------------


def _valid_actions(env: KalshiTradingEnv, mask: np.ndarray, rng: np.random.Generator) -> list:
    rows = mask.reshape(env.n_markets, -1)
    return [int(rng.choice(np.flatnonzero(row))) for row in rows]


def env_rates(markets: int, *, seconds: float, repeat: int, seed: int = 0) -> dict[str, float]:
    """Best-of-``repeat`` step and mask+step rates for random valid play on ``markets``."""
    history = synthetic_history(markets=markets, ticks=5_000, levels=10, seed=seed)
    env = KalshiTradingEnv(history, config=EnvConfig(episode_steps=1_000))
    rng = np.random.default_rng(seed)
    env.reset(seed=seed)
    clock = time.perf_counter
    best_step = best_mask = float("inf")
    for _ in range(repeat):
        step_s = mask_s = 0.0
        steps = 0
        deadline = clock() + seconds
        while clock() < deadline:
            t0 = clock()
            mask = env.action_masks()
            t1 = clock()
            actions = _valid_actions(env, mask, rng)
            t2 = clock()
            _, _, terminated, truncated, _ = env.step(actions)
            t3 = clock()
            step_s += t3 - t2
            mask_s += t1 - t0
            steps += 1
            if terminated or truncated:
                env.reset()
        best_step = min(best_step, step_s / steps)
        best_mask = min(best_mask, mask_s / steps)
    return {
        "step_us": best_step * 1e6,
        "mask_us": best_mask * 1e6,
        "steps_per_s": 1 / best_step,
        "masked_steps_per_s": 1 / (best_step + best_mask),
    }


def cartpole_step_us(*, seconds: float, repeat: int, seed: int = 0) -> float:
    """Best-of-``repeat`` microseconds per ``CartPole-v1`` step (``gymnasium.make`` wrappers)."""
    env = gymnasium.make("CartPole-v1")
    env.reset(seed=seed)
    actions = np.random.default_rng(seed).integers(0, 2, size=1_000_000).tolist()
    clock = time.perf_counter
    best = float("inf")
    i = 0
    for _ in range(repeat):
        step_s = 0.0
        steps = 0
        deadline = clock() + seconds
        while clock() < deadline:
            action = actions[i % len(actions)]
            i += 1
            t0 = clock()
            _, _, terminated, truncated, _ = env.step(action)
            step_s += clock() - t0
            steps += 1
            if terminated or truncated:
                env.reset()
        best = min(best, step_s / steps)
    return best * 1e6


def profile_env_step(*, markets: int = N_MARKETS, steps: int = 3_000, top: int = 18) -> str:
    """cProfile of ``env.step`` alone (masks drawn outside the profile), top functions."""
    history = synthetic_history(markets=markets, ticks=5_000, levels=10, seed=1)
    env = KalshiTradingEnv(history, config=EnvConfig(episode_steps=1_000))
    rng = np.random.default_rng(1)
    env.reset(seed=1)
    profiler = cProfile.Profile()
    for _ in range(steps):
        plan = _valid_actions(env, env.action_masks(), rng)
        profiler.enable()
        _, _, terminated, truncated, _ = env.step(plan)
        profiler.disable()
        if terminated or truncated:
            env.reset()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
    return out.getvalue()


# -- part 2: the history load -------------------------------------------------------------------


def model_books(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Per market and side (YES=0, NO=1), LADDER_LEVELS bid prices (best first) and sizes.

    YES bids sit 1 cent apart below a mid of 20-80 cents and NO bids likewise below 1 - mid,
    so the book is never crossed; sizes are 1-1000 contracts.
    """
    prices = np.zeros((N_MARKETS, 2, LADDER_LEVELS), dtype=np.int64)
    mids = rng.integers(20, 81, size=N_MARKETS)
    steps = np.arange(LADDER_LEVELS) * 100
    prices[:, 0] = (mids[:, None] - 1) * 100 - steps
    prices[:, 1] = (100 - mids[:, None] - 1) * 100 - steps
    prices = np.maximum(prices, 0)
    sizes = rng.integers(1, 1_001, size=prices.shape) * 100
    sizes[prices <= 0] = 0
    return prices, sizes


def delta_rows(
    prices: np.ndarray, sizes: np.ndarray, count: int, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """``count`` deltas as pairs that each leave the book as it was (so every one is valid).

    A pair is +a then -a at an existing level (90 %) or the removal of a whole level and its
    return (10 %); 60 % of the pairs hit the top 10 levels.
    """
    pairs = count // 2
    market = rng.integers(0, N_MARKETS, size=pairs)
    side = rng.integers(0, 2, size=pairs)
    top = rng.random(pairs) < 0.6
    level = np.where(top, rng.integers(0, 10, size=pairs), rng.integers(0, LADDER_LEVELS, pairs))
    # Only levels that exist (size > 0); the generated ladders never run out before level 10.
    level = np.where(sizes[market, side, level] > 0, level, 0)
    base = sizes[market, side, level]
    amount = rng.integers(1, 501, size=pairs) * 100
    removal = rng.random(pairs) < 0.1
    first = np.where(removal, -base, amount)
    return {
        "market": np.repeat(market, 2),
        "is_yes": np.repeat(side == 0, 2),
        "price_e4": np.repeat(prices[market, side, level], 2),
        "delta_e2": np.column_stack((first, -first)).reshape(-1),
    }


def write_recording(
    dsn: str, *, markets: list[str], rows: int, hours: float, seed: int
) -> tuple[np.ndarray, np.ndarray, datetime]:
    """Fill the scratch database; returns the model books and the end of the window."""
    from apps.marketdata.models import RecordingConnection

    rng = np.random.default_rng(seed)
    prices, sizes = model_books(rng)
    deltas = delta_rows(prices, sizes, rows, rng)
    n = deltas["market"].shape[0]
    spacing_us = hours * 3_600e6 / n
    offsets_us = (np.arange(n) * spacing_us).astype(np.int64)
    connection_id = RecordingConnection.objects.create(
        exchange="local", ws_url="ws://bench", opened_at=WINDOW_START - timedelta(seconds=2)
    ).id
    snapshot_at = WINDOW_START - timedelta(seconds=1)
    with psycopg.connect(dsn) as conn:
        with conn.cursor() as cursor:
            for j, market in enumerate(markets):
                # Stored ascending by price, as the recorder stores them.
                levels = [
                    [
                        [int(p), int(s)]
                        for p, s in zip(prices[j, k][::-1], sizes[j, k][::-1], strict=True)
                        if s > 0
                    ]
                    for k in (0, 1)
                ]
                cursor.execute(
                    "INSERT INTO rl_orderbook_snapshots (connection_id, market_ticker, sid, seq,"
                    " yes_levels, no_levels, received_at, source, as_of_sid, as_of_seq)"
                    " VALUES (%s, %s, 1, %s, %s, %s, %s, 'ws', 1, %s)",
                    [
                        connection_id,
                        market,
                        j + 1,
                        json.dumps(levels[0]),
                        json.dumps(levels[1]),
                        snapshot_at,
                        j + 1,
                    ],
                )
        statement = (
            "COPY rl_orderbook_deltas (connection_id, market_ticker, sid, seq, side, price_e4,"
            " delta_e2, exchange_ts, received_at) FROM STDIN (FORMAT BINARY)"
        )
        names = markets
        market_col = deltas["market"].tolist()
        yes_col = deltas["is_yes"].tolist()
        price_col = deltas["price_e4"].tolist()
        delta_col = deltas["delta_e2"].tolist()
        offset_col = offsets_us.tolist()
        with conn.cursor() as cursor, cursor.copy(statement) as copy:
            copy.set_types(
                [
                    "uuid",
                    "text",
                    "int8",
                    "int8",
                    "text",
                    "int4",
                    "int8",
                    "timestamptz",
                    "timestamptz",
                ]
            )
            for i in range(n):
                at = WINDOW_START + timedelta(microseconds=offset_col[i])
                copy.write_row(
                    (
                        connection_id,
                        names[market_col[i]],
                        1,
                        N_MARKETS + 1 + i,
                        "yes" if yes_col[i] else "no",
                        price_col[i],
                        delta_col[i],
                        at,
                        at,
                    )
                )
        conn.execute("ANALYZE rl_orderbook_deltas")
        conn.commit()
    end = WINDOW_START + timedelta(microseconds=int(offsets_us[-1]) + 1)
    return prices, sizes, end


def raw_copy(dsn: str, markets: list[str], first: datetime, end: datetime) -> tuple[float, int]:
    """Seconds and bytes for the loader's delta COPY, drained and discarded."""
    from apps.simulation.loader import delta_copy_query

    query = delta_copy_query(markets, first, end)  # the very COPY the loader streams
    with psycopg.connect(dsn) as conn:
        conn.execute("SELECT 1")  # connected before the clock starts
        started = time.perf_counter()
        size = 0
        with conn.cursor() as cursor, cursor.copy(query) as copy:
            for block in copy:
                size += len(block)
        return time.perf_counter() - started, size


def _vm_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    except OSError:
        return False
    return True


def check_history(history: Any, prices: np.ndarray, sizes: np.ndarray, rows: int) -> None:
    quality = history.quality_report()
    applied = sum(q["deltas_applied"] for q in quality.values())
    errors = sum(q["book_errors"] + q["crossed"] for q in quality.values())
    if applied != rows or errors or not history.trusted.all():
        raise RuntimeError(f"load is wrong: applied {applied} of {rows}, report {quality}")
    k = 10
    same = (history.yes_px == prices[None, :, 0, :k]).all(axis=2)
    same &= (history.yes_sz == sizes[None, :, 0, :k]).all(axis=2)
    same &= (history.no_px == prices[None, :, 1, :k]).all(axis=2)
    same &= (history.no_sz == sizes[None, :, 1, :k]).all(axis=2)
    if same.mean() < 0.9:
        raise RuntimeError(f"only {same.mean():.1%} of the sampled books match the model")


def measure_load(
    dsn: str,
    *,
    rows: int,
    hours: float,
    step_s: float,
    repeat: int,
    seed: int,
    profile: bool = False,
    partitioned: bool = False,
) -> dict[str, Any]:
    from apps.marketdata import partitions
    from apps.simulation.loader import load

    prefix = "KXBENCHP" if partitioned else "KXBENCH"
    markets = [f"{prefix}-26OCT08-M{j:02d}" for j in range(N_MARKETS)]
    started = time.perf_counter()
    prices, sizes, end = write_recording(dsn, markets=markets, rows=rows, hours=hours, seed=seed)
    elapsed = time.perf_counter() - started
    print(f"  wrote {rows:,} delta rows + {N_MARKETS} snapshots in {elapsed:.1f} s")
    spanned = 1
    if partitioned:
        started = time.perf_counter()
        partitions.ensure(start=WINDOW_START - timedelta(seconds=1), now=end, ahead=0)
        with psycopg.connect(dsn) as conn:
            conn.execute("ANALYZE rl_orderbook_deltas")
        counts = partitions.partitions("rl_orderbook_deltas", count=True)
        spanned = sum(1 for p in counts if p.rows and not p.is_default)
        print(
            f"  spread over {spanned} daily partitions in {time.perf_counter() - started:.1f} s: "
            + ", ".join(f"{p.name} {p.rows:,}" for p in counts if p.rows)
        )
    first = WINDOW_START - timedelta(seconds=1)  # the snapshots: where the loader starts reading

    best_raw = float("inf")
    for attempt in range(1, repeat + 1):
        seconds, size = raw_copy(dsn, markets, first, end)
        best_raw = min(best_raw, seconds)
        print(f"  raw COPY run {attempt}: {rows / seconds:>12,.0f} rows/s ({size / MB:.1f} MB)")

    def one_load() -> Any:
        return load(markets, WINDOW_START, end, step_s=step_s, use_cache=False, progress=False)

    best_load = float("inf")
    rss_rise_mb = None
    history = None
    for attempt in range(1, repeat + 1):
        history = None  # drop the previous arrays before measuring
        rss_before = _vm_kb("VmRSS")
        tracked = _reset_peak_rss()
        started = time.perf_counter()
        history = one_load()
        seconds = time.perf_counter() - started
        peak = _vm_kb("VmHWM")
        if tracked and rss_before is not None and peak is not None:
            rise = (peak - rss_before) / 1024
            rss_rise_mb = rise if rss_rise_mb is None else max(rss_rise_mb, rise)
        check_history(history, prices, sizes, rows)
        best_load = min(best_load, seconds)
        print(f"  load run {attempt}:     {rows / seconds:>12,.0f} rows/s ({seconds:.2f} s)")
    arrays_mb = history.nbytes() / MB
    ticks = history.n_ticks
    history = None

    tracemalloc.start()
    traced = one_load()
    _, peak_bytes = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    check_history(traced, prices, sizes, rows)
    traced = None
    if profile:
        profiler = cProfile.Profile()
        profiler.enable()
        one_load()
        profiler.disable()
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(18)
        print("cProfile of one load (top functions by own time):")
        print(out.getvalue())
    return {
        "delta_rows": rows,
        "partitions": spanned,
        "ticks": ticks,
        "raw_copy_rows_per_s": rows / best_raw,
        "load_rows_per_s": rows / best_load,
        "load_peak_mb": peak_bytes / MB,
        "load_rss_rise_mb": rss_rise_mb,
        "arrays_mb": arrays_mb,
    }


# -- the run ---------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="clock per env run")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--delta-rows", type=int, default=1_000_000)
    parser.add_argument("--hours", type=float, default=6.0, help="receive-time span of the rows")
    parser.add_argument("--step-s", type=float, default=1.0, help="history clock step")
    parser.add_argument(
        "--partitioned-hours",
        type=float,
        default=96.0,
        help="receive-time span of part 3's rows (daily partitions)",
    )
    parser.add_argument(
        "--profile", action="store_true", help="also cProfile env.step (10 markets) and a load"
    )
    parser.add_argument("--server", default="postgres://postgres@127.0.0.1:5432")
    parser.add_argument("--db", default="kalshiflow_bench_env")
    args = parser.parse_args()

    print("env steps (random valid actions, 10 book levels):")
    one = env_rates(1, seconds=args.seconds, repeat=args.repeat)
    ten = env_rates(N_MARKETS, seconds=args.seconds, repeat=args.repeat)
    cartpole_us = cartpole_step_us(seconds=args.seconds, repeat=args.repeat)
    print(f"{'':<26} {'step us':>9} {'mask us':>9} {'steps/s':>10} {'x CartPole':>11}")
    for name, r in (("1 market", one), ("10 markets", ten)):
        print(
            f"{name:<26} {r['step_us']:>9.1f} {r['mask_us']:>9.1f} {r['steps_per_s']:>10,.0f}"
            f" {r['step_us'] / cartpole_us:>11.1f}"
        )
    print(f"{'CartPole-v1 (make)':<26} {cartpole_us:>9.1f} {'':>9} {1e6 / cartpole_us:>10,.0f}")
    ratio_10 = ten["step_us"] / cartpole_us
    masked_ratio_10 = (ten["step_us"] + ten["mask_us"]) / cartpole_us
    print(
        f"10 markets: step {ratio_10:.1f}x CartPole, mask + step {masked_ratio_10:.1f}x "
        f"(target <= {TARGET_RATIO_VS_CARTPOLE}x)"
    )
    if args.profile:
        print(profile_env_step())

    try:
        setup_scratch_django(args.db, server=args.server)
        load_figures = measure_load(
            f"{args.server}/{args.db}",
            rows=args.delta_rows,
            hours=args.hours,
            step_s=args.step_s,
            repeat=args.repeat,
            seed=0,
            profile=args.profile,
        )
        print("history load over several daily partitions:")
        parted = measure_load(
            f"{args.server}/{args.db}",
            rows=args.delta_rows,
            hours=args.partitioned_hours,
            # The same number of ticks as part 2, so both loads build arrays of one size.
            step_s=args.step_s * args.partitioned_hours / args.hours,
            repeat=args.repeat,
            seed=1,
            partitioned=True,
        )
    finally:
        drop_scratch_database(args.db, server=args.server)

    ratio_copy = load_figures["load_rows_per_s"] / load_figures["raw_copy_rows_per_s"]
    peak_ratio = load_figures["load_peak_mb"] / load_figures["arrays_mb"]
    rss = load_figures["load_rss_rise_mb"]
    print(
        f"load {load_figures['load_rows_per_s']:,.0f} rows/s vs raw COPY "
        f"{load_figures['raw_copy_rows_per_s']:,.0f} rows/s: {ratio_copy:.2f}x "
        f"(target >= {TARGET_LOAD_RATIO_VS_COPY}x)"
    )
    parted_ratio = parted["load_rows_per_s"] / parted["raw_copy_rows_per_s"]
    print(
        f"load over {parted['partitions']} partitions {parted['load_rows_per_s']:,.0f} rows/s vs "
        f"raw COPY {parted['raw_copy_rows_per_s']:,.0f} rows/s: {parted_ratio:.2f}x "
        f"(target >= {TARGET_PARTITIONED_LOAD_RATIO_VS_COPY}x)"
    )
    print(
        f"peak {load_figures['load_peak_mb']:.1f} MB (tracemalloc), RSS rise "
        f"{'n/a' if rss is None else f'{rss:.1f} MB'}, arrays {load_figures['arrays_mb']:.1f} MB "
        f"({load_figures['ticks']:,} ticks): {peak_ratio:.2f}x (target <= "
        f"{TARGET_PEAK_RATIO_VS_ARRAYS}x)"
    )
    print(
        json.dumps(
            {
                "bench": "env",
                "steps_per_s_1_market": round(one["steps_per_s"]),
                "steps_per_s_10_markets": round(ten["steps_per_s"]),
                "masked_steps_per_s_10_markets": round(ten["masked_steps_per_s"]),
                "cartpole_steps_per_s": round(1e6 / cartpole_us),
                "step_us_10_markets": round(ten["step_us"], 1),
                "mask_us_10_markets": round(ten["mask_us"], 1),
                "cartpole_step_us": round(cartpole_us, 2),
                "ratio_vs_cartpole_1_market": round(one["step_us"] / cartpole_us, 2),
                "ratio_vs_cartpole_10_markets": round(ratio_10, 2),
                "masked_ratio_vs_cartpole_10_markets": round(masked_ratio_10, 2),
                "target_ratio_vs_cartpole": TARGET_RATIO_VS_CARTPOLE,
                "delta_rows": load_figures["delta_rows"],
                "load_rows_per_s": round(load_figures["load_rows_per_s"]),
                "raw_copy_rows_per_s": round(load_figures["raw_copy_rows_per_s"]),
                "ratio_vs_copy": round(ratio_copy, 3),
                "target_ratio_vs_copy": TARGET_LOAD_RATIO_VS_COPY,
                "partitioned_partitions": parted["partitions"],
                "partitioned_load_rows_per_s": round(parted["load_rows_per_s"]),
                "partitioned_raw_copy_rows_per_s": round(parted["raw_copy_rows_per_s"]),
                "partitioned_ratio_vs_copy": round(parted_ratio, 3),
                "target_partitioned_ratio_vs_copy": TARGET_PARTITIONED_LOAD_RATIO_VS_COPY,
                "load_peak_mb": round(load_figures["load_peak_mb"], 1),
                "load_rss_rise_mb": None if rss is None else round(rss, 1),
                "arrays_mb": round(load_figures["arrays_mb"], 1),
                "peak_ratio_vs_arrays": round(peak_ratio, 2),
                "target_peak_ratio_vs_arrays": TARGET_PEAK_RATIO_VS_ARRAYS,
            }
        )
    )


if __name__ == "__main__":
    main()
