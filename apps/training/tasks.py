"""The Celery tasks of training: thin shells over :mod:`apps.training.runs` and
:mod:`apps.training.walkforward` and :mod:`apps.training.tuning`."""

from __future__ import annotations

import socket
from typing import Any

from celery import shared_task

from apps.training.runs import execute_training_run
from apps.training.tuning import run_trial
from apps.training.walkforward import finish_walkforward, record_worker


@shared_task(name="training.train_model", acks_late=True)
def train_model_task(model_id: int) -> dict[str, Any]:
    """Train the queued run ``model_id``; the row ends ready, failed or cancelled."""
    return execute_training_run(model_id)


@shared_task(name="training.walkforward_fold", acks_late=True, bind=True)
def walkforward_fold_task(self: Any, model_id: int, walkforward_id: int) -> dict[str, Any]:
    """Train one fold of a walk-forward, then aggregate it if it was the last to end."""
    record_worker(model_id, self.request.hostname or "")
    try:
        result = execute_training_run(model_id)
    finally:  # even if the run raised past its own handling, the last fold aggregates
        ended = finish_walkforward(walkforward_id)
    return {**result, "walkforward": ended}


@shared_task(name="training.study_trial", acks_late=True, bind=True)
def study_trial_task(self: Any, study_id: int) -> dict[str, Any]:
    """Run one trial of a study on whichever worker takes it (recorded on the trial)."""
    return run_trial(study_id, worker=self.request.hostname or socket.gethostname())
