from __future__ import annotations

from django.contrib import admin

from apps.dashboard.models import WorkerStatus


@admin.register(WorkerStatus)
class WorkerStatusAdmin(admin.ModelAdmin):
    list_display = ("name", "kind", "healthy", "updated_at", "stopped_at")
    list_filter = ("kind", "healthy")
    readonly_fields = [f.name for f in WorkerStatus._meta.fields]
