"""A run spec is validated before anything is queued, with messages that say what to fix."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest

from apps.training.spec import (
    SB3_DEFAULTS,
    RunSpec,
    SpecError,
    estimate_memory,
    parse_json,
    validate_spec,
)

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
        ({"hyperparameters": {"n_steps": 0}}, "n_steps must be in [2, 1,000,000], got 0"),
        ({"hyperparameters": {"gamma": 1.5}}, "gamma must be in (0, 1]"),
        ({"hyperparameters": {"n_steps": "128"}}, "wrong type"),
        ({"hyperparameters": {"batch_size": 512, "n_steps": 128}}, "batch_size cannot exceed"),
        ({"eval_start": T0 + timedelta(hours=5)}, "overlaps the training window"),
        ({"train_end": T0 - timedelta(hours=1)}, "ends before it starts"),
        ({"total_timesteps": 0}, "total_timesteps must be positive"),
        ({"name": "bad name!"}, "name must be"),
        ({"name": "x" * 101}, "name must be 1 to 100"),
        # Bounds on every hyperparameter and field (issue 12, item 10).
        ({"hyperparameters": {"n_steps": 10**7}}, "n_steps must be in [2, 1,000,000]"),
        ({"hyperparameters": {"batch_size": 1}}, "batch_size must be in [2, 1,000,000]"),
        ({"hyperparameters": {"n_epochs": 10**6}}, "n_epochs must be in [1, 1,000]"),
        ({"hyperparameters": {"learning_rate": float("nan")}}, "must be a finite number"),
        ({"hyperparameters": {"learning_rate": float("inf")}}, "must be a finite number"),
        ({"hyperparameters": {"learning_rate": 5}}, "learning_rate must be in (0, 1]"),
        ({"hyperparameters": {"ent_coef": -0.1}}, "ent_coef must be in [0, 1]"),
        ({"hyperparameters": {"clip_range": 0}}, "clip_range must be in (0, 1]"),
        ({"hyperparameters": {"max_grad_norm": 1e9}}, "max_grad_norm must be in (0, 1,000]"),
        ({"hyperparameters": {"n_steps": [128]}}, "wrong type"),
        ({"hyperparameters": {"n_steps": 10**4000}}, "got a number of over 1000 digits"),
        ({"step_s": 10**5000}, "step_s must be in [0.001, 3,600], got a number of over 1000"),
        ({"hyperparameters": {"n_steps": True}}, "wrong type"),
        ({"hyperparameters": ["n_steps"]}, "must be a JSON object"),
        ({"step_s": float("nan")}, "step_s must be a finite number"),
        ({"step_s": float("inf")}, "step_s must be a finite number"),
        ({"step_s": 0.0001}, "step_s must be in [0.001, 3,600]"),
        ({"total_timesteps": 10**12}, "total_timesteps must be in [1, 100,000,000]"),
        ({"total_timesteps": 1.5}, "total_timesteps must be a whole number"),
        ({"seed": -1}, "seed must be in [0, 4,294,967,295]"),
        ({"seed": 2**64}, "seed must be in"),
        ({"episode_steps": 10**9}, "episode_steps must be in [2, 1,000,000]"),
        ({"eval_episodes": 10**6}, "eval_episodes must be in [1, 100]"),
        ({"checkpoint_every": -1}, "checkpoint_every must be in [0,"),
        ({"checkpoint_every": 1, "total_timesteps": 10**6}, "more than 1000 checkpoints"),
        ({"parent_version": 0}, "parent_version must be a version number"),
        ({"markets": ["KX A"]}, "not a market ticker"),
        ({"markets": ["K" * 200]}, "not a market ticker"),
        ({"markets": [7]}, "not a market ticker"),
        ({"train_start": datetime(2026, 11, 1)}, "timezone-aware"),
        ({"episode_steps": 7_201}, "the evaluation window holds 7200 ticks"),
        ({"step_s": 3_600.0}, "the training window holds 6 ticks"),
    ],
)
def test_a_bad_spec_is_refused_with_a_clear_message(overrides, message) -> None:
    with pytest.raises(SpecError, match=re.escape(message)):
        validate_spec(spec(**overrides))


def test_a2c_does_not_accept_ppo_only_hyperparameters() -> None:
    with pytest.raises(SpecError, match="unknown hyperparameter 'clip_range' for A2C"):
        validate_spec(spec(algorithm="A2C", hyperparameters={"clip_range": 0.2}))


def test_every_problem_is_reported_against_its_field() -> None:
    with pytest.raises(SpecError) as caught:
        validate_spec(
            spec(
                step_s=float("nan"),
                seed=-1,
                total_timesteps=0,
                hyperparameters={"gamma": 2.0, "typo": 1},
            )
        )
    errors = caught.value.errors
    assert set(errors) == {"step_s", "seed", "total_timesteps", "hyperparameters"}
    assert len(errors["hyperparameters"]) == 2
    assert "total_timesteps must be positive" in str(caught.value)


def test_the_memory_budget_refuses_what_would_not_fit() -> None:
    ten = [f"KX-M{j}" for j in range(10)]
    # The example: 0.001 s steps over an hour of 10 markets (~8.9 GB of history alone).
    fine = spec(
        markets=ten,
        train_end=T0 + timedelta(hours=1),
        eval_start=T0 + timedelta(hours=1),
        eval_end=T0 + timedelta(hours=1, minutes=5),
        step_s=0.001,
    )
    validate_spec(fine)  # no budget given: only the bounds
    with pytest.raises(SpecError, match="RL_TRAINING_MEMORY_BUDGET_MB") as caught:
        validate_spec(fine, memory_budget_bytes=24 * 2**30)
    message = str(caught.value)
    assert "training history 8." in message and "use a larger step_s" in message
    assert list(caught.value.errors) == ["__all__"]
    # The same markets at 1 s steps fit easily; a large rollout buffer alone can exceed.
    coarse = spec(markets=ten, step_s=1.0)
    assert estimate_memory(coarse).total < 2**30
    validate_spec(coarse, memory_budget_bytes=2**30)
    rollout = spec(markets=ten, hyperparameters={"n_steps": 1_000_000})
    with pytest.raises(SpecError, match=r"rollout buffer 2\.1"):
        validate_spec(rollout, memory_budget_bytes=2**30)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ('{"learning_rate": NaN}', "NaN is not a number"),
        ('{"learning_rate": Infinity}', "Infinity is not a number"),
        ('{"learning_rate": -Infinity}', "-Infinity is not a number"),
        ('{"learning_rate": 1e400}', "1e400 is out of range"),
        ("[" * 3000 + "]" * 3000, "longer than 4096 characters"),
        ("[" * 2000 + "]" * 2000, "nested too deeply"),
        ("{", "not valid JSON"),
    ],
)
def test_user_json_is_bounded(raw: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_json(raw)


def test_parse_json_accepts_plain_hyperparameters() -> None:
    assert parse_json('{"learning_rate": 0.0003, "n_steps": 512}') == {
        "learning_rate": 0.0003,
        "n_steps": 512,
    }


def test_the_memory_estimates_defaults_are_stable_baselines3s() -> None:
    import inspect

    from apps.training.artifacts import algorithm_class

    for algorithm, defaults in SB3_DEFAULTS.items():
        parameters = inspect.signature(algorithm_class(algorithm).__init__).parameters
        for key, value in defaults.items():
            if key in parameters:
                assert parameters[key].default == value, (algorithm, key)
            else:  # A2C has no batch_size/n_epochs: one gradient step on the whole rollout
                assert algorithm == "A2C" and key in ("batch_size", "n_epochs")
