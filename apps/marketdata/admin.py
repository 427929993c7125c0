"""Recorded data is evidence: the admin shows it, filterable by market and time, never edits it."""

from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest

from apps.marketdata.kalshi.urls import redact_url
from apps.marketdata.models import (
    OrderbookDelta,
    OrderbookSnapshot,
    PublicTrade,
    RecordingConnection,
    RecordingEvent,
)


class ReadOnlyAdmin(admin.ModelAdmin):
    # Counting a table of millions of rows on every page load is slow: show "more" instead.
    show_full_result_count = False

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(RecordingConnection)
class RecordingConnectionAdmin(ReadOnlyAdmin):
    list_display = ("id", "exchange", "endpoint", "opened_at", "closed_at", "close_reason")
    list_filter = ("exchange",)
    date_hierarchy = "opened_at"
    # ws_url is shown only through endpoint(): rows stored by older versions may hold a URL
    # with embedded credentials.
    exclude = ("ws_url",)
    readonly_fields = ("endpoint",)

    @admin.display(description="endpoint")
    def endpoint(self, obj: RecordingConnection) -> str:
        return redact_url(obj.ws_url)


@admin.register(OrderbookSnapshot)
class OrderbookSnapshotAdmin(ReadOnlyAdmin):
    list_display = ("market_ticker", "source", "sid", "seq", "received_at", "exchange_ts")
    list_filter = ("source", "market_ticker")
    search_fields = ("market_ticker",)
    date_hierarchy = "received_at"


@admin.register(OrderbookDelta)
class OrderbookDeltaAdmin(ReadOnlyAdmin):
    list_display = ("market_ticker", "side", "price_e4", "delta_e2", "sid", "seq", "received_at")
    list_filter = ("side", "market_ticker")
    search_fields = ("market_ticker",)
    date_hierarchy = "received_at"


@admin.register(PublicTrade)
class PublicTradeAdmin(ReadOnlyAdmin):
    list_display = ("market_ticker", "yes_price_e4", "count_e2", "taker_side", "received_at")
    list_filter = ("taker_side", "market_ticker")
    date_hierarchy = "received_at"


@admin.register(RecordingEvent)
class RecordingEventAdmin(ReadOnlyAdmin):
    list_display = ("kind", "market_ticker", "sid", "expected_seq", "got_seq", "detail", "at")
    list_filter = ("kind", "market_ticker")
    date_hierarchy = "at"
