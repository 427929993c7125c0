"""Hyperparameter search with Optuna, stored in the project's database (Optuna's RDB
storage on the Django ``DATABASES`` URL), trials run by Celery workers on any hosts.

A study (:class:`~apps.training.models.Study`) queues ``n_trials`` trial tasks; each task
(:func:`run_trial`) asks the shared study for a trial (``study.ask()``: the sampler sees
every finished trial, whoever ran it), trains a registry version with the suggested
hyperparameters, reports intermediate held-out evaluations to the pruner (which may stop the
run), and tells the study the final held-out objective. The trial row records its number,
parameters, worker, values and version (the version's lineage).

The objective is the agent's held-out ``pnl_per_hour_dollars`` (per hour of market time; see
:mod:`apps.simulation.metrics`), maximised. Promoting the best trial's version goes through
the registry's promotion gate like any other.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import math
import warnings
from typing import Any

import optuna
from django.db import connection, transaction
from django.utils import timezone
from optuna.trial import TrialState

from apps.training.launch import RegistryError, create_run
from apps.training.models import ModelStatus, Study, StudyStatus, StudyTrial
from apps.training.runs import execute_training_run
from apps.training.spec import ALLOWED_HYPERPARAMETERS, HYPERPARAMETER_BOUNDS, RunSpec, SpecError

log = logging.getLogger(__name__)
optuna.logging.set_verbosity(optuna.logging.WARNING)

OBJECTIVE = "pnl_per_hour_dollars"
MAX_TRIALS = 1_000
# What a study tunes unless told otherwise: the optimiser's step, the discount and the
# exploration bonus (n_steps and batch_size stay the base spec's: they bound memory).
DEFAULT_SPACE: dict[str, dict[str, Any]] = {
    "learning_rate": {"type": "float", "low": 1e-5, "high": 1e-2, "log": True},
    "gamma": {"type": "float", "low": 0.9, "high": 0.9999},
    "ent_coef": {"type": "float", "low": 0.0, "high": 0.05},
}
PLOTS = {
    "history": "plot_optimization_history",
    "intermediate": "plot_intermediate_values",
    "importances": "plot_param_importances",
    "slice": "plot_slice",
}


def storage_url() -> str:
    """The SQLAlchemy URL of Django's default database (never logged: it holds the password)."""
    from sqlalchemy.engine import URL

    db = connection.settings_dict
    if db["ENGINE"] == "django.db.backends.sqlite3":
        return f"sqlite:///{db['NAME']}"
    return URL.create(
        "postgresql+psycopg",
        username=db["USER"] or None,
        password=db["PASSWORD"] or None,
        host=db["HOST"] or None,
        port=int(db["PORT"]) if db["PORT"] else None,
        database=db["NAME"],
    ).render_as_string(hide_password=False)


_STORAGES: dict[str, optuna.storages.RDBStorage] = {}


def storage() -> optuna.storages.RDBStorage:
    """Optuna's storage on this database: one engine (connection pool) per process."""
    url = storage_url()
    if url not in _STORAGES:
        _STORAGES[url] = optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True})
    return _STORAGES[url]


def close_storage() -> None:
    """Close this process's Optuna connections (before its database is dropped)."""
    while _STORAGES:
        _STORAGES.popitem()[1].engine.dispose()


def validate_space(space: Any, algorithm: str) -> dict[str, dict[str, Any]]:
    """A search space over hyperparameters ``algorithm`` accepts, every range inside the
    validator's bounds (:data:`apps.training.spec.HYPERPARAMETER_BOUNDS`). Raises SpecError."""
    problems: list[str] = []
    allowed = ALLOWED_HYPERPARAMETERS.get(algorithm, {})
    if not isinstance(space, dict) or not space:
        raise SpecError({"search_space": ["the search space must be a non-empty JSON object"]})
    for key, dist in space.items():
        if key not in allowed:
            problems.append(f"{str(key)[:40]!r} is not a hyperparameter of {algorithm}")
            continue
        if not isinstance(dist, dict) or dist.get("type") not in ("float", "int", "categorical"):
            problems.append(f"{key}: give {{'type': 'float'|'int'|'categorical', ...}}")
            continue
        bound = HYPERPARAMETER_BOUNDS[key]
        if dist["type"] == "categorical":
            choices = dist.get("choices")
            values = choices if isinstance(choices, list) and choices else [None]
        else:
            low, high = dist.get("low"), dist.get("high")
            ok = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (low, high))
            if not ok or not math.isfinite(low) or not math.isfinite(high) or low >= high:
                problems.append(f"{key}: needs finite numbers low < high")
                continue
            if dist.get("log") and low <= 0:
                problems.append(f"{key}: a log range must start above 0")
            values = [low, high]
        for value in values:
            if not isinstance(value, int | float) or isinstance(value, bool):
                problems.append(f"{key}: {value!r} is not a number")
            elif not bound.contains(value):
                problems.append(f"{key}: {value} is outside {bound}")
    if problems:
        raise SpecError({"search_space": problems})
    return space


def suggest(trial: optuna.Trial, space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for key, dist in space.items():
        if dist["type"] == "float":
            params[key] = trial.suggest_float(
                key, dist["low"], dist["high"], log=bool(dist.get("log"))
            )
        elif dist["type"] == "int":
            params[key] = trial.suggest_int(
                key, int(dist["low"]), int(dist["high"]), log=bool(dist.get("log"))
            )
        else:
            params[key] = trial.suggest_categorical(key, dist["choices"])
    return params


def create_optuna_study(optuna_name: str) -> None:
    optuna.create_study(storage=storage(), study_name=optuna_name, direction="maximize")


def load_study(row: Study) -> optuna.Study:
    """The shared study, with this process's sampler and pruner (Optuna does not store them:
    every worker builds the same ones). The pruner compares a trial's intermediate held-out
    value with the median of earlier trials' at the same step."""
    return optuna.load_study(
        study_name=row.optuna_name,
        storage=storage(),
        sampler=optuna.samplers.TPESampler(n_startup_trials=5),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0),
    )


def _objective(metrics: dict[str, Any]) -> float | None:
    value = (metrics or {}).get(OBJECTIVE)
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def run_trial(study_id: int, *, worker: str) -> dict[str, Any]:
    """One trial of study ``study_id`` on this worker (the trial task's body)."""
    row = Study.objects.get(pk=study_id)
    if row.status != StudyStatus.RUNNING or row.trials.count() >= row.n_trials:
        return {"study": study_id, "skipped": True}  # a redelivered task past the budget
    study = load_study(row)
    trial = study.ask()
    params = suggest(trial, row.search_space)
    base = RunSpec.from_json(row.base_spec)
    spec = dataclasses.replace(base, hyperparameters={**base.hyperparameters, **params})
    trial_row = StudyTrial.objects.create(
        study=row, number=trial.number, params=params, worker=worker[:200]
    )
    try:
        return _train_trial(row, study, trial, trial_row, spec)
    except Exception as exc:
        # Whatever broke, the trial ends failed in both records, so the budget is spent.
        if trial_row.state == "running":
            study.tell(trial, state=TrialState.FAIL)
            _end_trial(trial_row, "failed", error=f"{type(exc).__name__}: {exc}")
            update_study(row.pk)
        raise


def _train_trial(
    row: Study, study: optuna.Study, trial: optuna.Trial, trial_row: StudyTrial, spec: RunSpec
) -> dict[str, Any]:
    study_id = row.pk
    try:
        model = create_run(spec=spec, check_limit=False)
    except (SpecError, RegistryError) as exc:
        study.tell(trial, state=TrialState.FAIL)
        _end_trial(trial_row, "failed", error=str(exc))
        update_study(study_id)
        return {"study": study_id, "trial": trial.number, "state": "failed"}
    trial_row.model = model
    trial_row.save(update_fields=["model"])

    def report(step: int, metrics: dict[str, Any]) -> bool:
        value = _objective(metrics)
        if value is None:
            return False
        trial.report(value, step)
        trial_row.intermediate = [*trial_row.intermediate, [step, value]]
        trial_row.save(update_fields=["intermediate"])
        return trial.should_prune()

    result = execute_training_run(model.pk, on_evaluation=report, evaluate_every=row.evaluate_every)
    model.refresh_from_db()
    value = _objective((model.metrics or {}).get("evaluation"))
    if model.status == ModelStatus.READY and value is not None:
        study.tell(trial, value)
        _end_trial(trial_row, "complete", value=value)
    elif result.get("pruned"):
        study.tell(trial, state=TrialState.PRUNED)
        _end_trial(trial_row, "pruned", error=model.error)
    else:
        study.tell(trial, state=TrialState.FAIL)
        _end_trial(trial_row, "failed", error=model.error or f"ended {model.status}")
    update_study(study_id)
    return {"study": study_id, "trial": trial.number, "state": trial_row.state, "value": value}


def _end_trial(row: StudyTrial, state: str, *, value: float | None = None, error: str = "") -> None:
    row.state, row.value, row.error = state, value, error[:4000]
    row.finished_at = timezone.now()
    row.save(update_fields=["state", "value", "error", "finished_at"])


@transaction.atomic
def update_study(study_id: int) -> Study:
    """Record the best trial so far; the study is done once its budget of trials has ended."""
    row = Study.objects.select_for_update().get(pk=study_id)
    best = row.trials.filter(state="complete").order_by("-value", "number").first()
    if best is not None:
        row.best = {
            "number": best.number,
            "value": best.value,
            "params": best.params,
            "model_id": best.model_id,
            "version": best.model.version if best.model else None,
        }
    ended = row.trials.exclude(state="running").count()
    if row.status == StudyStatus.RUNNING and ended >= row.n_trials:
        row.status = StudyStatus.DONE
        row.finished_at = timezone.now()
    row.save(update_fields=["best", "status", "finished_at"])
    return row


def status(row: Study) -> dict[str, Any]:
    """What ``manage.py study status`` and the admin show: trials by state, the best."""
    trials = list(row.trials.select_related("model").order_by("number"))
    counts: dict[str, int] = {}
    for trial in trials:
        counts[trial.state] = counts.get(trial.state, 0) + 1
    return {
        "study": row.pk,
        "name": row.name,
        "status": row.status,
        "budget": row.n_trials,
        "states": counts,
        "workers": sorted({t.worker for t in trials if t.worker}),
        "best": row.best,
        "trials": trials,
    }


def plot_png(row: Study, kind: str) -> bytes:
    """One of Optuna's matplotlib plots of the study as a PNG (ValueError when it cannot be
    drawn yet, e.g. importances before two trials have completed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as optuna_plots

    if kind not in PLOTS:
        raise ValueError(f"no plot {kind!r}")
    study = optuna.load_study(study_name=row.optuna_name, storage=storage())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna marks its matplotlib backend experimental
        try:
            axes = getattr(optuna_plots, PLOTS[kind])(study)
        except (RuntimeError, ValueError, ZeroDivisionError) as exc:
            raise ValueError(f"cannot draw {kind} yet: {exc}") from None
    first = axes.flat[0] if hasattr(axes, "flat") else axes
    figure = first.figure
    out = io.BytesIO()
    figure.savefig(out, format="png", dpi=80, bbox_inches="tight")
    plt.close(figure)
    return out.getvalue()
