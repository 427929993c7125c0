"""The Celery tasks of training: thin shells over :mod:`apps.training.runs`."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from apps.training.runs import execute_training_run


@shared_task(name="training.train_model", acks_late=True)
def train_model_task(model_id: int) -> dict[str, Any]:
    """Train the queued run ``model_id``; the row ends ready, failed or cancelled."""
    return execute_training_run(model_id)
