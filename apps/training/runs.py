"""One training run inside a worker: load the windows, train, evaluate, register.

The Celery task (:mod:`apps.training.tasks`) is a thin shell over :func:`execute_training_run`;
every write of the run's status (progress, failed, cancelled, ready with its evaluation
episodes) is a function here, so the registry's services queue the task without the task
reaching back into them.

``RLModel.progress`` is what the admin's run page polls: the trainer's latest snapshot
(timesteps, fps, mean episode reward, losses), plus what this module keeps beside it — the
phase, the learning curve so far (a bounded list of (timesteps, mean reward) points), an ETA
and a short log tail.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import socket
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from django.db import transaction
from django.utils import timezone

from apps.marketdata.kalshi.units import utc_from_ns
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
from apps.ui import formatting

if TYPE_CHECKING:
    from apps.training.trainer import TrainOutcome

log = logging.getLogger(__name__)


# The run page's learning curve and log tail stay small whatever the run's length: past
# CURVE_POINTS the curve keeps every other point (so it still spans the whole run).
CURVE_POINTS = 200
LOG_LINES = 40


def _thin(curve: list[list[float]]) -> list[list[float]]:
    if len(curve) <= CURVE_POINTS:
        return curve
    return [*curve[0:-1:2], curve[-1]]


def _log_line(message: str) -> str:
    return f"{timezone.now():%H:%M:%S} {message}"[:300]


def _with_line(progress: dict[str, Any], message: str) -> list[str]:
    return [*list(progress.get("log") or [])[-(LOG_LINES - 1) :], _log_line(message)]


def describe_snapshot(progress: dict[str, Any]) -> str:
    """One log line for a trainer snapshot."""
    parts = [f"{progress.get('timesteps', 0):,}/{progress.get('total_timesteps', 0):,} steps"]
    if progress.get("fps"):
        parts.append(f"{progress['fps']:,.0f} steps/s")
    reward = progress.get("mean_episode_reward")
    if reward is not None:
        parts.append(f"mean episode reward {reward:+.4f}")
    return ", ".join(parts)


def set_progress(model_id: int, progress: dict[str, Any]) -> None:
    """Record how far a run is, extend its learning curve and log, estimate the time left;
    a run no longer training (cancelled) is left alone."""
    rows = RLModel.objects.filter(pk=model_id, status=ModelStatus.TRAINING)
    previous = rows.values_list("progress", flat=True).first()
    if previous is None:
        return
    curve = [list(p) for p in previous.get("curve") or []]
    timesteps = int(progress.get("timesteps") or 0)
    reward = progress.get("mean_episode_reward")
    if isinstance(reward, int | float) and math.isfinite(reward):
        if not curve or curve[-1][0] < timesteps:
            curve = _thin([*curve, [timesteps, round(float(reward), 6)]])
    total = int(progress.get("total_timesteps") or previous.get("total_timesteps") or 0)
    fps = progress.get("fps") or 0
    done = total > 0 and timesteps >= total
    merged = {
        **{k: v for k, v in previous.items() if k in ("started_at", "worker")},
        **progress,
        "phase": "evaluating" if done else "training",
        "curve": curve,
        "eta_s": round((total - timesteps) / fps, 1) if fps and not done else None,
        "log": _with_line(previous, describe_snapshot(progress)),
    }
    if done and previous.get("phase") != "evaluating":
        merged["log"] = [*merged["log"], _log_line("training done: evaluating on held-out time")]
    rows.update(progress=merged, updated_at=timezone.now())


def note(model_id: int, message: str, *, phase: str | None = None, **fields: Any) -> None:
    """Add a line to a run's log tail (and set its phase and other progress ``fields``),
    whatever its status, so the run page also shows how it ended."""
    previous = RLModel.objects.filter(pk=model_id).values_list("progress", flat=True).first()
    if previous is None:
        return
    progress = {**previous, **fields, "log": _with_line(previous, message)}
    if phase is not None:
        progress["phase"] = phase
    RLModel.objects.filter(pk=model_id).update(progress=progress, updated_at=timezone.now())


def is_cancelled(model_id: int) -> bool:
    return RLModel.objects.filter(pk=model_id, status=ModelStatus.CANCELLED).exists()


def mark_failed(model_id: int, exc: BaseException) -> None:
    RLModel.objects.filter(pk=model_id, status=ModelStatus.TRAINING).update(
        status=ModelStatus.FAILED,
        error=f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=5)}"[:4000],
        updated_at=timezone.now(),
    )


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
                started_at=utc_from_ns(r.start_time_ns),
                ended_at=utc_from_ns(r.end_time_ns),
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
    note(
        model_id,
        f"started by worker pid {os.getpid()} on {socket.gethostname()}: loading "
        f"{len(spec.markets)} market(s) every {spec.step_s:g} s",
        phase="loading",
        started_at=timezone.now().isoformat(),
        worker=f"{socket.gethostname()}:{os.getpid()}",
    )
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
        note(
            model_id,
            f"loaded {train_history.n_ticks:,} training and {eval_history.n_ticks:,} "
            f"held-out ticks: training {spec.algorithm} for {spec.total_timesteps:,} steps",
            phase="training",
        )
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
        note(model_id, "cancelled: stopped and removed its files", phase="cancelled")
        log.info("training run %s v%s cancelled", model.name, model.version)
        return {"model": model_id, "status": ModelStatus.CANCELLED}
    except Exception as exc:
        shutil.rmtree(out_dir, ignore_errors=True)
        mark_failed(model_id, exc)
        note(model_id, f"failed: {type(exc).__name__}: {exc}", phase="failed")
        log.exception("training run %s v%s failed", model.name, model.version)
        return {"model": model_id, "status": ModelStatus.FAILED, "error": str(exc)}
    status = mark_ready(model_id, outcome, out_dir)
    if status != ModelStatus.READY:
        note(model_id, f"{status} during evaluation: artifact removed", phase=status)
        return {"model": model_id, "status": status}
    pnl = (outcome.metrics.get("evaluation") or {}).get("pnl_per_hour_dollars")
    note(
        model_id,
        f"ready: held-out P&L {formatting.metric(pnl, 'pnl_per_hour_dollars')}, "
        f"artifact sha256 {outcome.artifact_sha256[:12]}",
        phase="ready",
    )
    log.info(
        "training run %s v%s ready (sha256 %s)",
        model.name,
        model.version,
        outcome.artifact_sha256[:12],
    )
    return {"model": model_id, "status": ModelStatus.READY, "metrics": outcome.metrics}
