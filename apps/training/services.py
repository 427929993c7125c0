"""Changing the model registry: start, cancel, promote, roll back, retire, clean up.

Each service takes keyword-only arguments and runs in one transaction; admin actions, views,
the ``train`` command and the Celery task all call these, never the models directly.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import uuid
from datetime import datetime
from typing import Any

from django.db import transaction
from django.utils import timezone

from apps.training.artifacts import ArtifactError
from apps.training.launch import RegistryError, create_run
from apps.training.models import (
    EpisodeMode,
    ModelStatus,
    RLModel,
    Study,
    TradingEpisode,
    WalkForward,
    WalkForwardFold,
)
from apps.training.runs import note
from apps.training.selectors import (  # noqa: F401  (spec_of re-exported)
    previous_promoted,
    promotion_check,
    recorded_span,
    running_training_count,
    spec_of,
)
from apps.training.spec import NON_FIELD, RunSpec, SpecError, validate_spec
from apps.training.storage import (  # noqa: F401  (re-exported: the registry's public face)
    artifact_dir,
    load_policy,
    memory_budget_bytes,
    tensorboard_dir,
)
from apps.training.tasks import study_trial_task, train_model_task, walkforward_fold_task
from apps.training.tuning import DEFAULT_SPACE, MAX_TRIALS, create_optuna_study, validate_space
from apps.training.walkforward import rolling_windows

log = logging.getLogger(__name__)


class PromotionRefused(RegistryError):
    """The model does not meet the promotion gate."""


@transaction.atomic
def start_training_run(*, spec: RunSpec, enqueue: bool = True, check_limit: bool = True) -> RLModel:
    """Validate ``spec``, create the model row (status training) and queue the Celery task.

    Raises :class:`SpecError` before anything is written when the spec is invalid (bounds,
    types, an estimated memory over ``RL_TRAINING_MEMORY_BUDGET_MB``, markets that are not
    recorded or windows without enough recorded ticks: :func:`datachecks.validate_run`), and
    :class:`RegistryError` when the concurrency limit is reached or the parent is missing.
    ``check_limit=False`` is for the folds of a walk-forward, which are queued together and
    run as fast as the workers that exist take them. ``enqueue=False`` only writes the row
    (the caller runs it: :func:`run_training_here`).
    """
    model = create_run(spec=spec, check_limit=check_limit)
    if enqueue:
        transaction.on_commit(lambda: train_model_task.delay(model.pk))
    log.info("training run %s v%s queued (%s)", model.name, model.version, spec.algorithm)
    return model


def run_training_here(*, model: RLModel) -> dict[str, Any]:
    """Run the queued ``model``'s task in this process (Celery's ``apply``: the same task,
    not through the queue), for a command that waits for its run when no worker answers."""
    return train_model_task.apply(args=(model.pk,)).get()


@transaction.atomic
def start_walkforward(
    *,
    spec: RunSpec,
    folds: int,
    train_segments: int = 3,
    span: tuple[datetime, datetime] | None = None,
    enqueue: bool = True,
) -> WalkForward:
    """A walk-forward evaluation of ``spec`` (its windows are replaced by the folds'): one
    registry version per fold over rolling windows of ``span`` (default: the markets'
    recorded span), each queued as its own Celery task. Every fold's spec is validated before
    anything is written (a :class:`SpecError` names the fold)."""
    span = span or recorded_span(spec.markets)
    if span is None:
        raise RegistryError(f"no recorded deltas for {', '.join(spec.markets)}")
    try:
        windows = rolling_windows(*span, folds=folds, train_segments=train_segments)
    except ValueError as exc:
        raise SpecError({NON_FIELD: [str(exc)]}) from None
    walkforward = WalkForward.objects.create(
        name=spec.name,
        base_spec=spec.as_json(),
        settings={
            "folds": folds,
            "train_segments": train_segments,
            "span": [span[0].isoformat(), span[1].isoformat()],
        },
    )
    rows = []
    for index, (train_start, train_end, test_start, test_end) in enumerate(windows):
        fold_spec = dataclasses.replace(
            spec,
            train_start=train_start,
            train_end=train_end,
            eval_start=test_start,
            eval_end=test_end,
        )
        try:
            model = start_training_run(spec=fold_spec, enqueue=False, check_limit=False)
        except SpecError as exc:
            raise SpecError(
                {k: [f"fold {index}: {m}" for m in v] for k, v in exc.errors.items()}
            ) from None
        rows.append(
            WalkForwardFold.objects.create(
                walkforward=walkforward,
                index=index,
                model=model,
                train_start=train_start,
                train_end=train_end,
                test_start=test_start,
                test_end=test_end,
            )
        )
    if enqueue:
        for fold in rows:
            transaction.on_commit(
                lambda f=fold: walkforward_fold_task.delay(f.model_id, walkforward.pk)
            )
    log.info("%s queued: %d folds", walkforward, len(rows))
    return walkforward


@transaction.atomic
def start_study(
    *,
    spec: RunSpec,
    n_trials: int,
    search_space: dict[str, Any] | None = None,
    evaluate_every: int | None = None,
    enqueue: bool = True,
) -> Study:
    """An Optuna study over ``search_space`` (default :data:`tuning.DEFAULT_SPACE`) around
    ``spec``, with a budget of ``n_trials`` trial tasks queued for any worker. Intermediate
    held-out evaluations every ``evaluate_every`` timesteps (default: a quarter of the run;
    0 = none) feed the pruner. Raises :class:`SpecError` before anything is written."""
    validate_spec(spec, memory_budget_bytes=memory_budget_bytes())
    space = validate_space(DEFAULT_SPACE if search_space is None else search_space, spec.algorithm)
    problems = []
    if not 1 <= n_trials <= MAX_TRIALS:
        problems.append(f"the budget must be 1 to {MAX_TRIALS} trials, not {n_trials}")
    every = spec.total_timesteps // 4 if evaluate_every is None else evaluate_every
    if not 0 <= every <= spec.total_timesteps:
        problems.append(f"evaluate_every must be 0 to total_timesteps, not {every}")
    if problems:
        raise SpecError({NON_FIELD: problems})
    study = Study.objects.create(
        name=spec.name,
        optuna_name=f"{spec.name}-{uuid.uuid4().hex[:12]}",
        base_spec=spec.as_json(),
        search_space=space,
        n_trials=n_trials,
        evaluate_every=every,
    )
    create_optuna_study(study.optuna_name)
    if enqueue:
        for _ in range(n_trials):
            transaction.on_commit(lambda: study_trial_task.delay(study.pk))
    log.info("%s queued: %d trials", study, n_trials)
    return study


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
    "start_study",
    "start_training_run",
    "start_walkforward",
    "update_episode",
]
