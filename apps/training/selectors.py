"""Reading the model registry."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.db.models import Count, Max, Min, QuerySet

from apps.training.models import ModelStatus, RLModel


def active_model_for(name: str) -> RLModel | None:
    """The version of ``name`` that is promoted now, if any."""
    return RLModel.objects.filter(name=name, status=ModelStatus.ACTIVE).first()


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
