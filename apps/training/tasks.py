"""The Celery task that trains, saves, evaluates and registers one model version."""

from __future__ import annotations

import logging
import shutil
import traceback
from datetime import UTC, datetime
from typing import Any

from celery import shared_task
from django.db import transaction
from django.utils import timezone

from apps.simulation.history import RecordedHistory
from apps.simulation.loader import load
from apps.training.models import EpisodeMode, ModelStatus, RLModel, TradingEpisode
from apps.training.services import artifact_dir, load_policy, spec_of, tensorboard_dir
from apps.training.trainer import TrainingCancelled, train_and_evaluate

log = logging.getLogger(__name__)


def _set_progress(model_id: int, progress: dict[str, Any]) -> None:
    RLModel.objects.filter(pk=model_id, status=ModelStatus.TRAINING).update(
        progress=progress, updated_at=timezone.now()
    )


def _cancelled(model_id: int) -> bool:
    return RLModel.objects.filter(pk=model_id, status=ModelStatus.CANCELLED).exists()


def _require_data(history: RecordedHistory, window: str) -> None:
    """Training on a window with no trusted book teaches nothing: fail with the reason."""
    empty = [m for j, m in enumerate(history.markets) if not history.trusted[:, j].any()]
    if empty:
        raise ValueError(
            f"no trusted recorded book in the {window} window for {', '.join(empty)}: "
            "record these markets first (ingest_orderbook) or choose another window"
        )


def _dt(ns: int) -> datetime:
    return datetime.fromtimestamp(ns / 1e9, UTC)


@shared_task(name="training.train_model", acks_late=True)
def train_model_task(model_id: int) -> dict[str, Any]:
    """Train the queued run ``model_id``; the row ends ready, failed or cancelled."""
    model = RLModel.objects.get(pk=model_id)
    if model.status != ModelStatus.TRAINING:
        return {"model": model_id, "status": model.status, "skipped": True}
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
            on_progress=lambda p: _set_progress(model_id, p),
            should_stop=lambda: _cancelled(model_id),
            parent_policy=parent,
        )
    except TrainingCancelled:
        shutil.rmtree(out_dir, ignore_errors=True)
        log.info("training run %s v%s cancelled", model.name, model.version)
        return {"model": model_id, "status": ModelStatus.CANCELLED}
    except Exception as exc:
        shutil.rmtree(out_dir, ignore_errors=True)
        RLModel.objects.filter(pk=model_id, status=ModelStatus.TRAINING).update(
            status=ModelStatus.FAILED,
            error=f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=5)}"[:4000],
            updated_at=timezone.now(),
        )
        log.exception("training run %s v%s failed", model.name, model.version)
        return {"model": model_id, "status": ModelStatus.FAILED, "error": str(exc)}
    with transaction.atomic():
        model = RLModel.objects.select_for_update().get(pk=model_id)
        if model.status != ModelStatus.TRAINING:  # cancelled during evaluation
            shutil.rmtree(out_dir, ignore_errors=True)
            return {"model": model_id, "status": model.status}
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
    log.info(
        "training run %s v%s ready (sha256 %s)",
        model.name,
        model.version,
        outcome.artifact_sha256[:12],
    )
    return {"model": model_id, "status": ModelStatus.READY, "metrics": outcome.metrics}
