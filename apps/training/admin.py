from __future__ import annotations

from django.contrib import admin

from apps.training.models import RLModel, TradingEpisode


class TradingEpisodeInline(admin.TabularInline):
    model = TradingEpisode
    extra = 0
    can_delete = False
    show_change_link = True
    fields = ("mode", "started_at", "steps", "total_return", "sharpe", "max_drawdown")
    readonly_fields = fields


@admin.register(RLModel)
class RLModelAdmin(admin.ModelAdmin):
    list_display = (
        "name",
        "version",
        "algorithm",
        "status",
        "created_at",
        "promoted_by",
        "promoted_at",
    )
    list_filter = ("status", "algorithm", "name")
    search_fields = ("name",)
    readonly_fields = ("artifact_path", "artifact_sha256", "created_at", "updated_at")
    inlines = [TradingEpisodeInline]


@admin.register(TradingEpisode)
class TradingEpisodeAdmin(admin.ModelAdmin):
    list_display = (
        "model",
        "mode",
        "started_at",
        "steps",
        "total_return",
        "sharpe",
        "max_drawdown",
        "win_rate",
        "fees_paid_e4",
    )
    list_filter = ("mode", "model__name")
    date_hierarchy = "started_at"
