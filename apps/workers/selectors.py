"""Reading worker heartbeats: each worker's state, /rl/health's verdict, one process's beat.

The dashboard (``/rl/health``, ``/rl/status``, the admin, the live page) shows these; the
recorder's orphan sweep asks whether a recorder process still beats (:func:`last_heartbeat`).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from apps.workers.models import WorkerStatus

# A worker's state, from its heartbeat row (see README "Worker health"):
ALIVE = "alive"  # heartbeat within RL_HEARTBEAT_STALE_S
SILENT = "silent"  # late, but within RL_WORKER_DEAD_AFTER_S: unhealthy
DEAD = "dead"  # silent beyond RL_WORKER_DEAD_AFTER_S (a killed process): shown, not health
STOPPED = "stopped"  # stopped cleanly (its last heartbeat says so)
WORKER_STATES = (ALIVE, SILENT, DEAD, STOPPED)


def stale_after() -> timedelta:
    return timedelta(seconds=getattr(settings, "RL_HEARTBEAT_STALE_S", 15))


def dead_after() -> timedelta:
    return timedelta(seconds=getattr(settings, "RL_WORKER_DEAD_AFTER_S", 300))


def worker_state(row: WorkerStatus, now: datetime) -> str:
    if row.stopped_at is not None:
        return STOPPED
    age = now - row.updated_at
    if age > dead_after():
        return DEAD
    return SILENT if age > stale_after() else ALIVE


def worker_state_q(state: str, now: datetime) -> Q:
    """The rows in ``state`` at ``now``, as a filter (the admin's list filter): the same
    thresholds as :func:`worker_state`."""
    running = Q(stopped_at__isnull=True)
    if state == STOPPED:
        return ~running
    if state == DEAD:
        return running & Q(updated_at__lt=now - dead_after())
    if state == SILENT:
        return running & Q(updated_at__lt=now - stale_after(), updated_at__gte=now - dead_after())
    if state == ALIVE:
        return running & Q(updated_at__gte=now - stale_after())
    raise ValueError(f"unknown worker state {state!r}")


def _label(name: str) -> str:
    # Names are kind:host:pid[:label] (apps.workers.services.worker_name).
    parts = name.split(":", 3)
    return parts[3] if len(parts) == 4 else ""


def workers_status(*, include_stopped: bool = False) -> list[dict[str, Any]]:
    """Every worker's last heartbeat and state (stopped ones only with ``include_stopped``).

    A silent or dead worker gets a problem saying for how long it has been quiet; a worker is
    ``healthy`` only when alive and reporting no problem."""
    now = timezone.now()
    rows = WorkerStatus.objects.all()
    if not include_stopped:
        rows = rows.filter(stopped_at__isnull=True)
    result = []
    for row in rows:
        state = worker_state(row, now)
        problems = list(row.problems)
        age_s = (now - row.updated_at).total_seconds()
        if state == SILENT:
            problems.append(f"no heartbeat for {age_s:.0f}s")
        elif state == DEAD:
            problems.append(
                f"dead: no heartbeat for {age_s:.0f}s "
                f"(> RL_WORKER_DEAD_AFTER_S={dead_after().total_seconds():g})"
            )
        result.append(
            {
                "name": row.name,
                "kind": row.kind,
                "label": _label(row.name),
                "host": row.host,
                "pid": row.pid,
                "state": state,
                "started_at": row.started_at.isoformat(),
                "updated_at": row.updated_at.isoformat(),
                "heartbeat_age_s": round(age_s, 3),
                "healthy": state == ALIVE and not problems,
                "problems": problems,
                "counters": row.counters,
            }
        )
    return result


def expected_workers() -> list[str]:
    """RL_HEALTH_EXPECT: ``kind`` or ``kind:label`` entries that must each have a live worker."""
    return list(getattr(settings, "RL_HEALTH_EXPECT", []))


def _matches(expect: str, worker: dict[str, Any]) -> bool:
    kind, _, label = expect.partition(":")
    return worker["kind"] == kind and (not label or worker["label"] == label)


def health(workers: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """What /rl/health answers: unhealthy when a running worker reports a problem or has gone
    silent, or when an expected worker (RL_HEALTH_EXPECT) has no live instance.

    A dead worker (silent beyond RL_WORKER_DEAD_AFTER_S, e.g. SIGKILLed) no longer counts by
    itself: a process that is gone for good must not keep the service red forever. It only
    matters through the expectation it no longer fulfils."""
    if workers is None:
        workers = workers_status()
    running = [w for w in workers if w["state"] in (ALIVE, SILENT)]
    problems = [f"{w['name']}: {p}" for w in running for p in w["problems"]]
    expected = []
    for expect in expected_workers():
        alive = sum(1 for w in workers if w["state"] == ALIVE and _matches(expect, w))
        expected.append({"worker": expect, "alive": alive})
        if not alive:
            problems.append(f"expected {expect}: no live worker (RL_HEALTH_EXPECT)")
    return {
        "healthy": not problems,
        "workers": len(running),
        "dead": sum(1 for w in workers if w["state"] == DEAD),
        "expected": expected,
        "problems": problems,
    }


def workers_of_kind(kind: str) -> list[dict[str, Any]]:
    """The running (alive or silent) workers of ``kind``: dead ones are in /rl/status only."""
    return [w for w in workers_status() if w["kind"] == kind and w["state"] != DEAD]


def last_heartbeat(
    *, kind: str, host: str, pid: int, started_by: datetime
) -> tuple[datetime, datetime | None] | None:
    """(``updated_at``, ``stopped_at``) of the newest heartbeat of process ``pid`` on ``host``
    among the ``kind`` workers started no later than ``started_by``; None without one.

    The start bound tells a reused pid from the process that did something at ``started_by``
    (e.g. the recorder that opened a connection then)."""
    return (
        WorkerStatus.objects.filter(kind=kind, host=host, pid=pid, started_at__lte=started_by)
        .order_by("-updated_at")
        .values_list("updated_at", "stopped_at")
        .first()
    )
