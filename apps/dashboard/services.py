"""Writing worker heartbeats."""

from __future__ import annotations

import os
import socket
from datetime import datetime
from typing import Any

from django.utils import timezone

from apps.dashboard.models import WorkerStatus


def worker_name(*, kind: str, label: str = "") -> str:
    base = f"{kind}:{socket.gethostname()}:{os.getpid()}"
    return f"{base}:{label}" if label else base


def report_worker_status(
    *,
    name: str,
    kind: str,
    started_at: datetime,
    counters: dict[str, Any],
    problems: list[str],
    stopped: bool = False,
) -> None:
    """Upsert this worker's heartbeat row (one short transaction)."""
    now = timezone.now()
    WorkerStatus.objects.update_or_create(
        name=name,
        defaults={
            "kind": kind,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started_at": started_at,
            "updated_at": now,
            "stopped_at": now if stopped else None,
            "healthy": not problems,
            "problems": problems,
            "counters": counters,
        },
    )
