"""Where a registry version's files live and how its policy comes back from disk.

Both sides of a run use this: the services that queue, promote and roll back (they load the
artifact exactly as the paper trader will) and the worker that trains (it writes there and
loads a parent to fine-tune). It sits below both so neither imports the other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings

from apps.training.artifacts import load_verified
from apps.training.models import RLModel


def artifact_dir(*, name: str, version: int) -> Path:
    return Path(settings.MODEL_DIR) / name / f"v{version}"


def tensorboard_dir(*, name: str, version: int) -> Path:
    """One TensorBoard run directory per registry name and version (SB3's scalars and the
    held-out evaluation's): ``tensorboard --logdir`` it, or its parent for every version."""
    return Path(settings.VAR_DIR) / "tensorboard" / name / f"v{version}"


def memory_budget_bytes() -> int:
    """``RL_TRAINING_MEMORY_BUDGET_MB`` in bytes: the most a run's arrays may take."""
    return int(settings.RL_TRAINING_MEMORY_BUDGET_MB) * 2**20


def load_policy(model: RLModel) -> Any:
    """The verified policy of a registry version: its artifact must lie inside ``MODEL_DIR``
    and have the recorded sha256, and it is rebuilt from the row's algorithm and markets
    with only tensors read from the file (see :mod:`apps.training.artifacts`).

    Raises :class:`~apps.training.artifacts.ArtifactError` with the reason otherwise.
    """
    return load_verified(
        path=model.artifact_path,
        sha256=model.artifact_sha256,
        algorithm=model.algorithm,
        n_markets=len(model.markets),
        root=settings.MODEL_DIR,
    )
