"""Every registry load goes through the verified loader: promotion, rollback and the
fine-tuning parent refuse a pickle payload (even with a matching sha256) and a path outside
MODEL_DIR, and nothing in the file runs."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import torch

from apps.simulation.env import EnvConfig, KalshiTradingEnv
from apps.simulation.synthetic import synthetic_history
from apps.training import services
from apps.training.artifacts import ArtifactError, sha256_of
from apps.training.models import ModelStatus, RLModel
from apps.training.spec import RunSpec
from apps.training.tasks import train_model_task
from apps.training.trainer import new_model
from tests.trading.support import policy_model, register
from tests.training.artifact_support import SENTINEL_ENV, malicious_sb3_zip, pwned
from tests.training.data_support import record_books

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 11, 1, tzinfo=UTC)


@pytest.fixture
def sentinel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv(SENTINEL_ENV, raising=False)
    return tmp_path / "pwned.txt"


def poison(row: RLModel, sentinel: Path) -> None:
    """Swap the row's artifact for an SB3 zip carrying a payload; the sha256 follows it."""
    path = Path(row.artifact_path)
    malicious_sb3_zip(policy_model(len(row.markets)), path, sentinel)
    RLModel.objects.filter(pk=row.pk).update(artifact_sha256=sha256_of(path))
    row.refresh_from_db()


def test_promotion_refuses_a_payload_with_a_matching_sha256(sentinel) -> None:
    row = register(["M-A", "M-B"])
    poison(row, sentinel)
    with pytest.raises(ArtifactError, match=r"Stable-Baselines3 model\.zip is refused"):
        services.promote_model(model=row)
    assert not pwned(sentinel)
    assert RLModel.objects.get(pk=row.pk).status == ModelStatus.READY


def test_rollback_refuses_a_version_whose_artifact_was_swapped(sentinel) -> None:
    v1, v2 = register(["M-A"]), register(["M-A"])
    services.promote_model(model=v1)
    services.promote_model(model=v2)
    poison(v1, sentinel)
    with pytest.raises(ArtifactError, match="refused"):
        services.rollback_model(name="paper")
    assert not pwned(sentinel)
    assert RLModel.objects.get(pk=v2.pk).status == ModelStatus.ACTIVE


def test_an_artifact_path_outside_model_dir_is_refused(settings, tmp_path) -> None:
    row = register(["M-A"])
    elsewhere = tmp_path / "elsewhere.zip"
    shutil.copy(row.artifact_path, elsewhere)  # the very same bytes: the sha256 matches
    for path in (str(elsewhere), "../elsewhere.zip", f"{settings.MODEL_DIR}/../elsewhere.zip"):
        RLModel.objects.filter(pk=row.pk).update(artifact_path=path)
        row.refresh_from_db()
        with pytest.raises(ArtifactError, match="outside the artifact root"):
            services.load_policy(row)
        with pytest.raises(ArtifactError, match="outside the artifact root"):
            services.promote_model(model=row)
    # Relative to MODEL_DIR is where it belongs.
    RLModel.objects.filter(pk=row.pk).update(artifact_path="paper/v1/model.zip")
    row.refresh_from_db()
    services.promote_model(model=row)


def spec(markets: list[str], **overrides) -> RunSpec:
    values = dict(
        name="paper",
        algorithm="PPO",
        markets=markets,
        train_start=T0,
        train_end=T0 + timedelta(seconds=30),
        eval_start=T0 + timedelta(seconds=30),
        eval_end=T0 + timedelta(seconds=60),
        total_timesteps=64,
        hyperparameters={"n_steps": 32, "batch_size": 32},
        step_s=0.05,
        episode_steps=20,
        parent_version=1,
    )
    values.update(overrides)
    return RunSpec(**values)


def test_a_poisoned_parent_is_refused_at_queueing_and_again_in_the_task(sentinel) -> None:
    record_books(["M-A", "M-B"], T0, T0 + timedelta(seconds=60))
    parent = register(["M-A", "M-B"])
    child = services.start_training_run(spec=spec(["M-A", "M-B"]), enqueue=False)
    assert child.parent_id == parent.pk
    poison(parent, sentinel)  # after queueing: the worker must refuse it
    result = train_model_task(child.pk)
    child.refresh_from_db()
    assert result["status"] == ModelStatus.FAILED and child.status == ModelStatus.FAILED
    assert "ArtifactError" in child.error and "Stable-Baselines3" in child.error
    with pytest.raises(services.RegistryError, match="cannot fine-tune from paper v1"):
        services.start_training_run(spec=spec(["M-A", "M-B"]), enqueue=False)
    with pytest.raises(services.RegistryError, match="keeps the parent's algorithm and markets"):
        services.start_training_run(spec=spec(["M-A"]), enqueue=False)
    assert not pwned(sentinel)


def test_fine_tuning_starts_from_the_parents_weights(tmp_path) -> None:
    parent = register(["M-A", "M-B"], seed=5)
    policy = services.load_policy(parent)
    env = KalshiTradingEnv(
        synthetic_history(markets=2, ticks=60), config=EnvConfig(episode_steps=10)
    )
    run = spec(["M-A", "M-B"], seed=9)
    child = new_model(run, env, tensorboard_dir=tmp_path, parent_policy=policy)
    fresh = new_model(run, env, tensorboard_dir=tmp_path)
    for name, tensor in policy.state_dict().items():
        assert torch.equal(child.policy.state_dict()[name], tensor), name
    obs = np.random.default_rng(0).uniform(-1, 1, (50, 545)).astype(np.float32)
    assert not torch.equal(
        fresh.policy.state_dict()["action_net.weight"], policy.state_dict()["action_net.weight"]
    )
    assert np.array_equal(
        child.predict(obs, deterministic=True)[0], policy.predict(obs, deterministic=True)[0]
    )
