"""Cancelling a run is honoured inside SB3's optimisation phase (``train()``), which runs all
its epochs and minibatches without a callback, not only between rollout steps."""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime, timedelta

import pytest

from apps.simulation.synthetic import synthetic_history
from apps.training.spec import RunSpec
from apps.training.trainer import TrainingCancelled, train_and_evaluate

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def inside_sb3_train() -> bool:
    """Whether the caller runs inside an SB3 algorithm's ``train()`` (its optimisation)."""
    from stable_baselines3.common.base_class import BaseAlgorithm

    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "train" and isinstance(
            frame.f_locals.get("self"), BaseAlgorithm
        ):
            return True
        frame = frame.f_back
    return False


@pytest.mark.parametrize("algorithm", ["PPO", "MaskablePPO"])
def test_a_cancel_during_the_optimisation_epochs_stops_them(tmp_path, algorithm) -> None:
    history = synthetic_history(markets=2, ticks=300, step_s=0.05)
    spec = RunSpec(
        name="cancel",
        algorithm=algorithm,
        markets=list(history.markets),
        train_start=T0,
        train_end=T0 + timedelta(seconds=15),
        eval_start=T0 + timedelta(seconds=15),
        eval_end=T0 + timedelta(seconds=30),
        # One rollout, then one train() of 2,000 epochs (one minibatch each): the user
        # cancels while it optimises.
        total_timesteps=64,
        hyperparameters={"n_steps": 64, "batch_size": 64, "n_epochs": 2_000},
        step_s=0.05,
        episode_steps=20,
        eval_episodes=1,
    )
    asked: list[bool] = []

    def should_stop() -> bool:
        asked.append(inside_sb3_train())
        return asked[-1]  # "cancelled" as soon as the run is optimising

    started = time.monotonic()
    with pytest.raises(TrainingCancelled, match="during optimisation"):
        train_and_evaluate(
            spec,
            train_history=history,
            eval_history=history,
            out_dir=tmp_path / "out",
            tensorboard_dir=tmp_path / "tb",
            on_progress=lambda _: None,
            should_stop=should_stop,
            check_every_s=0.0,
        )
    elapsed = time.monotonic() - started
    assert False in asked  # asked during the rollout, and carried on
    assert asked[-1] is True and asked.count(True) == 1  # the first ask in train() stopped it
    assert not (tmp_path / "out" / "model.zip").exists()
    print(f"cancelled after {len(asked)} checks in {elapsed:.2f}s")


def test_the_check_is_throttled(tmp_path) -> None:
    """With the default cadence the database is asked at most every 2 s, not per step."""
    history = synthetic_history(markets=1, ticks=300, step_s=0.05)
    spec = RunSpec(
        name="cadence",
        algorithm="PPO",
        markets=list(history.markets),
        train_start=T0,
        train_end=T0 + timedelta(seconds=15),
        eval_start=T0 + timedelta(seconds=15),
        eval_end=T0 + timedelta(seconds=30),
        total_timesteps=128,
        hyperparameters={"n_steps": 64, "batch_size": 32, "n_epochs": 5},
        step_s=0.05,
        episode_steps=20,
        eval_episodes=1,
    )
    asked: list[float] = []
    started = time.monotonic()
    train_and_evaluate(
        spec,
        train_history=history,
        eval_history=history,
        out_dir=tmp_path / "out",
        tensorboard_dir=tmp_path / "tb",
        on_progress=lambda _: None,
        should_stop=lambda: asked.append(time.monotonic()) or False,
    )
    elapsed = time.monotonic() - started
    assert 1 <= len(asked) <= 1 + elapsed / 2.0


def test_checkpoints_are_artifacts_the_verified_loader_reads(tmp_path) -> None:
    from apps.training.artifacts import load_verified, sha256_of

    history = synthetic_history(markets=2, ticks=300, step_s=0.05)
    spec = RunSpec(
        name="checkpoints",
        algorithm="MaskablePPO",
        markets=list(history.markets),
        train_start=T0,
        train_end=T0 + timedelta(seconds=15),
        eval_start=T0 + timedelta(seconds=15),
        eval_end=T0 + timedelta(seconds=30),
        total_timesteps=128,
        hyperparameters={"n_steps": 64, "batch_size": 64, "n_epochs": 1},
        step_s=0.05,
        episode_steps=20,
        eval_episodes=1,
        checkpoint_every=64,
    )
    train_and_evaluate(
        spec,
        train_history=history,
        eval_history=history,
        out_dir=tmp_path / "out",
        tensorboard_dir=tmp_path / "tb",
        on_progress=lambda _: None,
        should_stop=lambda: False,
    )
    saved = sorted((tmp_path / "out" / "checkpoints").glob("*.zip"))
    assert [p.name for p in saved] == ["step_128.zip", "step_64.zip"]
    for path in saved:
        policy = load_verified(
            path=path, sha256=sha256_of(path), algorithm="MaskablePPO", n_markets=2, root=tmp_path
        )
        assert policy.action_space.nvec.tolist() == [30, 30]
