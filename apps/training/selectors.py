"""Reading the model registry."""

from __future__ import annotations

from django.db.models import QuerySet

from apps.training.models import ModelStatus, RLModel


def active_model_for(name: str) -> RLModel | None:
    """The version of ``name`` that is promoted now, if any."""
    return RLModel.objects.filter(name=name, status=ModelStatus.ACTIVE).first()


def model_history(name: str) -> QuerySet[RLModel]:
    """Every version of ``name``, newest first."""
    return RLModel.objects.filter(name=name).order_by("-version")


def running_training_count() -> int:
    return RLModel.objects.filter(status=ModelStatus.TRAINING).count()
