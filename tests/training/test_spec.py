"""A run spec is validated before anything is queued, with messages that say what to fix."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from apps.training.spec import RunSpec, SpecError, validate_spec

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def spec(**overrides) -> RunSpec:
    values = dict(
        name="fed-cut",
        algorithm="PPO",
        markets=["KX-A", "KX-B"],
        train_start=T0,
        train_end=T0 + timedelta(hours=6),
        eval_start=T0 + timedelta(hours=6),
        eval_end=T0 + timedelta(hours=8),
    )
    values.update(overrides)
    return RunSpec(**values)


def test_a_sound_spec_passes_and_round_trips_through_json() -> None:
    good = validate_spec(spec(hyperparameters={"learning_rate": 1e-4, "n_steps": 256}))
    assert RunSpec.from_json(good.as_json()) == good


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"algorithm": "DQN"}, "algorithm must be one of"),
        ({"markets": []}, "give 1 to 10 markets"),
        ({"markets": [f"M{i}" for i in range(11)]}, "give 1 to 10 markets"),
        ({"markets": ["A", "A"]}, "distinct"),
        ({"hyperparameters": {"learnin_rate": 0.1}}, "unknown hyperparameter 'learnin_rate'"),
        ({"hyperparameters": {"n_steps": 0}}, "n_steps must be positive"),
        ({"hyperparameters": {"gamma": 1.5}}, "gamma must be in (0, 1]"),
        ({"hyperparameters": {"n_steps": "128"}}, "wrong type"),
        ({"hyperparameters": {"batch_size": 512, "n_steps": 128}}, "batch_size cannot exceed"),
        ({"eval_start": T0 + timedelta(hours=5)}, "overlaps the training window"),
        ({"train_end": T0 - timedelta(hours=1)}, "ends before it starts"),
        ({"total_timesteps": 0}, "total_timesteps must be positive"),
        ({"name": "bad name!"}, "name must be"),
    ],
)
def test_a_bad_spec_is_refused_with_a_clear_message(overrides, message) -> None:
    with pytest.raises(SpecError, match=message.replace("(", r"\(").replace(")", r"\)")):
        validate_spec(spec(**overrides))


def test_a2c_does_not_accept_ppo_only_hyperparameters() -> None:
    with pytest.raises(SpecError, match="unknown hyperparameter 'clip_range' for A2C"):
        validate_spec(spec(algorithm="A2C", hyperparameters={"clip_range": 0.2}))
