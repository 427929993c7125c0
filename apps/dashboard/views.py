"""Pages for people (the JSON API is in apps/dashboard/api/)."""

from __future__ import annotations

from django.contrib.admin.views.decorators import staff_member_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from apps.dashboard.consumers import LIVE_WS_PATH, SUMMARY_INTERVAL_S


@require_GET
@staff_member_required
def live_view(request: HttpRequest) -> HttpResponse:
    """Top of book per market (pushed over a WebSocket as it changes), ingestion counters,
    the paper trader and the equity plot of its episode (refreshed by the same socket)."""
    context = {"ws_path": LIVE_WS_PATH, "summary_interval_s": SUMMARY_INTERVAL_S}
    return render(request, "dashboard/live.html", context)
