"""Changing the model registry: start, cancel, promote, roll back, retire, clean up.

Each service takes keyword-only arguments and runs in one transaction; admin actions, views,
the ``train`` command and the Celery task all call these, never the models directly.
"""

from __future__ import annotations

import logging
import shutil
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from apps.training.artifacts import ArtifactError
from apps.training.datachecks import validate_run
from apps.training.models import EpisodeMode, ModelStatus, RLModel, TradingEpisode
from apps.training.runs import note
from apps.training.selectors import (  # noqa: F401  (spec_of re-exported)
    previous_promoted,
    promotion_check,
    running_training_count,
    spec_of,
)
from apps.training.spec import RunSpec, SpecError
from apps.training.storage import (  # noqa: F401  (re-exported: the registry's public face)
    artifact_dir,
    load_policy,
    memory_budget_bytes,
    tensorboard_dir,
)
from apps.training.tasks import train_model_task

log = logging.getLogger(__name__)


class RegistryError(Exception):
    """A registry operation that cannot be done now; the message says why."""


class PromotionRefused(RegistryError):
    """The model does not meet the promotion gate."""


@transaction.atomic
def start_training_run(*, spec: RunSpec, enqueue: bool = True) -> RLModel:
    """Validate ``spec``, create the model row (status training) and queue the Celery task.

    Raises :class:`SpecError` before anything is written when the spec is invalid (bounds,
    types, an estimated memory over ``RL_TRAINING_MEMORY_BUDGET_MB``, markets that are not
    recorded or windows without enough recorded ticks: :func:`datachecks.validate_run`), and
    :class:`RegistryError` when the concurrency limit is reached or the parent is missing.
    ``enqueue=False`` only writes the row (the caller runs it: :func:`run_training_here`).
    """
    validate_run(spec)
    limit = settings.RL_TRAINING_MAX_CONCURRENT
    if running_training_count() >= limit:
        raise RegistryError(
            f"{limit} training run(s) already running (RL_TRAINING_MAX_CONCURRENT); "
            "wait for one to finish or cancel it"
        )
    parent = None
    if spec.parent_version is not None:
        parent = RLModel.objects.filter(name=spec.name, version=spec.parent_version).first()
        if parent is None or not parent.artifact_sha256:
            raise RegistryError(f"{spec.name} v{spec.parent_version} has no trained artifact")
        if parent.algorithm != spec.algorithm or list(parent.markets) != list(spec.markets):
            raise RegistryError(
                f"{parent} is a {parent.algorithm} policy for {parent.markets}: fine-tuning "
                "keeps the parent's algorithm and markets"
            )
        try:
            load_policy(parent)  # refused now rather than in the worker (checked there again)
        except ArtifactError as exc:
            raise RegistryError(f"cannot fine-tune from {parent}: {exc}") from None
    # Lock this name's rows so two starts cannot take the same version number.
    list(RLModel.objects.select_for_update().filter(name=spec.name).values_list("id"))
    version = (RLModel.objects.filter(name=spec.name).aggregate(v=Max("version"))["v"] or 0) + 1
    model = RLModel.objects.create(
        name=spec.name,
        version=version,
        algorithm=spec.algorithm,
        status=ModelStatus.TRAINING,
        hyperparameters={**spec.hyperparameters, "_spec": spec.as_json()},
        markets=spec.markets,
        parent=parent,
        progress={
            "timesteps": 0,
            "total_timesteps": spec.total_timesteps,
            "fraction": 0.0,
            "phase": "queued",
            "log": [f"{timezone.now():%H:%M:%S} queued: waiting for a worker"],
        },
    )
    if enqueue:
        transaction.on_commit(lambda: train_model_task.delay(model.pk))
    log.info("training run %s v%s queued (%s)", model.name, version, spec.algorithm)
    return model


def run_training_here(*, model: RLModel) -> dict[str, Any]:
    """Run the queued ``model``'s task in this process (Celery's ``apply``: the same task,
    not through the queue), for a command that waits for its run when no worker answers."""
    return train_model_task.apply(args=(model.pk,)).get()


@transaction.atomic
def cancel_training_run(*, model: RLModel) -> RLModel:
    """Mark a queued or running run cancelled; the task stops at its next progress check."""
    model = RLModel.objects.select_for_update().get(pk=model.pk)
    if model.status != ModelStatus.TRAINING:
        raise RegistryError(f"{model} is not training")
    model.status = ModelStatus.CANCELLED
    model.error = "cancelled by a user"
    model.save(update_fields=["status", "error", "updated_at"])
    note(model.pk, "cancel requested: a running task stops at its next check", phase="cancelled")
    return model


@transaction.atomic
def promote_model(*, model: RLModel, promoted_by: Any = None, override_reason: str = "") -> RLModel:
    """Make ``model`` the active version of its name (the previous one is retired).

    Refused unless the model is trained and evaluated, its artifact still has the recorded
    sha256, and it passes the statistical gate (:func:`selectors.promotion_check`: its held-out
    edge over no trading, and ``RL_PROMOTION_MIN_SHARPE`` when set). ``override_reason`` forces
    it past the gate (never past the status or artifact checks); an override needs the user who
    makes it and is recorded on the model with what the gate said.
    """
    model = RLModel.objects.select_for_update().get(pk=model.pk)
    if model.status not in (ModelStatus.READY, ModelStatus.RETIRED):
        raise RegistryError(f"{model} cannot be promoted: only ready or retired models can")
    _check_artifact(model)
    check = promotion_check(model)
    override: dict[str, Any] = {}
    if not check.promotable:
        reason = override_reason.strip()
        if not reason:
            raise PromotionRefused(f"{model} is not promotable: {check}")
        if not getattr(promoted_by, "pk", None):
            raise RegistryError("forcing a promotion past the gate needs the user who does it")
        override = {
            "by": promoted_by.get_username(),
            "user_id": promoted_by.pk,
            "reason": reason[:500],
            "at": timezone.now().isoformat(),
            "gate": check.reasons,
        }
        log.warning("%s promoted past the gate by %s: %s", model, override["by"], reason[:200])
    RLModel.objects.filter(name=model.name, status=ModelStatus.ACTIVE).update(
        status=ModelStatus.RETIRED
    )
    model.status = ModelStatus.ACTIVE
    model.promoted_at = timezone.now()
    model.promoted_by = promoted_by if getattr(promoted_by, "pk", None) else None
    model.promotion_override = override
    model.save(
        update_fields=["status", "promoted_at", "promoted_by", "promotion_override", "updated_at"]
    )
    return model


@transaction.atomic
def rollback_model(*, name: str, promoted_by: Any = None) -> RLModel:
    """Retire the active version of ``name`` and re-activate the one promoted before it."""
    current = RLModel.objects.select_for_update().filter(name=name, status="active").first()
    if current is None:
        raise RegistryError(f"{name} has no active version to roll back")
    # The version promoted most recently before the current one (the confirmation page shows
    # the same selector's answer).
    previous = previous_promoted(current, for_update=True)
    if previous is None:
        raise RegistryError(f"{name} v{current.version} has no earlier promoted version")
    _check_artifact(previous)
    current.status = ModelStatus.RETIRED
    current.save(update_fields=["status", "updated_at"])
    previous.status = ModelStatus.ACTIVE
    previous.save(update_fields=["status", "updated_at"])
    log.info("%s rolled back to v%s by %s", name, previous.version, promoted_by or "system")
    return previous


@transaction.atomic
def retire_model(*, model: RLModel) -> RLModel:
    model = RLModel.objects.select_for_update().get(pk=model.pk)
    if model.status not in (ModelStatus.ACTIVE, ModelStatus.READY):
        raise RegistryError(f"{model} is not active or ready")
    model.status = ModelStatus.RETIRED
    model.save(update_fields=["status", "updated_at"])
    return model


def deletion_refused(model: RLModel) -> str:
    """Why ``model`` must not be deleted ("" when it may be): the active version, or one whose
    paper episodes (the audit trail of its decisions) would go with it."""
    if model.status == ModelStatus.ACTIVE:
        return f"{model} is active: retire it or promote another version first"
    if model.episodes.filter(mode=EpisodeMode.PAPER).exists():
        return f"{model} has paper-trading episodes, whose decisions are an audit trail"
    return ""


def episode_may_go(episode: TradingEpisode) -> bool:
    """Whether an episode may be deleted with its model: an evaluation episode of a model that
    may be deleted; never a paper episode (its decisions are an audit trail)."""
    return episode.mode != EpisodeMode.PAPER and not deletion_refused(episode.model)


def start_paper_episode(*, model_id: int, markets: list[str]) -> int:
    """A new paper-trading episode of registry row ``model_id`` on ``markets``, started now;
    returns its id (the paper trader logs its decisions under it)."""
    episode = TradingEpisode.objects.create(
        model_id=model_id, mode=EpisodeMode.PAPER, markets=markets, started_at=timezone.now()
    )
    return episode.pk


def update_episode(*, episode_id: int, summary: dict[str, Any], ended: bool = False) -> None:
    """Store an episode's running ``summary`` (episode fields: return, P&L, trades, ...); with
    ``ended``, it is the final one and the episode ends now."""
    fields = dict(summary)
    if ended:
        fields["ended_at"] = timezone.now()
    TradingEpisode.objects.filter(pk=episode_id).update(**fields)


@transaction.atomic
def cleanup_models(*, name: str, keep_last: int) -> list[int]:
    """Delete versions of ``name`` beyond the newest ``keep_last`` (never the active one or
    a running one), with their artifacts. Returns the deleted version numbers."""
    if keep_last < 0:
        raise RegistryError("keep_last must be >= 0")
    versions = list(RLModel.objects.filter(name=name).order_by("-version"))
    doomed = [
        m
        for m in versions[keep_last:]
        if m.status != ModelStatus.TRAINING and not deletion_refused(m)
    ]
    deleted = []
    for model in doomed:
        path = artifact_dir(name=model.name, version=model.version)
        version = model.version
        model.delete()
        transaction.on_commit(lambda p=path: shutil.rmtree(p, ignore_errors=True))
        deleted.append(version)
    return deleted


def _check_artifact(model: RLModel) -> None:
    """Promotion and rollback load the artifact exactly as the paper trader will."""
    if not model.artifact_sha256 or not model.artifact_path:
        raise RegistryError(f"{model} has no artifact on disk")
    try:
        load_policy(model)
    except ArtifactError as exc:
        raise ArtifactError(f"{model}: {exc}") from None


__all__ = [
    "PromotionRefused",
    "RegistryError",
    "SpecError",
    "cancel_training_run",
    "cleanup_models",
    "load_policy",
    "promote_model",
    "retire_model",
    "rollback_model",
    "run_training_here",
    "start_paper_episode",
    "start_training_run",
    "update_episode",
]
