"""Reading the model registry: the promotion gate, lineage, and what the admin's model page,
comparison and confirmation pages show (:func:`model_report`, :func:`promotion_preview`,
:func:`rollback_preview`)."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db.models import Count, Max, Min, QuerySet

from apps.simulation.metrics import METRICS
from apps.training.models import EpisodeMode, ModelStatus, RLModel
from apps.training.spec import RunSpec
from apps.training.storage import tensorboard_dir

log = logging.getLogger(__name__)


def spec_of(model: RLModel) -> RunSpec:
    """The run spec a registry version was trained from (stored with its hyperparameters)."""
    return RunSpec.from_json(model.hyperparameters["_spec"])


def active_model_for(name: str) -> RLModel | None:
    """The version of ``name`` that is promoted now, if any."""
    return RLModel.objects.filter(name=name, status=ModelStatus.ACTIVE).first()


@dataclass(frozen=True)
class PromotionCheck:
    """What the promotion gate says of a model: promotable, or the reasons it is not."""

    promotable: bool
    reasons: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return "promotable" if self.promotable else "; ".join(self.reasons)


def promotion_check(model: RLModel) -> PromotionCheck:
    """The statistical gate (``RL_PROMOTION_REQUIRE_EDGE``, ``RL_PROMOTION_MIN_SHARPE``) on the
    model's held-out evaluation. Status and artifact checks are the service's."""
    reasons: list[str] = []
    metrics = model.metrics or {}
    gated = settings.RL_PROMOTION_REQUIRE_EDGE or settings.RL_PROMOTION_MIN_SHARPE is not None
    if gated and not metrics.get("evaluation"):
        return PromotionCheck(False, ["not evaluated on held-out time yet"])
    if settings.RL_PROMOTION_REQUIRE_EDGE:
        versus = metrics.get("versus_no_trading") or {}
        low, high = (versus.get("ci") or [None, None])[:2]
        if low is None:
            reasons.append(
                "no confidence interval for agent minus no trading (evaluated before the gate "
                "existed, or too few held-out blocks): evaluate it again"
            )
        elif low <= 0:
            reasons.append(
                f"agent minus no trading is {versus.get('difference', 0):+.2f} $/h with a 95% "
                f"interval [{low:+.2f}, {high:+.2f}] $/h on held-out time: its lower bound is "
                "not above zero (RL_PROMOTION_REQUIRE_EDGE)"
            )
    threshold = settings.RL_PROMOTION_MIN_SHARPE
    if threshold is not None:
        sharpe = metrics["evaluation"].get("sharpe_per_hour", metrics["evaluation"].get("sharpe"))
        if sharpe is None or sharpe < threshold:
            reasons.append(
                f"held-out Sharpe {sharpe if sharpe is None else round(sharpe, 3)} per "
                f"sqrt(hour) is below the promotion threshold {threshold} "
                "(RL_PROMOTION_MIN_SHARPE)"
            )
    return PromotionCheck(not reasons, reasons)


def model_history(name: str) -> QuerySet[RLModel]:
    """Every version of ``name``, newest first."""
    return RLModel.objects.filter(name=name).order_by("-version")


def running_training_count() -> int:
    return RLModel.objects.filter(status=ModelStatus.TRAINING).count()


def recorded_span(markets: list[str]) -> tuple[datetime, datetime] | None:
    """First and last receive time of recorded deltas for ``markets`` (None if none)."""
    from apps.marketdata.models import OrderbookDelta

    span = OrderbookDelta.objects.filter(market_ticker__in=markets).aggregate(
        first=Min("received_at"), last=Max("received_at")
    )
    if span["first"] is None:
        return None
    return span["first"], span["last"]


def recorded_markets(limit: int = 10) -> list[str]:
    """The markets with the most recorded deltas (at most ``limit``)."""
    from apps.marketdata.models import OrderbookDelta

    rows = (
        OrderbookDelta.objects.values("market_ticker")
        .annotate(n=Count("id"))
        .order_by("-n", "market_ticker")[:limit]
    )
    return sorted(r["market_ticker"] for r in rows)


def split_windows(
    first: datetime, last: datetime, *, train_share: float = 0.7
) -> tuple[tuple[datetime, datetime], tuple[datetime, datetime]]:
    """Train on the first ``train_share`` of the span, evaluate on the rest (held-out time)."""
    cut = first + (last - first) * train_share
    return (first, cut), (cut, last + timedelta(microseconds=1))


def previous_promoted(current: RLModel, *, for_update: bool = False) -> RLModel | None:
    """The version of ``current``'s name promoted most recently before it (the one a rollback
    re-activates when ``current`` is active): repeated rollbacks walk back through the
    promotion history, since a rolled-back version keeps its promotion time. ``for_update``
    locks the row (inside the rollback's transaction)."""
    if current.promoted_at is None:
        return None
    rows = RLModel.objects.select_for_update() if for_update else RLModel.objects
    return (
        rows.filter(
            name=current.name, status=ModelStatus.RETIRED, promoted_at__lt=current.promoted_at
        )
        .order_by("-promoted_at")
        .first()
    )


# What the model page shows of a policy's held-out metrics, in this order (round trips is a
# count, the rest are apps/simulation/metrics.py's figures with their intervals).
REPORT_METRICS = (*METRICS, "round_trips")
POLICY_LABELS = {
    "agent": "agent",
    "no_trading": "no trading (baseline)",
    "hold_favourite": "hold the favourite (baseline)",
    "momentum": "momentum (baseline)",
}


@dataclass(frozen=True)
class MetricCell:
    name: str
    value: float | None
    ci: tuple[float, float] | None  # the block-bootstrap 95 % interval, when there is one


@dataclass(frozen=True)
class PolicyRow:
    """One policy's held-out metrics: the agent's or a baseline's."""

    key: str
    label: str
    episodes: int | None
    cells: list[MetricCell]


@dataclass(frozen=True)
class Lineage:
    parent: RLModel | None
    children: list[RLModel]
    promoted_by: str
    promoted_at: datetime | None
    active_before: RLModel | None  # the version that was active when this one was promoted
    active_now: RLModel | None  # the name's active version today (may be this one)
    override: dict[str, Any]


@dataclass(frozen=True)
class ModelReport:
    """Everything the admin's read-only model page shows, as data (formatted by templates)."""

    model: RLModel
    policies: list[PolicyRow]
    versus_no_trading: dict[str, Any] | None
    gate: PromotionCheck | None
    train_period: tuple[datetime, datetime] | None
    held_out_period: tuple[datetime, datetime] | None
    spec: dict[str, Any]
    hyperparameters: dict[str, Any]
    lineage: Lineage
    artifact_path: str
    artifact_size: int | None
    tensorboard_dir: Path
    tensorboard_exists: bool
    learning_curve: list[tuple[int, float]]
    equity_curves: list[list[float]]  # the held-out evaluation episodes, 1.0 = start
    training: dict[str, Any]

    @property
    def metric_rows(self) -> list[tuple[str, list[tuple[PolicyRow, MetricCell]]]]:
        """The metrics table by row: each metric with every policy's cell."""
        return [
            (name, [(policy, policy.cells[i]) for policy in self.policies])
            for i, name in enumerate(REPORT_METRICS)
        ]


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _cells(values: dict[str, Any]) -> list[MetricCell]:
    cells = []
    for name in REPORT_METRICS:
        bounds = values.get(f"{name}_ci") or [None, None]
        low, high = (_finite(b) for b in [*bounds, None, None][:2])
        ci = (low, high) if low is not None and high is not None else None
        cells.append(MetricCell(name, _finite(values.get(name)), ci))
    return cells


def policy_rows(model: RLModel) -> list[PolicyRow]:
    """The agent's held-out metrics, then each baseline's on the same start ticks."""
    metrics = model.metrics or {}
    rows = []
    named = [("agent", metrics.get("evaluation"))]
    named += sorted((metrics.get("baselines") or {}).items(), key=lambda kv: kv[0] != "no_trading")
    for key, values in named:
        if not isinstance(values, dict) or not values:
            continue
        episodes = values.get("episodes")
        rows.append(
            PolicyRow(
                key=key,
                label=POLICY_LABELS.get(key, key.replace("_", " ")),
                episodes=episodes if isinstance(episodes, int) else None,
                cells=_cells(values),
            )
        )
    return rows


def _spec(model: RLModel) -> dict[str, Any]:
    spec = (model.hyperparameters or {}).get("_spec")
    return spec if isinstance(spec, dict) else {}


def _period(spec: dict[str, Any], prefix: str) -> tuple[datetime, datetime] | None:
    try:
        start = datetime.fromisoformat(spec[f"{prefix}_start"])
        end = datetime.fromisoformat(spec[f"{prefix}_end"])
    except (KeyError, TypeError, ValueError):
        return None
    return start, end


def held_out_period(model: RLModel) -> tuple[datetime, datetime] | None:
    """The market time the model was evaluated on (never trained on), from its run spec."""
    return _period(_spec(model), "eval")


def artifact_size(model: RLModel) -> int | None:
    """Size in bytes of the artifact file, None when there is none (never opened: a stat)."""
    if not model.artifact_path:
        return None
    try:
        return Path(model.artifact_path).stat().st_size
    except OSError:
        return None


LEARNING_CURVE_TAG = "rollout/ep_rew_mean"


def learning_curve(folder: Path, *, tag: str = LEARNING_CURVE_TAG) -> list[tuple[int, float]]:
    """The mean training-episode reward by timestep, as SB3 logged it to TensorBoard (event
    files are protocol buffers: reading them runs no code from disk)."""
    if not folder.is_dir():
        return []
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    points: dict[int, float] = {}
    for run in sorted(p.parent for p in folder.rglob("events.out.tfevents.*")):
        try:
            events = EventAccumulator(str(run), size_guidance={"scalars": 0})
            events.Reload()
            if tag not in events.Tags().get("scalars", []):
                continue
            for event in events.Scalars(tag):
                if math.isfinite(event.value):
                    points[int(event.step)] = float(event.value)
        except Exception:  # a half-written or foreign file: the page shows the rest
            log.warning("cannot read TensorBoard events in %s", run, exc_info=True)
    return sorted(points.items())


def evaluation_curves(model: RLModel) -> list[list[float]]:
    """The equity curves (1.0 = start) of the model's held-out evaluation episodes."""
    rows = model.episodes.filter(mode=EpisodeMode.EVALUATION).order_by("started_at", "pk")
    return [
        [float(v) for v in curve if _finite(v) is not None]
        for curve in rows.values_list("equity_curve", flat=True)
        if isinstance(curve, list)
    ]


def lineage(model: RLModel) -> Lineage:
    override = model.promotion_override if isinstance(model.promotion_override, dict) else {}
    return Lineage(
        parent=model.parent,
        children=list(model.children.order_by("version")),
        promoted_by=model.promoted_by.get_username() if model.promoted_by else "",
        promoted_at=model.promoted_at,
        active_before=previous_promoted(model),
        active_now=active_model_for(model.name),
        override=override,
    )


def model_report(model: RLModel, *, with_learning_curve: bool = True) -> ModelReport:
    """What the model page shows: agent vs baselines with intervals, the gate, periods,
    lineage, artifact, TensorBoard run, learning curve and held-out equity curves."""
    metrics = model.metrics or {}
    spec = _spec(model)
    folder = tensorboard_dir(name=model.name, version=model.version)
    versus = metrics.get("versus_no_trading")
    evaluated = model.status in (ModelStatus.READY, ModelStatus.ACTIVE, ModelStatus.RETIRED)
    return ModelReport(
        model=model,
        policies=policy_rows(model),
        versus_no_trading=versus if isinstance(versus, dict) else None,
        gate=promotion_check(model) if evaluated else None,
        train_period=_period(spec, "train"),
        held_out_period=_period(spec, "eval"),
        spec=spec,
        hyperparameters={
            k: v for k, v in (model.hyperparameters or {}).items() if not k.startswith("_")
        },
        lineage=lineage(model),
        artifact_path=model.artifact_path,
        artifact_size=artifact_size(model),
        tensorboard_dir=folder,
        tensorboard_exists=folder.is_dir(),
        learning_curve=learning_curve(folder) if with_learning_curve else [],
        equity_curves=evaluation_curves(model),
        training=metrics.get("training") if isinstance(metrics.get("training"), dict) else {},
    )


def compare_rows(reports: list[ModelReport]) -> list[tuple[str, list[MetricCell | None]]]:
    """The comparison table: per held-out metric of the agent, one cell per version (None
    when the version has no held-out evaluation)."""
    rows = []
    for index, name in enumerate(REPORT_METRICS):
        cells: list[MetricCell | None] = []
        for report in reports:
            agent = next((p for p in report.policies if p.key == "agent"), None)
            cells.append(agent.cells[index] if agent else None)
        rows.append((name, cells))
    return rows


def models_by_ids(ids: list[int]) -> list[RLModel]:
    """The registry rows ``ids`` in name and version order (missing ids are skipped)."""
    return list(
        RLModel.objects.filter(pk__in=ids)
        .select_related("parent", "promoted_by")
        .order_by("name", "version")
    )


@dataclass(frozen=True)
class PromotionPreview:
    """What promoting ``model`` would do: the gate's verdict and the version it replaces."""

    model: RLModel
    report: ModelReport
    gate: PromotionCheck
    replaces: RLModel | None
    replaces_report: ModelReport | None
    status_ok: bool


def promotion_preview(model: RLModel) -> PromotionPreview:
    replaces = active_model_for(model.name)
    if replaces is not None and replaces.pk == model.pk:
        replaces = None
    return PromotionPreview(
        model=model,
        report=model_report(model, with_learning_curve=False),
        gate=promotion_check(model),
        replaces=replaces,
        replaces_report=model_report(replaces, with_learning_curve=False) if replaces else None,
        status_ok=model.status in (ModelStatus.READY, ModelStatus.RETIRED),
    )


@dataclass(frozen=True)
class RollbackPreview:
    """What rolling ``name`` back would do: retire ``current``, re-activate ``target``."""

    name: str
    current: RLModel | None
    current_report: ModelReport | None
    target: RLModel | None
    target_report: ModelReport | None
    target_gate: PromotionCheck | None

    @property
    def possible(self) -> bool:
        return self.current is not None and self.target is not None


def rollback_preview(name: str) -> RollbackPreview:
    current = active_model_for(name)
    target = previous_promoted(current) if current else None
    return RollbackPreview(
        name=name,
        current=current,
        current_report=model_report(current, with_learning_curve=False) if current else None,
        target=target,
        target_report=model_report(target, with_learning_curve=False) if target else None,
        target_gate=promotion_check(target) if target else None,
    )
