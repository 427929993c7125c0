"""Creating a registry version to train: validation, limits, fine-tuning parent, version
number. :func:`apps.training.services.start_training_run` queues it; a study's trial task
(:mod:`apps.training.tuning`) creates its version here from inside the worker."""

from __future__ import annotations

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Max
from django.utils import timezone

from apps.training.artifacts import ArtifactError
from apps.training.datachecks import validate_run
from apps.training.models import ModelStatus, RLModel
from apps.training.selectors import running_training_count
from apps.training.spec import RunSpec
from apps.training.storage import load_policy

VERSION_ATTEMPTS = 5


class RegistryError(Exception):
    """A registry operation that cannot be done now; the message says why."""


@transaction.atomic
def create_run(*, spec: RunSpec, check_limit: bool = True) -> RLModel:
    """Validate ``spec`` and create its model row (status training, the next version of its
    name). Raises :class:`~apps.training.spec.SpecError` (bounds, memory, then the recorded
    data: :func:`~apps.training.datachecks.validate_run`) or :class:`RegistryError`."""
    validate_run(spec)
    limit = settings.RL_TRAINING_MAX_CONCURRENT
    if check_limit and running_training_count() >= limit:
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
    for attempt in range(VERSION_ATTEMPTS):
        # Lock this name's rows so two starts cannot take the same version number; the first
        # versions of a name have no row to lock (two trials of a study starting together),
        # so a clash on the unique (name, version) is retried with the next number.
        list(RLModel.objects.select_for_update().filter(name=spec.name).values_list("id"))
        top = RLModel.objects.filter(name=spec.name).aggregate(v=Max("version"))["v"] or 0
        try:
            with transaction.atomic():
                return RLModel.objects.create(
                    name=spec.name,
                    version=top + 1,
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
        except IntegrityError:
            if attempt == VERSION_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")
