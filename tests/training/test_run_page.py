"""The admin's run page and its refresh endpoint, on the progress a task writes; cancelling
from it; and, with Redis and no worker listening, the start form saying so before queueing."""

from __future__ import annotations

import html
import re
from datetime import UTC, datetime, timedelta

import pytest

from apps.training import runs, services
from apps.training.dispatch import worker_status
from apps.training.models import ModelStatus, RLModel
from apps.training.spec import RunSpec
from tests.training.data_support import record_books

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)


def queued(name: str = "paged", total: int = 4096) -> RLModel:
    record_books(["KX-A"], T0, T0 + timedelta(minutes=15))
    spec = RunSpec(
        name=name,
        algorithm="PPO",
        markets=["KX-A"],
        train_start=T0,
        train_end=T0 + timedelta(minutes=10),
        eval_start=T0 + timedelta(minutes=10),
        eval_end=T0 + timedelta(minutes=15),
        total_timesteps=total,
        episode_steps=20,
    )
    return services.start_training_run(spec=spec, enqueue=False)


def snapshot(timesteps: int, reward: float | None, total: int = 4096, fps: float = 512.0):
    return {
        "timesteps": timesteps,
        "total_timesteps": total,
        "fraction": min(1.0, timesteps / total),
        "fps": fps,
        "mean_episode_reward": reward,
        "losses": {},
    }


def test_progress_keeps_a_curve_an_eta_and_a_log_tail() -> None:
    model = queued()
    runs.note(model.pk, "started by a worker", phase="loading")
    runs.set_progress(model.pk, snapshot(512, None))
    for i in range(2, 6):
        runs.set_progress(model.pk, snapshot(512 * i, -0.5 + 0.1 * i))
    runs.set_progress(model.pk, snapshot(2560, 0.9))  # no new timesteps: no new point
    model.refresh_from_db()
    progress = model.progress
    assert progress["curve"] == [[1024, -0.3], [1536, -0.2], [2048, -0.1], [2560, 0.0]]
    assert progress["phase"] == "training"
    assert progress["eta_s"] == pytest.approx((4096 - 2560) / 512)
    assert progress["log"][0].endswith("queued: waiting for a worker")
    assert progress["log"][1].endswith("started by a worker")
    assert progress["log"][-1].endswith(
        "2,560/4,096 steps, 512 steps/s, mean episode reward +0.9000"
    )
    runs.set_progress(model.pk, snapshot(4096, 1.0))
    model.refresh_from_db()
    assert model.progress["phase"] == "evaluating" and model.progress["eta_s"] is None
    assert model.progress["log"][-1].endswith("training done: evaluating on held-out time")


def test_the_curve_and_the_log_stay_bounded_over_a_long_run() -> None:
    model = queued(total=10_000_000)
    for i in range(1, 1001):
        runs.set_progress(model.pk, snapshot(100 * i, float(i), total=10_000_000))
    progress = RLModel.objects.get(pk=model.pk).progress
    assert len(progress["curve"]) <= runs.CURVE_POINTS
    assert progress["curve"][0][0] < 1000 and progress["curve"][-1] == [100_000, 1000.0]
    assert len(progress["log"]) == runs.LOG_LINES


def test_a_cancelled_run_keeps_its_progress_frozen() -> None:
    model = queued()
    runs.set_progress(model.pk, snapshot(1024, 0.1))
    services.cancel_training_run(model=model)
    runs.set_progress(model.pk, snapshot(2048, 0.2))  # a late report from the worker
    progress = RLModel.objects.get(pk=model.pk).progress
    assert progress["timesteps"] == 1024 and progress["phase"] == "cancelled"


def test_the_run_page_shows_status_progress_eta_curve_and_log(admin_client) -> None:
    model = queued()
    for i in range(1, 5):
        runs.set_progress(model.pk, snapshot(512 * i, 0.1 * i))
    page = admin_client.get(f"/admin/training/rlmodel/{model.pk}/run/")
    assert page.status_code == 200
    text = html.unescape(page.content.decode())
    assert 'id="run-progress" max="1" value="0.5"' in text
    assert re.search(r'id="run-percent">50%<', text)
    assert "2,048 / 4,096 steps" in text
    assert 'id="run-eta">4.0 s<' in text  # 2,048 steps left at 512 steps/s
    assert 'id="run-reward">+0.4000<' in text
    assert "2,048/4,096 steps, 512 steps/s" in text  # the log tail
    assert 'id="run-curve" src="data:image/svg+xml;base64,' in text
    assert 'id="cancel-run"' in text
    assert "training/run_page.js" in text
    # The registry's list and the model page link to it.
    listing = admin_client.get("/admin/training/rlmodel/").content.decode()
    assert f'href="/admin/training/rlmodel/{model.pk}/run/"' in listing
    detail = admin_client.get(f"/admin/training/rlmodel/{model.pk}/change/").content.decode()
    assert f'href="/admin/training/rlmodel/{model.pk}/run/"' in detail


def test_the_refresh_endpoint_sends_the_chart_only_when_the_curve_grew(admin_client) -> None:
    model = queued()
    runs.set_progress(model.pk, snapshot(1024, 0.25))
    url = f"/admin/training/rlmodel/{model.pk}/run.json"
    state = admin_client.get(url).json()
    assert state["status"] == "training" and state["phase"] == "training"
    assert state["percent"] == "25%" and state["eta"] == "6.0 s"
    assert state["curve"] == [[1024, 0.25]] and state["points"] == 1
    assert state["chart"].startswith("data:image/svg+xml;base64,")
    assert not state["finished"]
    assert "chart" not in admin_client.get(url, {"points": "1"}).json()
    runs.set_progress(model.pk, snapshot(2048, 0.5))
    grown = admin_client.get(url, {"points": "1"}).json()
    assert grown["points"] == 2 and "chart" in grown
    assert admin_client.get("/admin/training/rlmodel/999999/run.json").status_code == 404


def test_cancel_from_the_run_page(admin_client) -> None:
    model = queued()
    response = admin_client.post(f"/admin/training/rlmodel/{model.pk}/run/cancel/")
    assert response.status_code == 302
    model.refresh_from_db()
    assert model.status == ModelStatus.CANCELLED
    state = admin_client.get(f"/admin/training/rlmodel/{model.pk}/run.json").json()
    assert state["finished"] and state["phase"] == "cancelled"
    assert state["log"][-1].endswith("cancel requested: a running task stops at its next check")
    page = admin_client.get(f"/admin/training/rlmodel/{model.pk}/run/").content.decode()
    assert 'id="cancel-run"' not in page
    # A second cancel says why not, and changes nothing.
    again = admin_client.post(f"/admin/training/rlmodel/{model.pk}/run/cancel/", follow=True)
    assert b"is not training" in again.content


def test_a_user_without_change_permission_cannot_cancel(client, django_user_model) -> None:
    from django.contrib.auth.models import Permission

    model = queued()
    viewer = django_user_model.objects.create_user("viewer", password="x" * 12, is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_rlmodel"))
    client.force_login(viewer)
    page = client.get(f"/admin/training/rlmodel/{model.pk}/run/")
    assert page.status_code == 200 and b'id="cancel-run"' not in page.content
    assert client.post(f"/admin/training/rlmodel/{model.pk}/run/cancel/").status_code == 403
    assert RLModel.objects.get(pk=model.pk).status == ModelStatus.TRAINING


@pytest.mark.redis
def test_with_redis_and_no_worker_the_form_warns_before_queueing(admin_client, settings) -> None:
    """The queue is Redis (this test process's REDIS_URL) and no worker is running."""
    from django.core.cache import cache

    cache.clear()
    settings.RL_WORKER_PING_TIMEOUT_S = 0.5
    status = worker_status()
    assert not status.online and status.transport == "redis"
    record_books(["KX-A"], T0, T0 + timedelta(minutes=15))
    page = admin_client.get("/admin/training/rlmodel/start/")
    text = html.unescape(page.content.decode())
    assert 'id="worker-warning"' in text
    assert "no Celery worker answered within 0.5 s" in text
    assert "celery -A kalshiflow_site worker" in text
    assert 'name="queue_anyway"' in text
    form = {
        "name": "unheard",
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
    }
    refused = admin_client.post("/admin/training/rlmodel/start/", form)
    assert refused.status_code == 200
    assert "Not queued: no Celery worker answered" in html.unescape(refused.content.decode())
    assert not RLModel.objects.exists()
    anyway = admin_client.post("/admin/training/rlmodel/start/", {**form, "queue_anyway": "on"})
    assert anyway.status_code == 302
    model = RLModel.objects.get(name="unheard")
    # Its run page says it waits for a worker, and how to start one.
    run_page = html.unescape(admin_client.get(anyway["Location"]).content.decode())
    assert "queued: waiting for a worker to take it" in run_page
    assert 'id="worker-warning"' in run_page
    assert model.status == ModelStatus.TRAINING
