"""Reading the model registry."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Count, Max, Min, QuerySet

from apps.training.models import ModelStatus, RLModel
from apps.training.spec import RunSpec


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
