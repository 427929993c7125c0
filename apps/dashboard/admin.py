from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone

from apps.workers import selectors
from apps.workers.models import WorkerStatus


class StateFilter(admin.SimpleListFilter):
    """alive / silent / dead / stopped, by the same thresholds as /rl/status."""

    title = "state"
    parameter_name = "state"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(state, state) for state in selectors.WORKER_STATES]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        value = self.value()
        if value not in selectors.WORKER_STATES:
            return queryset
        return queryset.filter(selectors.worker_state_q(value, timezone.now()))


@admin.register(WorkerStatus)
class WorkerStatusAdmin(admin.ModelAdmin):
    list_display = ("name", "kind", "state", "healthy", "updated_at", "stopped_at")
    list_filter = (StateFilter, "kind", "healthy")
    readonly_fields = ["state", *(f.name for f in WorkerStatus._meta.fields)]

    @admin.display(description="state")
    def state(self, obj: WorkerStatus) -> str:
        """alive, silent (late: unhealthy), dead (silent beyond RL_WORKER_DEAD_AFTER_S; delete
        the row to forget it) or stopped."""
        return selectors.worker_state(obj, timezone.now())
