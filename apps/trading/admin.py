from __future__ import annotations

from django.contrib import admin

from apps.trading.models import TradingAction


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
