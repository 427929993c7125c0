"""Trading decisions in the admin: a read-only audit trail a trader can search and slice.

Prices and money in dollars, sizes in contracts, times to the millisecond (decisions are a
tenth of a second apart); search by market, action, refusal or model name (``?q=``); a
from/to time filter to the millisecond. Formats come from :mod:`apps.ui.formatting`.
"""

from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest

from apps.trading.models import TradingAction
from apps.training.services import episode_may_go
from apps.ui import formatting
from apps.ui.admin_filters import TimeRangeFilter
from apps.ui.admin_records import RecordPageMixin


@admin.register(TradingAction)
class TradingActionAdmin(RecordPageMixin, admin.ModelAdmin):
    list_display = (
        "time_ms",
        "market_ticker",
        "action_type",
        "requested",
        "price",
        "filled",
        "fee",
        "position_after",
        "cash_after",
        "reward_display",
        "refusal",
        "decision_of",
    )
    list_filter = (
        ("time", TimeRangeFilter),
        "action_type",
        "refusal",
        "market_ticker",
        "episode__mode",
    )
    search_fields = ("market_ticker", "action_type", "refusal", "episode__model__name")
    list_select_related = ("episode__model",)
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER  # no per-value counts over the whole decision log
    date_hierarchy = "time"
    ordering = ("-time", "market_ticker")
    fields = (
        "time_ms",
        "episode",
        "step",
        "market_ticker",
        "action_type",
        "action_id",
        "requested",
        "price",
        "filled",
        "fee",
        "position_after",
        "cash_after",
        "reward_display",
        "refusal",
        "model_version",
        "allowed",
    )
    readonly_fields = fields

    # Every decision is the audit trail of a paper (or evaluation) episode: never edited.
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: TradingAction | None = None) -> bool:
        # Only with an evaluation episode whose model is being deleted, never one by one from
        # this list and never a paper decision (see TradingEpisodeAdmin).
        if obj is None or not episode_may_go(obj.episode):
            return False
        return super().has_delete_permission(request, obj)

    @admin.display(description="time (UTC)", ordering="time")
    def time_ms(self, obj: TradingAction) -> str:
        return formatting.ms_time(obj.time)

    @admin.display(description="asked (contracts)", ordering="action_size")
    def requested(self, obj: TradingAction) -> str:
        return f"{obj.action_size:,d}"

    @admin.display(description="fill price", ordering="price_e4")
    def price(self, obj: TradingAction) -> str:
        return "" if obj.price_e4 is None else formatting.price_e4(obj.price_e4)

    @admin.display(description="filled (contracts)", ordering="quantity_filled_e2")
    def filled(self, obj: TradingAction) -> str:
        return formatting.contracts_e2(obj.quantity_filled_e2)

    @admin.display(description="fee", ordering="fee_e4")
    def fee(self, obj: TradingAction) -> str:
        return formatting.dollars_e4(obj.fee_e4, places=4)

    @admin.display(description="position after (contracts, + YES / − NO)")
    def position_after(self, obj: TradingAction) -> str:
        return formatting.contracts_e2(obj.position_after_e2, signed=True)

    @admin.display(description="cash after", ordering="cash_after_e4")
    def cash_after(self, obj: TradingAction) -> str:
        return formatting.dollars_e4(obj.cash_after_e4)

    @admin.display(description="reward", ordering="reward")
    def reward_display(self, obj: TradingAction) -> str:
        return formatting.number(obj.reward, places=6, signed=True)

    @admin.display(description="episode · model", ordering="episode")
    def decision_of(self, obj: TradingAction) -> str:
        episode = obj.episode
        return f"#{episode.pk} {episode.mode} · {episode.model.name} v{obj.model_version}"

    @admin.display(description="allowed action ids")
    def allowed(self, obj: TradingAction) -> str:
        return ", ".join(str(i) for i in obj.allowed_actions()) or "none"
