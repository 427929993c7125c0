"""One training run inside a worker: load the windows, train, evaluate, register.

The Celery task (:mod:`apps.training.tasks`) is a thin shell over :func:`execute_training_run`;
every write of the run's status (progress, failed, cancelled, ready with its evaluation
episodes) is a function here, so the registry's services queue the task without the task
reaching back into them.
"""

from __future__ import annotations

import logging
import shutil
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from django.db import transaction
from django.utils import timezone

from apps.simulation.history import RecordedHistory
from apps.simulation.loader import load
from apps.training.models import (
    EpisodeMode,
    HeldOutTraces,
    ModelStatus,
    RLModel,
    TradingEpisode,
)
from apps.training.pooling import AGENT, traces_to_bytes
from apps.training.selectors import spec_of
from apps.training.storage import artifact_dir, load_policy, tensorboard_dir

if TYPE_CHECKING:
    from apps.training.trainer import TrainOutcome

log = logging.getLogger(__name__)


def set_progress(model_id: int, progress: dict[str, Any]) -> None:
    """Record how far a run is; a run no longer training (cancelled) is left alone."""
    RLModel.objects.filter(pk=model_id, status=ModelStatus.TRAINING).update(
        progress=progress, updated_at=timezone.now()
    )


def is_cancelled(model_id: int) -> bool:
    return RLModel.objects.filter(pk=model_id, status=ModelStatus.CANCELLED).exists()


def mark_failed(model_id: int, exc: BaseException) -> None:
    RLModel.objects.filter(pk=model_id, status=ModelStatus.TRAINING).update(
        status=ModelStatus.FAILED,
        error=f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=5)}"[:4000],
        updated_at=timezone.now(),
    )


def _dt(ns: int) -> datetime:
    return datetime.fromtimestamp(ns / 1e9, UTC)


def _require_data(history: RecordedHistory, window: str) -> None:
    """Training on a window with no trusted book teaches nothing: fail with the reason."""
    empty = [m for j, m in enumerate(history.markets) if not history.trusted[:, j].any()]
    if empty:
        raise ValueError(
            f"no trusted recorded book in the {window} window for {', '.join(empty)}: "
            "record these markets first (ingest_orderbook) or choose another window"
        )


@transaction.atomic
def mark_ready(model_id: int, outcome: TrainOutcome, out_dir: Path) -> str:
    """Register a finished run with its artifact, metrics and evaluation episodes.

    Returns the status the row ends with: ``ready``, or whatever a cancel during evaluation
    left (the artifact is then removed).
    """
    model = RLModel.objects.select_for_update().get(pk=model_id)
    if model.status != ModelStatus.TRAINING:  # cancelled during evaluation
        shutil.rmtree(out_dir, ignore_errors=True)
        return model.status
    spec = spec_of(model)
    model.status = ModelStatus.READY
    model.artifact_path = str(outcome.artifact_path)
    model.artifact_sha256 = outcome.artifact_sha256
    model.metrics = outcome.metrics
    model.trained_at = timezone.now()
    model.save()
    TradingEpisode.objects.bulk_create(
        [
            TradingEpisode(
                model=model,
                mode=EpisodeMode.EVALUATION,
                markets=spec.markets,
                started_at=_dt(r.start_time_ns),
                ended_at=_dt(r.end_time_ns),
                steps=r.steps,
                total_reward=r.total_reward,
                total_return=r.total_return,
                sharpe=r.sharpe,
                max_drawdown=r.max_drawdown,
                win_rate=r.win_rate,
                fees_paid_e4=r.fees_paid_e4,
                final_positions=r.final_positions,
                equity_curve=r.equity_curve,
                action_ids=r.actions,
            )
            for r in outcome.agent_episodes
        ]
    )
    # Kept so that evaluations can be pooled across versions (a walk-forward's folds).
    policies = {AGENT: outcome.agent_episodes, **outcome.baseline_episodes}
    HeldOutTraces.objects.create(
        model=model,
        data=traces_to_bytes(
            {
                name: [r.trace for r in results if r.trace is not None]
                for name, results in policies.items()
            }
        ),
    )
    return ModelStatus.READY


def mark_pruned(model_id: int, reason: str) -> None:
    """A study's pruner stopped the run: it ends cancelled, with the reason."""
    RLModel.objects.filter(pk=model_id, status=ModelStatus.TRAINING).update(
        status=ModelStatus.CANCELLED, error=reason[:4000], updated_at=timezone.now()
    )


def execute_training_run(
    model_id: int,
    *,
    on_evaluation: Callable[[int, dict[str, Any]], bool] | None = None,
    evaluate_every: int = 0,
) -> dict[str, Any]:
    """Train the queued run ``model_id``; the row ends ready, failed or cancelled.

    ``on_evaluation`` / ``evaluate_every``: intermediate held-out evaluations (a study's
    trial reports them to its pruner; see :func:`apps.training.trainer.train_and_evaluate`).
    """
    model = RLModel.objects.get(pk=model_id)
    if model.status != ModelStatus.TRAINING:
        return {"model": model_id, "status": model.status, "skipped": True}
    # Imported here, not at the top: the registry's services queue this run from the web
    # process, which should not load torch and Stable-Baselines3 to do so.
    from apps.training.trainer import TrainingCancelled, TrainingPruned, train_and_evaluate

    spec = spec_of(model)
    out_dir = artifact_dir(name=model.name, version=model.version)
    try:
        # The parent's artifact is checked again here (it may have changed since queueing),
        # first, before any history is loaded.
        if spec.parent_version is not None and model.parent is None:
            raise ValueError(f"the parent version v{spec.parent_version} no longer exists")
        parent = load_policy(model.parent) if model.parent else None
        train_history = load(
            spec.markets, spec.train_start, spec.train_end, step_s=spec.step_s, progress=False
        )
        eval_history = load(
            spec.markets, spec.eval_start, spec.eval_end, step_s=spec.step_s, progress=False
        )
        _require_data(train_history, "training")
        _require_data(eval_history, "evaluation")
        outcome = train_and_evaluate(
            spec,
            train_history=train_history,
            eval_history=eval_history,
            out_dir=out_dir,
            tensorboard_dir=tensorboard_dir(name=model.name, version=model.version),
            on_progress=lambda p: set_progress(model_id, p),
            should_stop=lambda: is_cancelled(model_id),
            parent_policy=parent,
            on_evaluation=on_evaluation,
            evaluate_every=evaluate_every,
        )
    except TrainingPruned as exc:
        shutil.rmtree(out_dir, ignore_errors=True)
        mark_pruned(model_id, f"pruned by its study: {exc}")
        return {"model": model_id, "status": ModelStatus.CANCELLED, "pruned": True}
    except TrainingCancelled:
        shutil.rmtree(out_dir, ignore_errors=True)
        log.info("training run %s v%s cancelled", model.name, model.version)
        return {"model": model_id, "status": ModelStatus.CANCELLED}
    except Exception as exc:
        shutil.rmtree(out_dir, ignore_errors=True)
        mark_failed(model_id, exc)
        log.exception("training run %s v%s failed", model.name, model.version)
        return {"model": model_id, "status": ModelStatus.FAILED, "error": str(exc)}
    status = mark_ready(model_id, outcome, out_dir)
    if status != ModelStatus.READY:
        return {"model": model_id, "status": status}
    log.info(
        "training run %s v%s ready (sha256 %s)",
        model.name,
        model.version,
        outcome.artifact_sha256[:12],
    )
    return {"model": model_id, "status": ModelStatus.READY, "metrics": outcome.metrics}
