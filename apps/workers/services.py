"""Writing worker heartbeats: one row per worker in ``rl_worker_status``.

A worker is named ``kind:host:pid[:label]`` (:func:`worker_name`). The paper trader upserts its
row directly (:func:`report_worker_status`, from a worker thread); the recorder sends the same
columns (:func:`heartbeat_fields`) through its batched writer, so that a hung database never
stalls its event loop.
"""

from __future__ import annotations

import os
import socket
from datetime import datetime
from typing import Any

from django.utils import timezone

from apps.workers.models import WorkerStatus


def worker_name(*, kind: str, label: str = "") -> str:
    base = f"{kind}:{socket.gethostname()}:{os.getpid()}"
    return f"{base}:{label}" if label else base


def heartbeat_fields(
    *,
    kind: str,
    started_at: datetime,
    counters: dict[str, Any],
    problems: list[str],
    stopped: bool = False,
) -> dict[str, Any]:
    """A heartbeat's columns (all but ``name``) as of now: healthy when there is no problem,
    ``stopped_at`` set on a clean stop."""
    now = timezone.now()
    return {
        "kind": kind,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started_at": started_at,
        "updated_at": now,
        "stopped_at": now if stopped else None,
        "healthy": not problems,
        "problems": problems,
        "counters": counters,
    }


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
    WorkerStatus.objects.update_or_create(
        name=name,
        defaults=heartbeat_fields(
            kind=kind, started_at=started_at, counters=counters, problems=problems, stopped=stopped
        ),
    )
