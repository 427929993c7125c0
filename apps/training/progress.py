"""What the admin's run page shows of a training run, as one JSON-ready dict.

The page renders it once and then polls it (``<pk>/run.json``) until the run ends. The figures
come from ``RLModel.progress``, which the task keeps (:mod:`apps.training.runs`): phase,
timesteps, speed, the learning curve so far and a log tail. Numbers are formatted here, once,
so that the page's script only places text.
"""

from __future__ import annotations

import math
from typing import Any

from django.utils import timezone

from apps.training.models import ModelStatus, RLModel
from apps.ui import formatting

PHASES = {
    "queued": "queued: waiting for a worker to take it",
    "loading": "loading the recorded history",
    "training": "training",
    "evaluating": "evaluating on held-out time",
    "ready": "done: trained and evaluated",
    "failed": "failed",
    "cancelled": "cancelled",
}


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def curve_points(progress: dict[str, Any]) -> list[tuple[int, float]]:
    """The (timesteps, mean episode reward) points the task recorded, finite ones only."""
    points = []
    for point in progress.get("curve") or []:
        if isinstance(point, list | tuple) and len(point) == 2:
            step, reward = _finite(point[0]), _finite(point[1])
            if step is not None and reward is not None:
                points.append((int(step), reward))
    return points


def run_state(model: RLModel) -> dict[str, Any]:
    """Status, phase, progress, ETA, the last figures, the curve and the log of ``model``."""
    progress = model.progress if isinstance(model.progress, dict) else {}
    training = model.status == ModelStatus.TRAINING
    phase = str(progress.get("phase") or ("queued" if training else model.status))
    if not training and phase in ("queued", "loading", "training", "evaluating"):
        phase = model.status  # ended without its last note (an old row, a killed worker)
    fraction = _finite(progress.get("fraction")) or 0.0
    if model.status in (ModelStatus.READY, ModelStatus.ACTIVE, ModelStatus.RETIRED):
        fraction = 1.0
    eta_s = _finite(progress.get("eta_s")) if training else None
    reward = _finite(progress.get("mean_episode_reward"))
    points = curve_points(progress)
    age_s = (timezone.now() - model.updated_at).total_seconds() if model.updated_at else None
    return {
        "id": model.pk,
        "name": model.name,
        "version": model.version,
        "status": model.status,
        "status_label": model.get_status_display(),
        "finished": not training,
        "phase": phase,
        "phase_label": PHASES.get(phase, phase),
        "fraction": min(max(fraction, 0.0), 1.0),
        "percent": formatting.percent(min(max(fraction, 0.0), 1.0), places=0),
        "timesteps": int(_finite(progress.get("timesteps")) or 0),
        "total_timesteps": int(_finite(progress.get("total_timesteps")) or 0),
        "steps": (
            f"{formatting.integer(progress.get('timesteps') or 0)} / "
            f"{formatting.integer(progress.get('total_timesteps') or 0)} steps"
        ),
        "fps": (
            f"{formatting.integer(progress.get('fps'))} steps/s"
            if _finite(progress.get("fps"))
            else formatting.MISSING
        ),
        "eta": formatting.duration(eta_s),
        "mean_reward": formatting.number(reward, places=4, signed=True),
        "points": len(points),
        "curve": points,
        "log": [str(line) for line in (progress.get("log") or [])][-40:],
        "error": (model.error or "").splitlines()[0][:500] if model.error else "",
        "updated": formatting.seconds_time(model.updated_at),
        "updated_age_s": round(age_s, 1) if age_s is not None else None,
        "worker": str(progress.get("worker") or ""),
    }
