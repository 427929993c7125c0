from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest

from apps.trading.models import TradingAction
from apps.training.services import episode_may_go


@admin.register(TradingAction)
class TradingActionAdmin(admin.ModelAdmin):
    list_display = (
        "episode",
        "step",
        "time",
        "market_ticker",
        "action_type",
        "action_size",
        "price_e4",
        "quantity_filled_e2",
        "fee_e4",
        "position_after_e2",
        "cash_after_e4",
        "reward",
        "model_version",
        "refusal",
    )
    list_filter = ("action_type", "refusal", "market_ticker", "episode__mode")
    show_full_result_count = False
    date_hierarchy = "time"

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
