"""Walk-forward evaluation: rolling windows, pooled held-out metrics, folds as Celery tasks
on real workers, and the ``walkforward`` command."""

from __future__ import annotations

import html
import itertools
import time
from datetime import UTC, datetime, timedelta
from io import StringIO

import pytest
from django.core.management import call_command

from apps.training import services
from apps.training.models import (
    HeldOutTraces,
    ModelStatus,
    RLModel,
    WalkForward,
    WalkForwardStatus,
)
from apps.training.pooling import pooled_metrics, traces_from_bytes
from apps.training.tasks import train_model_task
from apps.training.walkforward import rolling_windows
from apps.ui import formatting
from tests.training.conftest import small_spec
from tests.training.worker_support import celery_workers

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def fold_spec(markets: list[str], **overrides):
    return small_spec(markets, step_s=0.01, episode_steps=15, total_timesteps=256, **overrides)


def test_rolling_windows_train_before_their_test_and_cover_the_span() -> None:
    last = T0 + timedelta(hours=6) - timedelta(microseconds=1)
    windows = rolling_windows(T0, last, folds=3, train_segments=3)
    assert len(windows) == 3
    for i, (ts, te, es, ee) in enumerate(windows):
        assert ts == T0 + timedelta(hours=i)
        assert te == es == ts + timedelta(hours=3)  # trained on 3 segments, tested on the next
        assert ee - es == timedelta(hours=1)
    assert windows[-1][3] == last + timedelta(microseconds=1)  # the last delta is tested on
    with pytest.raises(ValueError, match="folds"):
        rolling_windows(T0, last, folds=0)
    with pytest.raises(ValueError, match="empty"):
        rolling_windows(T0, T0 - timedelta(seconds=1), folds=2)


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_pooling_one_version_reproduces_its_own_held_out_metrics(recorded_markets) -> None:
    model = services.start_training_run(spec=fold_spec(recorded_markets), enqueue=False)
    train_model_task(model.pk)
    model.refresh_from_db()
    assert model.status == ModelStatus.READY, model.error
    traces = traces_from_bytes(HeldOutTraces.objects.get(model=model).data)
    assert set(traces) == {"agent", "no_trading", "hold_favourite", "momentum"}
    assert len(traces["agent"]) == 2  # eval_episodes
    pooled = pooled_metrics(traces)
    for key in (
        "pnl_per_hour_dollars",
        "pnl_per_hour_dollars_ci",
        "sharpe_per_hour_ci",
        "turnover",
    ):
        assert pooled["evaluation"][key] == model.metrics["evaluation"][key], key
    assert pooled["versus_no_trading"]["ci"] == model.metrics["versus_no_trading"]["ci"]
    assert pooled["baselines"]["momentum"]["pnl_dollars"] == pytest.approx(
        model.metrics["baselines"]["momentum"]["pnl_dollars"]
    )


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_walkforward_folds_run_as_tasks_on_real_workers_and_pool(
    recorded_markets, tmp_path, settings
) -> None:
    with celery_workers(tmp_path, 2) as workers:
        walkforward = services.start_walkforward(
            spec=fold_spec(recorded_markets, name="wf"), folds=3, train_segments=2
        )
        deadline = time.monotonic() + 300
        while WalkForward.objects.get(pk=walkforward.pk).status == WalkForwardStatus.RUNNING:
            assert time.monotonic() < deadline, list(RLModel.objects.values("status", "error"))
            time.sleep(1)
    walkforward.refresh_from_db()
    assert walkforward.status == WalkForwardStatus.DONE
    folds = list(walkforward.folds.select_related("model").order_by("index"))
    assert [f.model.version for f in folds] == [1, 2, 3]
    assert all(f.model.status == ModelStatus.READY for f in folds)
    assert all(f.worker.startswith(tuple(workers)) for f in folds)
    for earlier, later in itertools.pairwise(folds):
        assert earlier.train_end <= earlier.test_start and later.train_start > earlier.train_start
        assert later.test_start == earlier.test_end  # the test windows tile the held-out time
    metrics = walkforward.metrics
    assert metrics["pooled_folds"] == [0, 1, 2]
    assert [f["version"] for f in metrics["folds"]] == [1, 2, 3]
    pooled = metrics["pooled"]
    assert pooled["evaluation"]["episodes"] == 3 * 2
    low, high = pooled["evaluation"]["pnl_per_hour_dollars_ci"]
    assert low is not None and low <= high
    # Pooling sums what the folds made: P&L, fees and trading are totals over the episodes.
    for key in ("pnl_dollars", "fees_dollars"):
        per_fold = sum(f.model.metrics["evaluation"][key] for f in folds)
        assert pooled["evaluation"][key] == pytest.approx(per_fold, abs=1e-9)
    assert pooled["versus_no_trading"]["ci"][0] is not None


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_the_walkforward_command_queues_folds_and_reports_pooled_metrics(
    recorded_markets, monkeypatch
) -> None:
    from kalshiflow_site.celery import app

    monkeypatch.setitem(app.conf, "task_always_eager", True)  # no worker in this test
    out = StringIO()
    call_command(
        "walkforward",
        "--name=wf-cli",
        f"--markets={','.join(recorded_markets)}",
        "--folds=2",
        "--train-segments=2",
        "--timesteps=256",
        "--step-s=0.01",
        "--episode-steps=15",
        "--eval-episodes=2",
        "--hp=n_steps=128",
        "--hp=batch_size=64",
        stdout=out,
    )
    text = out.getvalue()
    assert "pooled over folds [0, 1]" in text and "no_trading" in text
    assert RLModel.objects.filter(name="wf-cli", status=ModelStatus.READY).count() == 2
    with pytest.raises(Exception, match=r"fold 0: .*unknown hyperparameter"):
        call_command("walkforward", "--name=bad", "--folds=2", "--hp=n_step=1", stdout=out)
    assert not WalkForward.objects.filter(name="bad").exists()


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_the_admin_starts_a_walkforward_and_shows_folds_and_pooled_metrics(
    recorded_markets, admin_client, monkeypatch
) -> None:
    from kalshiflow_site.celery import app

    monkeypatch.setitem(app.conf, "task_always_eager", True)  # no worker in this test
    assert admin_client.get("/admin/training/walkforward/").status_code == 200
    assert admin_client.get("/admin/training/walkforward/start/").status_code == 200
    form = {
        "name": "wf-admin",
        "algorithm": "PPO",
        "markets": ",".join(recorded_markets),
        "total_timesteps": 256,
        "seed": 0,
        "step_s": 0.01,
        "episode_steps": 15,
        "eval_episodes": 2,
        "hyperparameters": '{"n_steps": 128, "batch_sise": 64}',
        "folds": 2,
        "train_segments": 2,
    }
    bad = admin_client.post("/admin/training/walkforward/start/", form)
    assert bad.status_code == 200 and b"unknown hyperparameter" in bad.content
    assert not WalkForward.objects.exists()
    form["hyperparameters"] = '{"n_steps": 128, "batch_size": 64}'
    ok = admin_client.post("/admin/training/walkforward/start/", form)
    assert ok.status_code == 302
    walkforward = WalkForward.objects.get(name="wf-admin")
    assert walkforward.status == WalkForwardStatus.DONE
    page = admin_client.get(ok["Location"]).content.decode()
    for fold in walkforward.folds.all():
        assert f"/admin/training/rlmodel/{fold.model_id}/change/" in page
    pooled = walkforward.metrics["pooled"]["evaluation"]
    name = "pnl_per_hour_dollars"
    ci = html.escape(formatting.interval(pooled[f"{name}_ci"], name))
    assert ci and ci in page  # the pooled figure with its interval
    assert "momentum" in page and "no_trading" in page
