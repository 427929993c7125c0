"""Heartbeats of the long-running workers (recorders, paper traders).

Each worker process upserts its own row every few seconds, so status works across processes
and hosts with nothing but the database they already share. The table was created by the
dashboard app (its migration 0001) and moved here without a database change: the dashboard
reads it, the workers write it.
"""

from __future__ import annotations

from django.db import models


class WorkerStatus(models.Model):
    name = models.CharField(max_length=200, unique=True, help_text="kind:host:pid[:label]")
    kind = models.CharField(max_length=32, help_text="ingest, paper, ...")
    host = models.CharField(max_length=255)
    pid = models.IntegerField()
    started_at = models.DateTimeField()
    updated_at = models.DateTimeField()
    stopped_at = models.DateTimeField(null=True, blank=True)
    healthy = models.BooleanField(default=True)
    problems = models.JSONField(default=list, blank=True)
    counters = models.JSONField(default=dict, blank=True)

    class Meta:
        db_table = "rl_worker_status"
        ordering = ["kind", "name"]
        verbose_name_plural = "worker statuses"

    def __str__(self) -> str:
        return self.name
