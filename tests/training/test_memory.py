"""The memory estimate that gates a run is checked against what a real run allocates
(numpy arrays, seen by tracemalloc) at small scale."""

from __future__ import annotations

import gc
import tracemalloc
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from apps.simulation.env import EnvConfig, KalshiTradingEnv
from apps.simulation.history import DEFAULT_LEVELS, HistoryBuilder
from apps.simulation.synthetic import synthetic_history
from apps.training.spec import (
    RunSpec,
    env_bytes,
    estimate_memory,
    history_bytes,
    history_load_overhead_bytes,
    rollout_bytes,
)
from apps.training.trainer import train_and_evaluate

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def traced(build):  # type: ignore[no-untyped-def]
    """(result, bytes still held by what it allocated, peak bytes above the start)."""
    gc.collect()
    tracemalloc.start()
    try:
        result = build()
        held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, held, peak


def close(actual: float, estimate: float, tolerance: float) -> bool:
    return abs(actual - estimate) <= tolerance * estimate


def test_history_arrays_and_the_loaders_overhead() -> None:
    ticks, markets = 30_000, 3

    def build(n: int):  # type: ignore[no-untyped-def]
        names = [f"M{j}" for j in range(markets)]
        return HistoryBuilder(names, start_ns=0, end_ns=n * 10**7, step_ns=10**7).finish()

    build(10)  # compiles (or loads) the replay kernels before anything is measured

    history, held, peak = traced(lambda: build(ticks))
    assert history.n_ticks == ticks
    assert history.nbytes() == history_bytes(ticks, markets, DEFAULT_LEVELS)  # exact
    assert close(held, history.nbytes(), 0.05)
    overhead = history_load_overhead_bytes(ticks, markets, DEFAULT_LEVELS)
    assert close(peak - held, overhead, 0.15), (peak - held, overhead)


@pytest.mark.parametrize("markets", [1, 10])
def test_env_precomputation(markets: int) -> None:
    ticks = 20_000
    history = synthetic_history(markets=markets, ticks=ticks)
    env, held, peak = traced(lambda: KalshiTradingEnv(history, config=EnvConfig(episode_steps=20)))
    kept, transient = env_bytes(ticks, markets)
    assert close(held, kept, 0.05), (held, kept)
    assert close(peak - held, transient, 0.15), (peak - held, transient)
    del env


@pytest.mark.parametrize("algorithm", ["PPO", "A2C", "MaskablePPO"])
def test_rollout_buffer(algorithm: str) -> None:
    from apps.training.artifacts import algorithm_class

    markets, n_steps = 4, 4096
    env = KalshiTradingEnv(
        synthetic_history(markets=markets, ticks=100), config=EnvConfig(episode_steps=20)
    )
    algorithm_class(algorithm)("MlpPolicy", env, n_steps=64, device="cpu")  # imports done
    model, held, _ = traced(
        lambda: algorithm_class(algorithm)("MlpPolicy", env, n_steps=n_steps, device="cpu")
    )
    buffer = model.rollout_buffer
    arrays = [v for v in vars(buffer).values() if isinstance(v, np.ndarray)]
    spec = run_spec(algorithm, [f"M{j}" for j in range(markets)], n_steps=n_steps)
    kept, _ = rollout_bytes(spec)
    assert sum(a.nbytes for a in arrays) == kept  # exact: the buffer's own arrays
    assert close(held, kept, 0.10), (held, kept)  # and what constructing the model allocated


def run_spec(algorithm: str, markets: list[str], **hp: int) -> RunSpec:
    return RunSpec(
        name="mem",
        algorithm=algorithm,
        markets=markets,
        train_start=T0,
        train_end=T0 + timedelta(seconds=200),
        eval_start=T0 + timedelta(seconds=200),
        eval_end=T0 + timedelta(seconds=300),
        total_timesteps=hp.get("n_steps", 64),
        hyperparameters=hp,
        step_s=0.01,
        episode_steps=20,
        eval_episodes=1,
    )


def test_a_whole_run_peaks_near_its_estimate(tmp_path) -> None:
    """Histories, both envs, training and evaluation, as the task runs them."""
    markets = ["M0", "M1"]
    spec = run_spec("PPO", markets, n_steps=1024, batch_size=512, n_epochs=1)
    estimate = estimate_memory(spec)
    train_ticks = 20_000  # 200 s of 0.01 s
    eval_ticks = 10_000

    def run() -> None:
        train = synthetic_history(markets=2, ticks=train_ticks, step_s=0.01)
        evaluation = synthetic_history(markets=2, ticks=eval_ticks, step_s=0.01, seed=1)
        train_and_evaluate(
            spec,
            train_history=train,
            eval_history=evaluation,
            out_dir=tmp_path / "out",
            tensorboard_dir=tmp_path / "tb",
            on_progress=lambda _: None,
            should_stop=lambda: False,
        )

    # Once small first, so that imports (module code, not the run's data) are not counted.
    warm = run_spec("PPO", markets, n_steps=64, batch_size=64, n_epochs=1)
    tiny = synthetic_history(markets=2, ticks=200, step_s=0.01)
    train_and_evaluate(
        warm,
        train_history=tiny,
        eval_history=tiny,
        out_dir=tmp_path / "warm",
        tensorboard_dir=tmp_path / "tb",
        on_progress=lambda _: None,
        should_stop=lambda: False,
    )
    _, _, peak = traced(run)
    assert close(peak, estimate.total, 0.25), (peak, estimate.parts)


def test_the_issues_examples_are_estimated_in_gigabytes() -> None:
    big_rollout = run_spec("PPO", ["M0"], n_steps=10_000_000)
    assert estimate_memory(big_rollout).parts["rollout buffer"] > 20 * 10**9  # ~22 GB
    ten = [f"M{j}" for j in range(10)]
    fine = RunSpec(
        name="fine",
        algorithm="PPO",
        markets=ten,
        train_start=T0,
        train_end=T0 + timedelta(hours=1),
        eval_start=T0 + timedelta(hours=1),
        eval_end=T0 + timedelta(hours=1, seconds=10),
        step_s=0.001,
    )
    parts = estimate_memory(fine).parts
    assert 8 * 10**9 < parts["training history"] < 9 * 10**9  # 3.6M ticks x 10 markets
    assert parts["training env"] > 19 * 10**9
