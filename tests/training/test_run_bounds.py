"""The admin form and ``manage.py train`` refuse out-of-bounds runs before anything is
queued, with the message on the field (or flag) to change: hostile JSON, unbounded
hyperparameters and runs whose arrays would not fit RL_TRAINING_MEMORY_BUDGET_MB."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from django.core.management import CommandError, call_command
from django.utils.html import escape

from apps.training.models import RLModel
from tests.training.data_support import record_books

pytestmark = pytest.mark.django_db

URL = "/admin/training/rlmodel/start/"
T0 = datetime(2026, 11, 1, tzinfo=UTC)
TEN = ",".join(f"KX-M{j}" for j in range(10))
HOUR = {
    "markets": TEN,
    "train_end": (T0 + timedelta(hours=1)).isoformat(),
    "eval_start": (T0 + timedelta(hours=1)).isoformat(),
    "eval_end": (T0 + timedelta(hours=1, minutes=5)).isoformat(),
    "step_s": "0.001",
}
FORM = {
    "name": "bounded",
    "algorithm": "PPO",
    "markets": "KX-A,KX-B",
    "train_start": T0.isoformat(),
    "train_end": (T0 + timedelta(minutes=10)).isoformat(),
    "eval_start": (T0 + timedelta(minutes=10)).isoformat(),
    "eval_end": (T0 + timedelta(minutes=15)).isoformat(),
    "total_timesteps": "256",
    "seed": "1",
    "step_s": "1",
    "episode_steps": "20",
    "hyperparameters": "{}",
    "mode": "training",
}


@pytest.mark.parametrize(
    ("changes", "field", "message"),
    [
        ({"hyperparameters": '{"learning_rate": NaN}'}, "hyperparameters", "NaN is not a number"),
        ({"hyperparameters": '{"gamma": Infinity}'}, "hyperparameters", "Infinity is not a"),
        ({"hyperparameters": '{"gamma": 1e400}'}, "hyperparameters", "1e400 is out of range"),
        ({"hyperparameters": "[" * 2000 + "]" * 2000}, "hyperparameters", "nested too deeply"),
        ({"hyperparameters": "[" * 50_000}, "hyperparameters", "longer than 4096"),
        ({"hyperparameters": '{"n_steps": 10000000}'}, "hyperparameters", "n_steps must be in"),
        ({"hyperparameters": '{"n_epochs": {"a": 1}}'}, "hyperparameters", "wrong type"),
        ({"seed": "-5"}, "seed", "seed must be in [0, 4,294,967,295]"),
        ({"total_timesteps": "1" + "0" * 12}, "total_timesteps", "total_timesteps must be in"),
        ({"episode_steps": "1000"}, "eval_end", "the evaluation window holds 300 ticks"),
        ({"name": "n" * 100 + "x"}, "name", "at most 100 characters"),
        ({"markets": "KX A,KX-B"}, "markets", "not a market ticker"),
        (HOUR, "__all__", "over the budget of 8.00 GiB (RL_TRAINING_MEMORY_BUDGET_MB)"),
    ],
)
def test_the_admin_form_refuses_on_the_field_and_queues_nothing(
    admin_client, changes, field, message
):
    response = admin_client.post(URL, {**FORM, **changes})
    assert response.status_code == 200
    errors = response.context["form"].errors
    assert any(message in e for e in errors.get(field, [])), errors
    assert escape(message) in response.content.decode()  # shown on the page
    assert not RLModel.objects.exists()


def test_a_sound_form_still_queues(admin_client) -> None:
    record_books(["KX-A", "KX-B"], T0, T0 + timedelta(minutes=15))
    # No worker runs in this test: queueing anyway is the form's explicit choice.
    response = admin_client.post(URL, {**FORM, "queue_anyway": "on"})
    assert response.status_code == 302, response.context["form"].errors
    assert RLModel.objects.get(name="bounded").status == "training"


def train(*args: str) -> None:
    call_command(
        "train",
        "--name",
        "bounded",
        "--markets",
        "KX-A,KX-B",
        "--train-start",
        FORM["train_start"],
        "--train-end",
        FORM["train_end"],
        "--eval-start",
        FORM["eval_start"],
        "--eval-end",
        FORM["eval_end"],
        "--no-wait",
        *args,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--hp", "learning_rate=NaN"], "--hp learning_rate: NaN is not a number"),
        (["--hp", "n_steps=" + "[" * 3000], "--hp n_steps: nested too deeply"),
        (["--hp", "n_steps=10000000"], "--hp: hyperparameter n_steps must be in [2, 1,000,000]"),
        (["--step-s", "nan"], "--step-s: step_s must be a finite number"),
        (["--seed", "-1", "--timesteps", "0"], "--seed: seed must be in"),
        (["--episode-steps", "100000"], "--train-end: the training window holds 600 ticks"),
    ],
)
def test_manage_py_train_names_the_flag_and_queues_nothing(args, message) -> None:
    with pytest.raises(CommandError) as caught:
        train(*args)
    assert message in str(caught.value), str(caught.value)
    assert not RLModel.objects.exists()


def test_the_memory_budget_is_a_setting(settings) -> None:
    record_books(["KX-A", "KX-B"], T0, T0 + timedelta(minutes=15))
    train("--step-s", "0.01")  # 60,000 + 30,000 ticks of 2 markets: ~0.5 GiB
    assert RLModel.objects.count() == 1
    settings.RL_TRAINING_MEMORY_BUDGET_MB = 256
    with pytest.raises(CommandError, match=r"over the budget of 256\.0 MiB"):
        train("--step-s", "0.01")
    assert RLModel.objects.count() == 1


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"n_envs": 0}, "n_envs must be in [1, 64]"),
        ({"n_envs": 65}, "n_envs must be in [1, 64]"),
        (
            {"n_envs": 2, "hyperparameters": {"n_steps": 64, "batch_size": 256}},
            "batch_size cannot exceed n_steps x n_envs (64 x 2)",
        ),
    ],
)
def test_the_number_of_envs_is_bounded_and_sizes_the_batch(changes, message) -> None:
    from apps.training.spec import RunSpec, SpecError, validate_spec

    values = {
        "name": "envs",
        "algorithm": "PPO",
        "markets": ["KX-A"],
        "train_start": T0,
        "train_end": T0 + timedelta(minutes=10),
        "eval_start": T0 + timedelta(minutes=10),
        "eval_end": T0 + timedelta(minutes=15),
        "step_s": 1.0,
        "episode_steps": 20,
        **changes,
    }
    with pytest.raises(SpecError, match=re.escape(message)):
        validate_spec(RunSpec(**values))
    # A batch that fits n_steps x n_envs is fine.
    validate_spec(
        RunSpec(**{**values, "n_envs": 4, "hyperparameters": {"n_steps": 64, "batch_size": 256}})
    )
