"""Training runs on a real Celery worker over the machine's Redis."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.db import connection

from apps.training import services
from apps.training.models import ModelStatus, RLModel, TradingEpisode
from tests.conftest import REPO_ROOT
from tests.training.conftest import small_spec

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.redis,
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
]


@pytest.fixture
def celery_worker(tmp_path: Path, settings):
    """A real worker process on the test database and Redis, sharing this test's MODEL_DIR."""
    db = connection.settings_dict
    host, port = db["HOST"] or "127.0.0.1", db["PORT"] or 5432
    env = {
        **os.environ,
        "DATABASE_URL": f"postgres://{db['USER']}@{host}:{port}/{db['NAME']}",
        "REDIS_URL": django_settings.REDIS_URL,
        "MODEL_DIR": str(settings.MODEL_DIR),
        "RL_VAR_DIR": str(tmp_path),
        "RL_TRAINING_MAX_CONCURRENT": "4",
    }
    # Start from an empty queue: nothing queued by an earlier run may reach this worker.
    subprocess.run(
        [sys.executable, "-m", "celery", "-A", "kalshiflow_site", "purge", "-f"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        timeout=60,
    )
    log = tmp_path / "worker.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "kalshiflow_site",
                "worker",
                "--pool",
                "solo",
                "--concurrency",
                "1",
                "--loglevel",
                "INFO",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
            ],
            cwd=REPO_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    settings.RL_TRAINING_MAX_CONCURRENT = 4
    proc.var_dir = tmp_path  # where the worker writes var/ (TensorBoard logs)
    yield proc
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def wait_done(model: RLModel, timeout_s: float = 240) -> RLModel:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        model.refresh_from_db()
        if model.status != ModelStatus.TRAINING:
            return model
        time.sleep(0.5)
    raise AssertionError(f"{model} still training after {timeout_s}s: {model.progress}")


def test_a_ppo_run_trains_on_the_worker_and_the_registry_works(
    celery_worker, recorded_markets
) -> None:
    first = services.start_training_run(spec=small_spec(recorded_markets, total_timesteps=1024))
    second = services.start_training_run(spec=small_spec(recorded_markets, total_timesteps=1024))
    first, second = wait_done(first), wait_done(second)
    assert first.status == ModelStatus.READY, first.error
    assert second.status == ModelStatus.READY, second.error
    assert first.progress["timesteps"] >= 1024 and first.progress["fps"] > 0
    # Same seed, same data: the held-out evaluation takes exactly the same actions.
    a = list(TradingEpisode.objects.filter(model=first).order_by("id"))
    b = list(TradingEpisode.objects.filter(model=second).order_by("id"))
    assert [e.action_ids for e in a] == [e.action_ids for e in b]
    assert [e.total_return for e in a] == [e.total_return for e in b]
    assert first.artifact_sha256 and Path(first.artifact_path).is_file()
    events = list(celery_worker.var_dir.glob("tensorboard/**/events.out.*"))
    assert events, "TensorBoard event files are written under var/tensorboard"
    services.promote_model(model=first)
    services.promote_model(model=second)
    assert RLModel.objects.filter(status="active").count() == 1
    services.rollback_model(name="tiny")
    assert RLModel.objects.get(status="active").pk == first.pk


def test_a_cancelled_run_ends_cancelled_without_an_artifact(celery_worker, recorded_markets):
    model = services.start_training_run(
        spec=small_spec(recorded_markets, total_timesteps=10_000_000)
    )
    deadline = time.monotonic() + 120
    while RLModel.objects.get(pk=model.pk).progress.get("timesteps", 0) == 0:
        assert time.monotonic() < deadline, "the worker never started the run"
        time.sleep(0.5)
    services.cancel_training_run(model=model)
    time.sleep(5)  # the task checks the flag every ~2 s, then removes its files
    model.refresh_from_db()
    assert model.status == ModelStatus.CANCELLED
    assert not model.artifact_path
    assert not (Path(django_settings.MODEL_DIR) / "tiny" / f"v{model.version}").exists()


def test_bad_hyperparameters_are_rejected_before_anything_is_queued(recorded_markets) -> None:
    with pytest.raises(services.SpecError, match="unknown hyperparameter 'n_step'"):
        services.start_training_run(
            spec=small_spec(recorded_markets, hyperparameters={"n_step": 64})
        )
    assert not RLModel.objects.exists()
