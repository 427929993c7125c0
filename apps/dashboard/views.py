"""Pages for people (the JSON API is in apps/dashboard/api/)."""

from __future__ import annotations

import math

from django.contrib import admin
from django.contrib.admin.views.decorators import staff_member_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from apps.dashboard.consumers import LIVE_WS_PATH, SUMMARY_INTERVAL_S
from apps.dashboard.throttling import FailedLoginThrottle


@require_GET
@staff_member_required
def live_view(request: HttpRequest) -> HttpResponse:
    """Top of book per market (pushed over a WebSocket as it changes), ingestion counters,
    the paper trader and the equity plot of its episode (refreshed by the same socket)."""
    context = {"ws_path": LIVE_WS_PATH, "summary_interval_s": SUMMARY_INTERVAL_S}
    return render(request, "dashboard/live.html", context)


def throttled_admin_login(request: HttpRequest) -> HttpResponse:
    """The admin's login view, but a POST from an address past RL_AUTH_FAILURE_RATE failed
    attempts is refused with 429 before its password is checked."""
    if request.method == "POST":
        wait = FailedLoginThrottle().blocked_for(request)
        if wait is not None:
            seconds = math.ceil(wait)
            response = HttpResponse(
                f"Too many failed login attempts from your address: try again in {seconds} s.\n",
                status=429,
                content_type="text/plain; charset=utf-8",
            )
            response["Retry-After"] = str(seconds)
            return response
    return admin.site.login(request)
