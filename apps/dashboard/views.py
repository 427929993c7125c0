"""JSON status views. Health is public (for load balancers); status needs a staff user."""

from __future__ import annotations

from django.contrib.admin.views.decorators import staff_member_required
from django.db import DatabaseError
from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET

from apps.dashboard import selectors


@require_GET
def health_view(request: HttpRequest) -> JsonResponse:
    try:
        body = selectors.health()
    except DatabaseError as exc:
        body = {"healthy": False, "workers": 0, "problems": [f"database: {type(exc).__name__}"]}
    return JsonResponse(body, status=200 if body["healthy"] else 503)


@require_GET
@staff_member_required(login_url="admin:login")
def status_view(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"health": selectors.health(), "workers": selectors.workers_status()})
