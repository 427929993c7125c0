"""Recorded data is evidence: the admin shows it, searchable and sliced by time to the
millisecond, never edits it.

Prices in dollars, sizes in contracts, times to the millisecond (formats from
:mod:`apps.ui.formatting`); a snapshot's page draws its book as a ladder.
"""

from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString

from apps.marketdata.kalshi.urls import redact_url
from apps.marketdata.models import (
    OrderbookDelta,
    OrderbookSnapshot,
    PublicTrade,
    RecordingConnection,
    RecordingEvent,
)
from apps.marketdata.selectors import snapshot_ladder
from apps.ui import formatting
from apps.ui.admin_filters import TimeRangeFilter


class ReadOnlyAdmin(admin.ModelAdmin):
    # Counting a table of millions of rows on every page load is slow: show "more" instead,
    # and no per-filter-value counts ("Show counts" would count each of them).
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


def connection_link(obj: OrderbookSnapshot | OrderbookDelta | PublicTrade) -> str:
    url = reverse("admin:marketdata_recordingconnection_change", args=[obj.connection_id])
    return format_html('<a href="{}">{}</a>', url, obj.connection_id)


def received(obj: OrderbookSnapshot | OrderbookDelta | PublicTrade) -> str:
    return formatting.ms_time(obj.received_at)


def exchange_time(obj: OrderbookSnapshot | OrderbookDelta | PublicTrade) -> str:
    return formatting.ms_time(obj.exchange_ts) if obj.exchange_ts else ""


@admin.register(RecordingConnection)
class RecordingConnectionAdmin(ReadOnlyAdmin):
    list_display = ("id", "exchange", "endpoint", "opened", "closed", "close_reason")
    list_filter = (("opened_at", TimeRangeFilter), "exchange")
    search_fields = ("=id", "host", "close_reason")
    date_hierarchy = "opened_at"
    # ws_url is shown only through endpoint(): rows stored by older versions may hold a URL
    # with embedded credentials.
    fields = (
        "id",
        "exchange",
        "endpoint",
        "markets_display",
        "use_yes_price",
        "host",
        "pid",
        "opened",
        "closed",
        "close_reason",
    )
    readonly_fields = fields

    @admin.display(description="endpoint")
    def endpoint(self, obj: RecordingConnection) -> str:
        return redact_url(obj.ws_url)

    @admin.display(description="markets")
    def markets_display(self, obj: RecordingConnection) -> str:
        return ", ".join(str(m) for m in obj.markets or []) or "n/a"

    @admin.display(description="opened (UTC)", ordering="opened_at")
    def opened(self, obj: RecordingConnection) -> str:
        return formatting.ms_time(obj.opened_at)

    @admin.display(description="closed (UTC)", ordering="closed_at")
    def closed(self, obj: RecordingConnection) -> str:
        return formatting.ms_time(obj.closed_at) if obj.closed_at else "open"


@admin.register(OrderbookSnapshot)
class OrderbookSnapshotAdmin(ReadOnlyAdmin):
    list_display = (
        "market_ticker",
        "received_ms",
        "best_bid",
        "best_ask",
        "source",
        "sid",
        "seq",
        "exchange_ms",
    )
    list_filter = (("received_at", TimeRangeFilter), "source", "market_ticker")
    search_fields = ("market_ticker",)
    date_hierarchy = "received_at"
    ordering = ("-received_at", "-id")
    fields = (
        "market_ticker",
        "received_ms",
        "exchange_ms",
        "source",
        "connection_link",
        "sid",
        "seq",
        "as_of_sid",
        "as_of_seq",
        "book",
    )
    readonly_fields = fields

    @admin.display(description="connection")
    def connection_link(self, obj: OrderbookSnapshot | OrderbookDelta | PublicTrade) -> str:
        return connection_link(obj)

    @admin.display(description="received (UTC)", ordering="received_at")
    def received_ms(self, obj: OrderbookSnapshot) -> str:
        return received(obj)

    @admin.display(description="exchange time (UTC)", ordering="exchange_ts")
    def exchange_ms(self, obj: OrderbookSnapshot) -> str:
        return exchange_time(obj)

    @admin.display(description="YES bid")
    def best_bid(self, obj: OrderbookSnapshot) -> str:
        ladder = snapshot_ladder(obj)
        row = next((r for r in ladder.rows if r.best_bid), None)
        if row is None:
            return "none"
        return (
            f"{formatting.price_e4(row.yes_price_e4)} × {formatting.contracts_e2(row.yes_bid_e2)}"
        )

    @admin.display(description="YES ask (NO bid)")
    def best_ask(self, obj: OrderbookSnapshot) -> str:
        ladder = snapshot_ladder(obj)
        row = next((r for r in ladder.rows if r.best_ask), None)
        if row is None:
            return "none"
        return f"{formatting.price_e4(row.yes_price_e4)} × {formatting.contracts_e2(row.no_bid_e2)}"

    @admin.display(description="book")
    def book(self, obj: OrderbookSnapshot) -> SafeString:
        return SafeString(
            render_to_string(
                "admin/marketdata/book_ladder.html",
                {"ladder": snapshot_ladder(obj), "market": obj.market_ticker},
            )
        )


@admin.register(OrderbookDelta)
class OrderbookDeltaAdmin(ReadOnlyAdmin):
    list_display = (
        "market_ticker",
        "received_ms",
        "side",
        "price",
        "change",
        "sid",
        "seq",
        "exchange_ms",
    )
    list_filter = (("received_at", TimeRangeFilter), "side", "market_ticker")
    search_fields = ("market_ticker",)
    date_hierarchy = "received_at"
    ordering = ("-received_at", "-id")
    fields = ("market_ticker", "received_ms", "exchange_ms", "side", "price", "change")
    fields += ("connection_link", "sid", "seq")
    readonly_fields = fields

    @admin.display(description="connection")
    def connection_link(self, obj: OrderbookSnapshot | OrderbookDelta | PublicTrade) -> str:
        return connection_link(obj)

    @admin.display(description="received (UTC)", ordering="received_at")
    def received_ms(self, obj: OrderbookDelta) -> str:
        return received(obj)

    @admin.display(description="exchange time (UTC)", ordering="exchange_ts")
    def exchange_ms(self, obj: OrderbookDelta) -> str:
        return exchange_time(obj)

    @admin.display(description="price (of its side)", ordering="price_e4")
    def price(self, obj: OrderbookDelta) -> str:
        return formatting.price_e4(obj.price_e4)

    @admin.display(description="change (contracts)", ordering="delta_e2")
    def change(self, obj: OrderbookDelta) -> str:
        return formatting.contracts_e2(obj.delta_e2, signed=True)


@admin.register(PublicTrade)
class PublicTradeAdmin(ReadOnlyAdmin):
    list_display = (
        "market_ticker",
        "received_ms",
        "yes_price",
        "no_price",
        "contracts",
        "taker_side",
        "exchange_ms",
    )
    list_filter = (("received_at", TimeRangeFilter), "taker_side", "market_ticker")
    search_fields = ("market_ticker", "=trade_id")
    date_hierarchy = "received_at"
    ordering = ("-received_at", "-id")
    fields = ("market_ticker", "received_ms", "exchange_ms", "yes_price", "no_price")
    fields += ("contracts", "taker_side", "trade_id", "connection_link", "sid", "seq")
    readonly_fields = fields

    @admin.display(description="connection")
    def connection_link(self, obj: OrderbookSnapshot | OrderbookDelta | PublicTrade) -> str:
        return connection_link(obj)

    @admin.display(description="received (UTC)", ordering="received_at")
    def received_ms(self, obj: PublicTrade) -> str:
        return received(obj)

    @admin.display(description="exchange time (UTC)", ordering="exchange_ts")
    def exchange_ms(self, obj: PublicTrade) -> str:
        return exchange_time(obj)

    @admin.display(description="YES price", ordering="yes_price_e4")
    def yes_price(self, obj: PublicTrade) -> str:
        return formatting.price_e4(obj.yes_price_e4)

    @admin.display(description="NO price", ordering="no_price_e4")
    def no_price(self, obj: PublicTrade) -> str:
        return formatting.price_e4(obj.no_price_e4)

    @admin.display(description="contracts", ordering="count_e2")
    def contracts(self, obj: PublicTrade) -> str:
        return formatting.contracts_e2(obj.count_e2)


@admin.register(RecordingEvent)
class RecordingEventAdmin(ReadOnlyAdmin):
    list_display = ("at_ms", "kind", "market_ticker", "sid", "expected_seq", "got_seq", "detail")
    list_filter = (("at", TimeRangeFilter), "kind", "market_ticker")
    search_fields = ("market_ticker", "detail")
    date_hierarchy = "at"
    ordering = ("-at", "-id")

    @admin.display(description="at (UTC)", ordering="at")
    def at_ms(self, obj: RecordingEvent) -> str:
        return formatting.ms_time(obj.at)
