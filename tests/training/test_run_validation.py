"""A run is checked against the recorded data before it is queued — markets that exist,
windows with enough recorded ticks for an episode — with one message on the field (or flag)
to change, by the admin's form, the registry's service and ``manage.py train`` alike; and the
form's defaults are taken from the data, so that they pass on a short recording."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.core.management import CommandError, call_command

from apps.training import services
from apps.training.datachecks import run_defaults
from apps.training.models import RLModel
from apps.training.spec import RunSpec, SpecError
from tests.training.data_support import record_books

pytestmark = pytest.mark.django_db

URL = "/admin/training/rlmodel/start/"
T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
FORM = {
    "name": "checked",
    "algorithm": "PPO",
    "markets": "KX-A",
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
    "queue_anyway": "on",  # no worker in these tests: the data checks are what is tested
}


def errors_of(admin_client, **changes) -> dict[str, list[str]]:
    response = admin_client.post(URL, {**FORM, **changes})
    assert response.status_code == 200, "the run was queued"
    assert not RLModel.objects.exists()
    return response.context["form"].errors


def test_an_unrecorded_market_is_one_message_on_the_markets_field(admin_client) -> None:
    record_books(["KX-A"], T0, T0 + timedelta(minutes=15))
    errors = errors_of(admin_client, markets="KX-A,KX-NOPE,KX-ALSO-NOPE")
    assert errors == {
        "markets": [
            "not in the recorded data: KX-NOPE, KX-ALSO-NOPE (record them first with "
            "ingest_orderbook, or check the ticker)"
        ]
    }


def test_a_window_shorter_than_an_episode_is_refused_on_its_field(admin_client) -> None:
    # Recorded for 30 s only: the 10-minute training window holds 31 ticks of 1 s of it.
    record_books(["KX-A"], T0, T0 + timedelta(seconds=30))
    errors = errors_of(admin_client, episode_steps="60")
    assert list(errors) == ["train_end", "eval_end"]
    assert errors["train_end"] == [
        "the training window has a recorded book of KX-A only from 2026-11-02 09:00:00 UTC to "
        "2026-11-02 09:00:30 UTC: 31 ticks of 1 s; an episode of 60 steps needs 61: widen "
        "the window, lower the env step or shorten the episode"
    ]
    assert errors["eval_end"] == [
        "the evaluation window has no recorded data of KX-A: its recording ends at "
        "2026-11-02 09:00:30 UTC; an episode of 60 steps needs 61: widen the window, lower "
        "the env step or shorten the episode"
    ]
    # The same windows with episodes that fit the 30 s pass the training window's check.
    assert "train_end" not in errors_of(admin_client, episode_steps="20")


def test_windows_after_the_recording_are_refused(admin_client) -> None:
    record_books(["KX-A"], T0, T0 + timedelta(minutes=15))
    late = T0 + timedelta(minutes=20)
    errors = errors_of(
        admin_client,
        train_start=late.isoformat(),
        train_end=(late + timedelta(minutes=5)).isoformat(),
        eval_start=(late + timedelta(minutes=5)).isoformat(),
        eval_end=(late + timedelta(minutes=10)).isoformat(),
    )
    assert errors["train_end"][0].startswith("the training window has no recorded data of KX-A")


def test_hyperparameters_and_bounds_come_first_one_message_per_problem(admin_client) -> None:
    # Out-of-bounds values are refused by the spec's validator before the data is looked at.
    errors = errors_of(admin_client, markets="KX-NOPE", hyperparameters='{"gamma": 7}')
    assert errors == {"hyperparameters": ["hyperparameter gamma must be in (0, 1], got 7"]}


def test_the_service_and_the_command_refuse_the_same_way() -> None:
    record_books(["KX-A"], T0, T0 + timedelta(minutes=15))
    spec = RunSpec(
        name="checked",
        algorithm="PPO",
        markets=["KX-NOPE"],
        train_start=T0,
        train_end=T0 + timedelta(minutes=10),
        eval_start=T0 + timedelta(minutes=10),
        eval_end=T0 + timedelta(minutes=15),
        episode_steps=20,
    )
    with pytest.raises(SpecError) as caught:
        services.start_training_run(spec=spec, enqueue=False)
    assert list(caught.value.errors) == ["markets"]
    windows = ["--train-start", FORM["train_start"], "--train-end", FORM["train_end"]]
    windows += ["--eval-start", FORM["eval_start"], "--eval-end", FORM["eval_end"]]
    windows += ["--episode-steps", "20"]
    with pytest.raises(CommandError, match="--markets: not in the recorded data: KX-NOPE"):
        call_command("train", "--name", "x", "--markets", "KX-NOPE", "--no-wait", *windows)
    # Without windows, the command says the same before anything else.
    with pytest.raises(CommandError, match="--markets: not in the recorded data: KX-NOPE"):
        call_command("train", "--name", "x", "--markets", "KX-NOPE", "--no-wait")
    with pytest.raises(CommandError, match="--train-end: the training window has no recorded"):
        call_command(
            "train", "--name", "x", "--markets", "KX-A", "--no-wait", "--episode-steps", "20",
            "--train-start",
            (T0 + timedelta(hours=1)).isoformat(), "--train-end",
            (T0 + timedelta(hours=2)).isoformat(), "--eval-start",
            (T0 + timedelta(hours=2)).isoformat(), "--eval-end",
            (T0 + timedelta(hours=3)).isoformat(),
        )  # fmt: skip
    assert not RLModel.objects.exists()


@pytest.mark.parametrize(
    ("seconds", "step_s", "episode_steps"),
    [
        (30, 0.01, 300),  # a demo recording: 9 s held out -> 900 ticks of 0.01 s
        (8, 0.01, 80),  # shorter: episodes of a third of the held-out ticks
        (1500, 0.5, 300),  # 450 s held out -> 900 ticks of 0.5 s
        (3600, 1.0, 300),
        (86_400, 1.0, 300),
    ],
)
def test_defaults_fit_what_is_recorded(seconds, step_s, episode_steps) -> None:
    record_books(["KX-A"], T0, T0 + timedelta(seconds=seconds))
    defaults = run_defaults(["KX-A"])
    assert (defaults.step_s, defaults.episode_steps) == (step_s, episode_steps)
    assert defaults.train_start == T0 and defaults.eval_start == defaults.train_end
    assert run_defaults(["KX-NOPE"]) is None


def test_the_forms_defaults_pass_its_own_checks_on_a_short_recording(admin_client) -> None:
    """The issue's case: the form's defaults failed on the demo's own 30-second recording."""
    record_books(["KX-A", "KX-B"], T0, T0 + timedelta(seconds=30))
    page = admin_client.get(URL)
    initial = page.context["form"].initial
    assert initial["markets"] == "KX-A,KX-B"
    assert initial["step_s"] == 0.01 and initial["episode_steps"] == 300
    # Defaults for the markets typed (the form's "defaults from the recorded data" link).
    only_a = admin_client.get(URL, {"markets": "kx-a"}).context["form"].initial
    assert only_a["markets"] == "KX-A"
    posted = {
        **{k: v for k, v in FORM.items() if k not in initial},
        **initial,
        "hyperparameters": '{"n_steps": 64, "batch_size": 64}',
    }
    response = admin_client.post(URL, posted)
    assert response.status_code == 302, response.context["form"].errors
    model = RLModel.objects.get(name="checked")
    assert response["Location"] == f"/admin/training/rlmodel/{model.pk}/run/"
    assert model.progress["phase"] == "queued"


@pytest.mark.redis
@pytest.mark.slow
def test_manage_py_train_runs_the_task_itself_when_no_worker_answers(
    recorded_markets, settings, capsys
) -> None:
    """``train`` waits for its run anyway: with no worker listening it runs it in-process
    (the same Celery task, applied here) instead of waiting forever at 0 %."""
    from django.core.cache import cache

    from apps.training.dispatch import worker_status
    from tests.training.conftest import small_spec

    cache.clear()
    settings.RL_WORKER_PING_TIMEOUT_S = 0.3
    assert not worker_status().online
    spec = small_spec(recorded_markets, total_timesteps=256)
    call_command(
        "train", "--name", "cli-here", "--markets", ",".join(spec.markets),
        "--train-start", spec.train_start.isoformat(), "--train-end", spec.train_end.isoformat(),
        "--eval-start", spec.eval_start.isoformat(), "--eval-end", spec.eval_end.isoformat(),
        "--timesteps", "256", "--step-s", str(spec.step_s), "--episode-steps", "20",
        "--hp", "n_steps=128", "--hp", "batch_size=64", "--hp", "n_epochs=1",
    )  # fmt: skip
    model = RLModel.objects.get(name="cli-here")
    assert model.status == "ready", model.error
    assert "cli-here v1 (ready) trained" in capsys.readouterr().out
