"""Optuna studies stored in PostgreSQL, trials run as Celery tasks by two real workers."""

from __future__ import annotations

import time
from io import StringIO

import optuna
import pytest
from django.core.management import call_command

from apps.training import services, tuning
from apps.training.models import ModelStatus, RLModel, Study, StudyStatus
from apps.training.spec import SpecError
from tests.training.conftest import small_spec
from tests.training.worker_support import celery_workers


@pytest.fixture(autouse=True)
def _close_optuna_connections():
    """Optuna's engine holds connections to the test database: close them after each test
    (the test database cannot be dropped while they are open)."""
    yield
    tuning.close_storage()


def study_spec(markets: list[str], **overrides):
    return small_spec(markets, **{"total_timesteps": 256, **overrides})


def test_a_search_space_is_validated_against_the_hyperparameter_bounds() -> None:
    assert tuning.validate_space(tuning.DEFAULT_SPACE, "PPO") == tuning.DEFAULT_SPACE
    with pytest.raises(SpecError, match="not a hyperparameter of A2C"):
        tuning.validate_space({"clip_range": {"type": "float", "low": 0.1, "high": 0.3}}, "A2C")
    with pytest.raises(SpecError, match=r"gamma: 1.5 is outside \(0, 1\]"):
        tuning.validate_space({"gamma": {"type": "float", "low": 0.9, "high": 1.5}}, "PPO")
    with pytest.raises(SpecError, match="log range"):
        tuning.validate_space(
            {"ent_coef": {"type": "float", "low": 0.0, "high": 0.1, "log": True}}, "PPO"
        )
    with pytest.raises(SpecError, match="low < high"):
        tuning.validate_space({"learning_rate": {"type": "float", "low": 0.1, "high": 0.01}}, "PPO")


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_a_study_runs_its_trials_on_two_real_workers(recorded_markets, tmp_path) -> None:
    with celery_workers(tmp_path, 2) as workers:
        study = services.start_study(
            spec=study_spec(recorded_markets, name="tuned"), n_trials=4, evaluate_every=128
        )
        deadline = time.monotonic() + 400
        while Study.objects.get(pk=study.pk).status == StudyStatus.RUNNING:
            assert time.monotonic() < deadline, list(study.trials.values("state", "worker"))
            time.sleep(1)
    study.refresh_from_db()
    trials = list(study.trials.select_related("model").order_by("number"))
    assert [t.number for t in trials] == [0, 1, 2, 3]
    # Both worker processes executed trials, and each trial records which one.
    assert {t.worker.split("@")[0] + "@" for t in trials} == set(workers)
    # The study lives in PostgreSQL (Optuna's RDB storage): the same trials, values, states.
    stored = optuna.load_study(study_name=study.optuna_name, storage=tuning.storage())
    assert "postgresql" in tuning.storage_url()
    by_number = {t.number: t for t in stored.trials}
    completed = [t for t in trials if t.state == "complete"]
    assert len(completed) >= 2  # the pruner only acts after two completed trials
    for trial in trials:
        frozen = by_number[trial.number]
        assert frozen.state.name.lower() == trial.state
        assert frozen.params == trial.params
        assert trial.intermediate and trial.intermediate[0][0] >= 128
        assert dict(frozen.intermediate_values) == {s: v for s, v in trial.intermediate}
        # Each trial is a registry version whose hyperparameters are the trial's parameters.
        assert trial.model is not None and trial.model.name == "tuned"
        assert {k: trial.model.hyperparameters[k] for k in trial.params} == trial.params
    for trial in completed:
        assert trial.model.status == ModelStatus.READY
        assert trial.value == trial.model.metrics["evaluation"]["pnl_per_hour_dollars"]
    best = max(completed, key=lambda t: (t.value, -t.number))
    assert study.best["number"] == best.number == stored.best_trial.number
    assert study.best["model_id"] == best.model_id
    out = StringIO()
    call_command("study", "status", str(study.pk), stdout=out)
    text = out.getvalue()
    assert f"best: trial {best.number}" in text and all(w in text for w in workers)
    assert tuning.plot_png(study, "history").startswith(b"\x89PNG")


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_the_admin_starts_a_study_shows_its_trials_plots_and_promotes_the_best(
    recorded_markets, admin_client, monkeypatch
) -> None:
    from kalshiflow_site.celery import app

    monkeypatch.setitem(app.conf, "task_always_eager", True)  # no worker in this test
    assert admin_client.get("/admin/training/study/start/").status_code == 200
    form = {
        "name": "tuned-admin",
        "algorithm": "PPO",
        "markets": ",".join(recorded_markets),
        "total_timesteps": 256,
        "seed": 0,
        "step_s": 0.02,
        "episode_steps": 20,
        "eval_episodes": 2,
        "hyperparameters": '{"n_steps": 128, "batch_size": 64}',
        "n_trials": 2,
        "evaluate_every": 0,
        "search_space": '{"gamma": {"type": "float", "low": 0.9, "high": 1.5}}',
    }
    bad = admin_client.post("/admin/training/study/start/", form)
    assert bad.status_code == 200 and b"is outside" in bad.content
    assert not Study.objects.exists()
    form["search_space"] = '{"learning_rate": {"type": "float", "low": 0.0001, "high": 0.01}}'
    ok = admin_client.post("/admin/training/study/start/", form)
    assert ok.status_code == 302, ok.content[:2000]
    study = Study.objects.get(name="tuned-admin")
    assert study.status == StudyStatus.DONE and study.trials.count() == 2
    page = admin_client.get(ok["Location"]).content.decode()
    for trial in study.trials.all():
        assert f"/admin/training/rlmodel/{trial.model_id}/change/" in page
    assert f"{study.best['params']['learning_rate']:.6g}" in page
    plot = admin_client.get(f"/admin/training/study/{study.pk}/plot/history.png")
    assert plot.status_code == 200 and plot.content.startswith(b"\x89PNG")
    assert f"/admin/training/study/{study.pk}/plot/history.png" in page
    # Promoting the best goes through the registry's confirmation page and gate.
    best = RLModel.objects.get(pk=study.best["model_id"])
    confirm = admin_client.post(
        "/admin/training/rlmodel/", {"action": "promote", "_selected_action": [best.pk]}
    )
    assert confirm.status_code == 200 and b"confirm-promotion" in confirm.content
    assert f'name="_selected_action" value="{best.pk}"' in page
    admin_client.post(
        "/admin/training/rlmodel/",
        {"action": "promote", "_selected_action": [best.pk], "confirm": "promote"},
    )
    best.refresh_from_db()
    assert best.status == ModelStatus.ACTIVE


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_intermediate_held_out_evaluations_reach_the_pruner_and_can_stop_a_run(
    recorded_markets,
) -> None:
    from apps.training.runs import execute_training_run

    reports = []

    def prune_at_the_second(step: int, metrics: dict) -> bool:
        reports.append((step, metrics))
        return len(reports) == 2

    spec = study_spec(recorded_markets, total_timesteps=1024)
    model = services.start_training_run(spec=spec, enqueue=False)
    result = execute_training_run(model.pk, on_evaluation=prune_at_the_second, evaluate_every=256)
    model.refresh_from_db()
    assert result["pruned"] and model.status == ModelStatus.CANCELLED
    assert "pruned by its study" in model.error and not model.artifact_path
    assert [step for step, _ in reports] == [256, 512]
    # Each report is a held-out evaluation of the policy at that point (agent metrics).
    assert all(
        m["episodes"] == spec.eval_episodes and "pnl_per_hour_dollars" in m for _, m in reports
    )
