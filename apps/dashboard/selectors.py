"""Reading worker heartbeats into the /rl/status and /rl/health answers."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.conf import settings
from django.utils import timezone

from apps.dashboard.models import WorkerStatus


def stale_after() -> timedelta:
    return timedelta(seconds=getattr(settings, "RL_HEARTBEAT_STALE_S", 15))


def workers_status(*, include_stopped: bool = False) -> list[dict[str, Any]]:
    """Every running worker's last heartbeat, with a problem added when it went silent."""
    now = timezone.now()
    rows = WorkerStatus.objects.all()
    if not include_stopped:
        rows = rows.filter(stopped_at__isnull=True)
    result = []
    for row in rows:
        problems = list(row.problems)
        age_s = (now - row.updated_at).total_seconds()
        if age_s > stale_after().total_seconds():
            problems.append(f"no heartbeat for {age_s:.0f}s")
        result.append(
            {
                "name": row.name,
                "kind": row.kind,
                "host": row.host,
                "pid": row.pid,
                "started_at": row.started_at.isoformat(),
                "updated_at": row.updated_at.isoformat(),
                "heartbeat_age_s": round(age_s, 3),
                "healthy": not problems,
                "problems": problems,
                "counters": row.counters,
            }
        )
    return result


def health() -> dict[str, Any]:
    """Healthy unless a running worker reports a problem or has gone silent."""
    workers = workers_status()
    problems = [f"{w['name']}: {p}" for w in workers for p in w["problems"]]
    return {"healthy": not problems, "workers": len(workers), "problems": problems}
