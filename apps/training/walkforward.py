"""Walk-forward evaluation: rolling (train, test) windows and the aggregation of the folds.

The recorded span is cut into ``folds + train_segments`` equal segments; fold ``i`` trains on
segments ``i .. i + train_segments - 1`` and is evaluated on segment ``i + train_segments``,
which no earlier fold's test and no later fold's training overlaps out of order: every test
window is market time after the fold's training. Each fold is a registry version trained by
its own Celery task (:func:`apps.training.services.start_walkforward` queues them; any worker
takes them); the task that ends the last fold aggregates (:func:`finish_walkforward`).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from django.db import transaction
from django.utils import timezone

from apps.training.models import (
    HeldOutTraces,
    ModelStatus,
    WalkForward,
    WalkForwardFold,
    WalkForwardStatus,
)
from apps.training.pooling import pooled_metrics, traces_from_bytes

log = logging.getLogger(__name__)

MAX_FOLDS = 20
MAX_TRAIN_SEGMENTS = 20

Window = tuple[datetime, datetime, datetime, datetime]  # train start, end, test start, end


def rolling_windows(
    first: datetime, last: datetime, *, folds: int, train_segments: int = 3
) -> list[Window]:
    """``folds`` rolling (train start, train end, test start, test end) windows over
    [first, last] (the last test window includes ``last``). Raises ValueError on bad counts."""
    if not 1 <= folds <= MAX_FOLDS:
        raise ValueError(f"folds must be in [1, {MAX_FOLDS}], got {folds}")
    if not 1 <= train_segments <= MAX_TRAIN_SEGMENTS:
        raise ValueError(
            f"train_segments must be in [1, {MAX_TRAIN_SEGMENTS}], got {train_segments}"
        )
    end = last + timedelta(microseconds=1)  # windows are [start, end): keep the last delta
    segment = (end - first) / (folds + train_segments)
    if segment <= timedelta(0):
        raise ValueError("the recorded span is empty")

    def at(k: int) -> datetime:
        return end if k == folds + train_segments else first + segment * k

    return [
        (at(i), at(i + train_segments), at(i + train_segments), at(i + train_segments + 1))
        for i in range(folds)
    ]


def fold_row(fold: WalkForwardFold) -> dict[str, Any]:
    """One fold's line of the aggregate: its version, windows and held-out figures."""
    metrics = fold.model.metrics or {}
    return {
        "index": fold.index,
        "version": fold.model.version,
        "status": fold.model.status,
        "worker": fold.worker,
        "train": [fold.train_start.isoformat(), fold.train_end.isoformat()],
        "test": [fold.test_start.isoformat(), fold.test_end.isoformat()],
        "evaluation": metrics.get("evaluation") or {},
        "baselines": metrics.get("baselines") or {},
        "versus_no_trading": metrics.get("versus_no_trading") or {},
        "beats_no_trading": metrics.get("beats_no_trading"),
    }


def aggregate(folds: list[WalkForwardFold], *, seed: int = 0) -> dict[str, Any]:
    """Per-fold figures and the pooled held-out evaluation of the folds that ended ready: all
    their held-out episodes (agent and baselines) pooled, every metric with its block-
    bootstrap interval recomputed over the pooled blocks."""
    pooled: dict[str, list] = {}
    used = []
    traces = HeldOutTraces.objects.filter(model__in=[f.model for f in folds])
    by_model = {t.model_id: t for t in traces}
    for fold in folds:
        stored = by_model.get(fold.model_id)
        if fold.model.status == ModelStatus.TRAINING or stored is None:
            continue
        for policy, episodes in traces_from_bytes(stored.data).items():
            pooled.setdefault(policy, []).extend(episodes)
        used.append(fold.index)
    return {
        "folds": [fold_row(f) for f in folds],
        "pooled_folds": used,
        "pooled": pooled_metrics(pooled, seed=seed) if used else {},
    }


@transaction.atomic
def finish_walkforward(walkforward_id: int) -> str | None:
    """Aggregate the walk-forward once none of its folds is training (called by each fold's
    task after its run; the row lock makes exactly one of them do it). Returns the status it
    ended with, or None while folds are still training."""
    walkforward = WalkForward.objects.select_for_update().get(pk=walkforward_id)
    if walkforward.status != WalkForwardStatus.RUNNING:
        return walkforward.status
    folds = list(walkforward.folds.select_related("model").order_by("index"))
    if any(f.model.status == ModelStatus.TRAINING for f in folds):
        return None
    walkforward.metrics = aggregate(folds)
    done = bool(walkforward.metrics["pooled_folds"])
    walkforward.status = WalkForwardStatus.DONE if done else WalkForwardStatus.FAILED
    walkforward.finished_at = timezone.now()
    walkforward.save(update_fields=["metrics", "status", "finished_at"])
    log.info("%s aggregated over folds %s", walkforward, walkforward.metrics["pooled_folds"])
    return walkforward.status


def record_worker(model_id: int, hostname: str) -> None:
    """Which worker took a fold (the walk-forward page shows the spread over workers)."""
    WalkForwardFold.objects.filter(model_id=model_id).update(worker=hostname[:200])
