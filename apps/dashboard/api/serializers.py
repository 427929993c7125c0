"""Output shapes of the API, and the query parameters each list accepts.

Units as everywhere: ``*_e4`` prices and money in $0.0001, ``*_e2`` sizes in 0.01 contract.
Floats that are not finite (a Sharpe of an all-flat episode, say) are sent as null.
"""

from __future__ import annotations

import math
from typing import Any

from django.urls import reverse
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from apps.dashboard import selectors
from apps.trading.models import TradingAction
from apps.training.models import EpisodeMode, ModelStatus, RLModel, TradingEpisode
from apps.training.selectors import promotion_check
from apps.workers.selectors import WORKER_STATES

MAX_BOOK_DEPTH = 50
# Kalshi tickers: letters, digits, '.', '_' and '-' (also what channel-layer group names allow).
TICKER_REGEX = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"


def ticker_field(**kwargs: Any) -> serializers.RegexField:
    return serializers.RegexField(TICKER_REGEX, max_length=128, **kwargs)


# Primary keys are bigint: a larger id is a 400, not an overflow in the database driver
# (SQLite's raises OverflowError on anything beyond 64 bits).
MAX_ID = 2**63 - 1


def id_field(**kwargs: Any) -> serializers.IntegerField:
    return serializers.IntegerField(min_value=1, max_value=MAX_ID, required=False, **kwargs)


class FiniteFloatField(serializers.FloatField):
    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("allow_null", True)
        super().__init__(**kwargs)

    def to_representation(self, value: Any) -> float | None:
        number = float(value)
        return number if math.isfinite(number) else None


class ErrorSerializer(serializers.Serializer):
    status = serializers.IntegerField(help_text="the HTTP status code")
    error = serializers.CharField(help_text="a short code: not_found, invalid, ...")
    message = serializers.CharField(help_text="what went wrong, for a person")
    fields = serializers.DictField(
        child=serializers.ListField(child=serializers.CharField()),
        required=False,
        help_text="for invalid parameters: parameter -> messages",
    )


# -- health and status -------------------------------------------------------------------------


class ExpectedWorkerSerializer(serializers.Serializer):
    worker = serializers.CharField(help_text="an RL_HEALTH_EXPECT entry: kind or kind:label")
    alive = serializers.IntegerField(help_text="live workers matching it (0 = unhealthy)")


class HealthSerializer(serializers.Serializer):
    healthy = serializers.BooleanField()
    workers = serializers.IntegerField(help_text="running workers (alive or silent)")
    dead = serializers.IntegerField(
        help_text="workers silent beyond RL_WORKER_DEAD_AFTER_S (not unhealthy by themselves)"
    )
    expected = ExpectedWorkerSerializer(many=True, help_text="RL_HEALTH_EXPECT, entry by entry")
    problems = serializers.ListField(child=serializers.CharField())


class WorkerSerializer(serializers.Serializer):
    name = serializers.CharField()
    kind = serializers.CharField(help_text="ingest, paper, ...")
    label = serializers.CharField(allow_blank=True, help_text="the paper trader's model name")
    host = serializers.CharField()
    pid = serializers.IntegerField()
    state = serializers.ChoiceField(
        choices=WORKER_STATES,
        help_text="alive; silent (late: unhealthy); dead (silent beyond RL_WORKER_DEAD_AFTER_S)",
    )
    started_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()
    heartbeat_age_s = FiniteFloatField()
    healthy = serializers.BooleanField()
    problems = serializers.ListField(child=serializers.CharField())
    counters = serializers.DictField(help_text="the worker's own counters, as it reports them")


class StatusSerializer(serializers.Serializer):
    health = HealthSerializer()
    workers = WorkerSerializer(many=True)


# -- markets and books -------------------------------------------------------------------------


class MarketSerializer(serializers.Serializer):
    market_ticker = serializers.CharField()
    recording = serializers.BooleanField(
        help_text="its connection is open and its recorder still sends heartbeats"
    )
    exchange = serializers.CharField(help_text="local, demo or prod")
    connection_id = serializers.UUIDField()
    connection_opened_at = serializers.DateTimeField()
    connection_closed_at = serializers.DateTimeField(allow_null=True)
    last_received_at = serializers.DateTimeField(allow_null=True)


@extend_schema_field(
    {
        "type": "array",
        "items": {
            "type": "array",
            "items": {"type": "integer"},
            "minItems": 2,
            "maxItems": 2,
            "description": "[price_e4, size_e2]",
        },
    }
)
class LevelsField(serializers.ListField):
    child = serializers.ListField(child=serializers.IntegerField())


class BookSerializer(serializers.Serializer):
    market_ticker = serializers.CharField()
    trusted = serializers.BooleanField(help_text="false after a gap until a fresh snapshot")
    untrusted_reason = serializers.CharField(allow_blank=True)
    deltas_replayed = serializers.IntegerField(help_text="deltas applied after the snapshot")
    yes_bid_e4 = serializers.IntegerField(allow_null=True)
    yes_bid_size_e2 = serializers.IntegerField(allow_null=True)
    yes_ask_e4 = serializers.IntegerField(allow_null=True)
    yes_ask_size_e2 = serializers.IntegerField(allow_null=True)
    spread_e4 = serializers.IntegerField(allow_null=True)
    yes_depth = LevelsField(help_text="best YES bids first")
    no_depth = LevelsField(help_text="best NO bids first")
    ts = FiniteFloatField(help_text="unix seconds when the book was read")


class BooksSerializer(serializers.Serializer):
    source = serializers.CharField(help_text="where the books come from")
    depth = serializers.IntegerField()
    books = BookSerializer(many=True)


class BooksQuerySerializer(serializers.Serializer):
    market = serializers.ListField(
        child=ticker_field(),
        required=False,
        max_length=50,
        help_text="repeat for several; default: the recorded markets",
    )
    depth = serializers.IntegerField(
        min_value=1, max_value=MAX_BOOK_DEPTH, default=5, help_text="levels per side"
    )


# -- registry ------------------------------------------------------------------------------------


class ModelRefSerializer(serializers.ModelSerializer):
    class Meta:
        model = RLModel
        fields = ["id", "name", "version", "status"]


class PromotionGateSerializer(serializers.Serializer):
    promotable = serializers.BooleanField(help_text="passes the statistical promotion gate")
    reasons = serializers.ListField(child=serializers.CharField(), help_text="why not")


class ModelSerializer(serializers.ModelSerializer):
    parent_version = serializers.IntegerField(
        source="parent.version", allow_null=True, default=None
    )
    promoted_by = serializers.CharField(
        source="promoted_by.username", allow_null=True, default=None
    )
    promotion_gate = serializers.SerializerMethodField(
        help_text="what the gate says of the held-out evaluation (see README: the promotion gate)"
    )

    @extend_schema_field(PromotionGateSerializer)
    def get_promotion_gate(self, obj: RLModel) -> dict[str, Any]:
        check = promotion_check(obj)
        return {"promotable": check.promotable, "reasons": check.reasons}

    class Meta:
        model = RLModel
        fields = [
            "id",
            "name",
            "version",
            "algorithm",
            "status",
            "hyperparameters",
            "metrics",
            "progress",
            "markets",
            "observation_spec_version",
            "artifact_path",
            "artifact_sha256",
            "parent",
            "parent_version",
            "error",
            "created_at",
            "updated_at",
            "trained_at",
            "promoted_at",
            "promoted_by",
            "promotion_gate",
            "promotion_override",
        ]


class ModelDetailSerializer(ModelSerializer):
    lineage = serializers.SerializerMethodField(help_text="ancestors through parent, nearest first")
    children = serializers.SerializerMethodField(help_text="versions trained from this one")

    class Meta(ModelSerializer.Meta):
        fields = [*ModelSerializer.Meta.fields, "lineage", "children"]

    @extend_schema_field(ModelRefSerializer(many=True))
    def get_lineage(self, obj: RLModel) -> list[dict[str, Any]]:
        return ModelRefSerializer(selectors.model_lineage(model=obj), many=True).data

    @extend_schema_field(ModelRefSerializer(many=True))
    def get_children(self, obj: RLModel) -> list[dict[str, Any]]:
        return ModelRefSerializer(obj.children.order_by("version"), many=True).data


class ModelsQuerySerializer(serializers.Serializer):
    name = serializers.SlugField(max_length=100, required=False, help_text="model name")
    status = serializers.ChoiceField(choices=ModelStatus.choices, required=False)


# -- episodes and actions ----------------------------------------------------------------------


class EpisodeSerializer(serializers.ModelSerializer):
    model_name = serializers.CharField(source="model.name")
    model_version = serializers.IntegerField(source="model.version")
    total_reward = FiniteFloatField()
    total_return = FiniteFloatField()
    sharpe = FiniteFloatField()
    max_drawdown = FiniteFloatField()
    win_rate = FiniteFloatField()
    plot_url = serializers.SerializerMethodField(help_text="equity and drawdown PNG")

    class Meta:
        model = TradingEpisode
        fields = [
            "id",
            "model",
            "model_name",
            "model_version",
            "mode",
            "markets",
            "started_at",
            "ended_at",
            "steps",
            "total_reward",
            "total_return",
            "sharpe",
            "max_drawdown",
            "win_rate",
            "fees_paid_e4",
            "final_positions",
            "plot_url",
        ]

    def get_plot_url(self, obj: TradingEpisode) -> str:
        return reverse("dashboard:episode-plot", kwargs={"pk": obj.pk})


class EpisodeDetailSerializer(EpisodeSerializer):
    equity_curve = serializers.SerializerMethodField(help_text="equity per step, 1.0 = start")
    drawdown_curve = serializers.SerializerMethodField(help_text="fall from the running peak")
    actions = serializers.IntegerField(source="actions.count", help_text="decisions logged")

    class Meta(EpisodeSerializer.Meta):
        fields = [*EpisodeSerializer.Meta.fields, "equity_curve", "drawdown_curve", "actions"]

    @extend_schema_field({"type": "array", "items": {"type": "number", "nullable": True}})
    def get_equity_curve(self, obj: TradingEpisode) -> list[float | None]:
        return [selectors.finite(float(v)) for v in obj.equity_curve or []]

    @extend_schema_field({"type": "array", "items": {"type": "number", "nullable": True}})
    def get_drawdown_curve(self, obj: TradingEpisode) -> list[float | None]:
        values = [float(v) for v in obj.equity_curve or [] if math.isfinite(float(v))]
        return [selectors.finite(v) for v in selectors.drawdown_curve(values)]


class EpisodesQuerySerializer(serializers.Serializer):
    model = id_field(help_text="model id")
    mode = serializers.ChoiceField(choices=EpisodeMode.choices, required=False)


class ActionSerializer(serializers.ModelSerializer):
    reward = FiniteFloatField()
    allowed_actions = serializers.ListField(
        child=serializers.IntegerField(), help_text="action ids the mask allowed"
    )

    class Meta:
        model = TradingAction
        fields = [
            "id",
            "episode",
            "step",
            "time",
            "market_ticker",
            "action_id",
            "action_type",
            "action_size",
            "mask_bits",
            "allowed_actions",
            "price_e4",
            "quantity_filled_e2",
            "fee_e4",
            "position_after_e2",
            "cash_after_e4",
            "reward",
            "model_version",
        ]


class ActionsQuerySerializer(serializers.Serializer):
    episode = id_field(help_text="episode id")
    market = ticker_field(required=False, help_text="market ticker")
    since = serializers.DateTimeField(required=False, help_text="decision time >= since")
    until = serializers.DateTimeField(
        required=False, help_text="decision time < until (an empty window selects nothing)"
    )


# -- the paper trader --------------------------------------------------------------------------


class DecisionSerializer(serializers.Serializer):
    step = serializers.IntegerField()
    time = serializers.DateTimeField()
    market_ticker = serializers.CharField()
    action_type = serializers.CharField()
    action_size = serializers.IntegerField()
    price_e4 = serializers.IntegerField(allow_null=True)
    quantity_filled_e2 = serializers.IntegerField()
    fee_e4 = serializers.IntegerField()
    position_after_e2 = serializers.IntegerField()
    reward = FiniteFloatField()
    model_version = serializers.IntegerField()


class PaperEpisodeSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    model = serializers.CharField()
    model_id = serializers.IntegerField()
    started_at = serializers.DateTimeField()
    ended_at = serializers.DateTimeField(allow_null=True)
    markets = serializers.ListField(child=serializers.CharField())
    decisions = serializers.IntegerField()
    last_step = serializers.IntegerField(allow_null=True)
    return_from_rewards = FiniteFloatField(help_text="sum of per-decision rewards (a ratio)")
    fees_paid_e4 = serializers.IntegerField()
    cash_after_e4 = serializers.IntegerField(allow_null=True)
    positions_e2 = serializers.DictField(
        child=serializers.IntegerField(), help_text="market -> signed position (+YES / -NO)"
    )
    last_decisions = DecisionSerializer(many=True)


class PaperSummarySerializer(serializers.Serializer):
    workers = WorkerSerializer(many=True)
    episode = PaperEpisodeSerializer(allow_null=True)
