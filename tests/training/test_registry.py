"""The registry services and admin on real trained artifacts (the task runs in-process here;
test_celery_worker.py runs it on a real worker)."""

from __future__ import annotations

import html
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from apps.marketdata.models import OrderbookSnapshot
from apps.training import services
from apps.training.artifacts import ArtifactError
from apps.training.models import ModelStatus, RLModel, TradingEpisode
from apps.training.selectors import active_model_for, model_history
from apps.training.spec import RunSpec
from apps.training.tasks import train_model_task
from apps.ui import formatting
from tests.training.conftest import small_spec
from tests.training.data_support import record_books

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def trained(markets: list[str], **overrides) -> RLModel:
    model = services.start_training_run(spec=small_spec(markets, **overrides), enqueue=False)
    result = train_model_task(model.pk)
    model.refresh_from_db()
    assert model.status == ModelStatus.READY, (result, model.error)
    return model


def test_a_run_leaves_a_verified_artifact_episodes_and_metrics(recorded_markets) -> None:
    model = trained(recorded_markets)
    assert Path(model.artifact_path).is_file()
    agent = services.load_policy(model)
    action, _ = agent.predict(np.zeros(545, dtype=np.float32), deterministic=True)
    assert action.shape == (len(recorded_markets),)
    episodes = TradingEpisode.objects.filter(model=model, mode="evaluation")
    assert episodes.count() == 2
    assert all(len(e.equity_curve) == e.steps + 1 for e in episodes)
    metrics = model.metrics
    assert set(metrics["baselines"]) == {"no_trading", "hold_favourite", "momentum"}
    assert metrics["baselines"]["no_trading"]["mean_return"] == 0.0
    # Every figure comes with its interval, and the gate's comparison is recorded.
    low, high = metrics["evaluation"]["pnl_per_hour_dollars_ci"]
    assert low <= metrics["evaluation"]["pnl_per_hour_dollars"] <= high
    assert metrics["versus_no_trading"]["metric"] == "pnl_per_hour_dollars"
    assert metrics["beats_no_trading"] == (metrics["versus_no_trading"]["ci"][0] > 0)
    assert metrics["training"]["timesteps"] >= 512
    assert model.progress["fraction"] == 1.0


def test_promote_then_rollback_keeps_exactly_one_active_version(recorded_markets, admin_user):
    v1 = trained(recorded_markets)
    v2 = trained(recorded_markets, seed=4)
    assert (v1.version, v2.version) == (1, 2)
    services.promote_model(model=v1, promoted_by=admin_user)
    services.promote_model(model=v2, promoted_by=admin_user)
    assert RLModel.objects.filter(name="tiny", status="active").count() == 1
    assert active_model_for("tiny").version == 2
    back = services.rollback_model(name="tiny")
    assert back.version == 1
    assert RLModel.objects.filter(name="tiny", status="active").count() == 1
    assert RLModel.objects.get(pk=v2.pk).status == ModelStatus.RETIRED
    assert [m.version for m in model_history("tiny")] == [2, 1]
    with pytest.raises(services.RegistryError, match="no earlier promoted version"):
        services.rollback_model(name="tiny")


def test_a_corrupted_artifact_is_refused_everywhere(recorded_markets) -> None:
    model = trained(recorded_markets)
    with Path(model.artifact_path).open("ab") as handle:
        handle.write(b"tampered")
    with pytest.raises(ArtifactError, match="refusing to load"):
        services.load_policy(model)
    with pytest.raises(ArtifactError):
        services.promote_model(model=model)
    assert RLModel.objects.get(pk=model.pk).status == ModelStatus.READY


def test_the_promotion_gate_refuses_a_weak_model_with_a_reason(recorded_markets, settings):
    model = trained(recorded_markets)
    settings.RL_PROMOTION_MIN_SHARPE = 1e9
    with pytest.raises(services.PromotionRefused, match="below the promotion threshold"):
        services.promote_model(model=model)


def test_cleanup_keeps_the_newest_and_the_active_and_removes_artifacts(recorded_markets):
    v1 = trained(recorded_markets)
    trained(recorded_markets)
    v3 = trained(recorded_markets)
    services.promote_model(model=v1)
    deleted = services.cleanup_models(name="tiny", keep_last=1)
    assert deleted == [2]
    assert sorted(RLModel.objects.values_list("version", flat=True)) == [1, 3]
    assert not (Path(v3.artifact_path).parent.parent / "v2").exists()


def test_a_failing_run_ends_failed_with_the_error_and_no_artifact(settings) -> None:
    # The market's data is there when the run is queued and gone when the worker loads it:
    # loading its history fails inside the task.
    t0 = datetime(2020, 1, 1, tzinfo=UTC)
    record_books(["KX-NOTHING"], t0, t0 + timedelta(seconds=20))
    spec = RunSpec(
        name="tiny",
        algorithm="PPO",
        markets=["KX-NOTHING"],
        train_start=t0,
        train_end=t0 + timedelta(seconds=10),
        eval_start=t0 + timedelta(seconds=10),
        eval_end=t0 + timedelta(seconds=20),
        total_timesteps=64,
        step_s=0.02,
        episode_steps=20,
    )
    model = services.start_training_run(spec=spec, enqueue=False)
    OrderbookSnapshot.objects.filter(market_ticker="KX-NOTHING").delete()
    train_model_task(model.pk)
    model.refresh_from_db()
    assert model.status == ModelStatus.FAILED
    assert "no trusted recorded book in the training window for KX-NOTHING" in model.error
    assert not Path(settings.MODEL_DIR, "tiny", "v1").exists()


def test_admin_actions_drive_the_services(recorded_markets, admin_client) -> None:
    v1 = trained(recorded_markets)
    v2 = trained(recorded_markets)
    url = "/admin/training/rlmodel/"
    page = admin_client.get(url)
    assert page.status_code == 200 and b"Held-out Sharpe" in page.content
    # Promotion and rollback act only on the confirmation page's post.
    admin_client.post(url, {"action": "promote", "_selected_action": [v1.pk]})
    assert active_model_for("tiny") is None
    confirm = {"confirm": "promote"}
    admin_client.post(url, {"action": "promote", "_selected_action": [v1.pk], **confirm})
    admin_client.post(url, {"action": "promote", "_selected_action": [v2.pk], **confirm})
    assert active_model_for("tiny").pk == v2.pk
    assert RLModel.objects.get(pk=v2.pk).promoted_by.username == "admin"
    admin_client.post(url, {"action": "rollback", "_selected_action": [v2.pk]})
    assert active_model_for("tiny").pk == v2.pk
    admin_client.post(
        url, {"action": "rollback", "_selected_action": [v2.pk], "confirm": "rollback"}
    )
    assert active_model_for("tiny").pk == v1.pk
    response = admin_client.post(
        url, {"action": "cancel", "_selected_action": [v1.pk]}, follow=True
    )
    assert b"is not training" in response.content
    admin_client.post(url, {"action": "retire", "_selected_action": [v1.pk]})
    assert active_model_for("tiny") is None
    detail = admin_client.get(f"{url}{v1.pk}/change/")
    assert detail.status_code == 200 and b"evaluation" in detail.content
    # The page shows the trained model's own held-out figures with their intervals.
    agent = RLModel.objects.get(pk=v1.pk).metrics["evaluation"]
    page = html.unescape(detail.content.decode())
    ci = formatting.interval(agent["pnl_per_hour_dollars_ci"], "pnl_per_hour_dollars")
    assert ci and f"95% CI {ci}" in page
    assert formatting.metric(agent["pnl_per_hour_dollars"], "pnl_per_hour_dollars") in page


def test_the_admin_start_form_queues_a_run_and_rejects_bad_input(
    recorded_markets, admin_client, monkeypatch
) -> None:
    from kalshiflow_site.celery import app

    # No worker in this test: run the queued task in-process.
    monkeypatch.setitem(app.conf, "task_always_eager", True)
    spec = small_spec(recorded_markets)
    form = {
        "name": "from-admin",
        "algorithm": "PPO",
        "markets": ",".join(recorded_markets),
        "train_start": spec.train_start.isoformat(),
        "train_end": spec.train_end.isoformat(),
        "eval_start": spec.eval_start.isoformat(),
        "eval_end": spec.eval_end.isoformat(),
        "total_timesteps": 256,
        "seed": 1,
        "step_s": 0.02,
        "episode_steps": 20,
        "hyperparameters": '{"learnin_rate": 0.1}',
        "mode": "training",
    }
    page = admin_client.get("/admin/training/rlmodel/start/")
    assert page.status_code == 200
    bad = admin_client.post("/admin/training/rlmodel/start/", form)
    assert bad.status_code == 200 and b"unknown hyperparameter" in bad.content
    live = admin_client.post("/admin/training/rlmodel/start/", {**form, "mode": "live"})
    assert b"not one of the available choices" in live.content
    assert not RLModel.objects.filter(name="from-admin").exists()
    form["hyperparameters"] = '{"n_steps": 128, "batch_size": 64}'
    ok = admin_client.post("/admin/training/rlmodel/start/", form)
    assert ok.status_code == 302
    assert RLModel.objects.get(name="from-admin").status == ModelStatus.READY


def test_a_run_steps_several_envs_per_forward_pass(recorded_markets) -> None:
    model = trained(recorded_markets, n_envs=3, total_timesteps=768)
    assert model.progress["timesteps"] >= 768
    assert model.metrics["evaluation"]["episodes"] == 2
    assert services.spec_of(model).n_envs == 3


def test_each_version_has_its_tensorboard_run_with_the_held_out_scalars(
    recorded_markets, settings, admin_client
) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model = trained(recorded_markets)
    folder = services.tensorboard_dir(name="tiny", version=model.version)
    runs = [p for p in folder.iterdir() if p.is_dir()]
    assert len(runs) == 1, runs  # one run directory per registry name and version
    events = EventAccumulator(str(runs[0]))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert "train/loss" in tags  # SB3's own scalars
    agent = model.metrics["evaluation"]
    for tag in ("heldout/agent/pnl_per_hour_dollars", "heldout/no_trading/turnover"):
        assert tag in tags, sorted(tags)
    logged = events.Scalars("heldout/agent/pnl_per_hour_dollars")[-1].value
    assert logged == pytest.approx(agent["pnl_per_hour_dollars"], rel=1e-6, abs=1e-6)
    assert "heldout/agent_minus_no_trading/pnl_per_hour_dollars_ci_low" in tags
    page = admin_client.get(f"/admin/training/rlmodel/{model.pk}/change/").content.decode()
    assert f"--logdir {folder}" in page
