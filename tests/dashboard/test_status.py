"""/rl/health and /rl/status read the workers' heartbeats."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from apps.dashboard.models import WorkerStatus
from apps.dashboard.services import report_worker_status, worker_name

pytestmark = pytest.mark.django_db


def beat(problems: list[str] | None = None, **counters) -> str:
    name = worker_name(kind="ingest", label="t")
    report_worker_status(
        name=name,
        kind="ingest",
        started_at=timezone.now(),
        counters={"client": counters},
        problems=problems or [],
    )
    return name


def test_health_is_public_and_healthy_with_a_fresh_heartbeat(client) -> None:
    beat(messages=10)
    response = client.get("/rl/health")
    assert response.status_code == 200
    assert response.json() == {"healthy": True, "workers": 1, "problems": []}


def test_health_reports_a_stuck_writer_with_503(client) -> None:
    beat(["writer is stuck: queue not draining"])
    response = client.get("/rl/health")
    assert response.status_code == 503
    assert "writer is stuck" in response.json()["problems"][0]


def test_a_silent_worker_makes_health_fail(client) -> None:
    name = beat()
    WorkerStatus.objects.filter(name=name).update(
        updated_at=timezone.now() - timedelta(seconds=120)
    )
    body = client.get("/rl/health").json()
    assert body["healthy"] is False
    assert "no heartbeat for" in body["problems"][0]


def test_a_stopped_worker_is_not_counted(client) -> None:
    name = beat()
    report_worker_status(
        name=name, kind="ingest", started_at=timezone.now(), counters={}, problems=[], stopped=True
    )
    assert client.get("/rl/health").json()["workers"] == 0


def test_status_needs_a_staff_user_and_shows_counters(client, django_user_model) -> None:
    beat(messages=1234, gaps=2)
    anonymous = client.get("/rl/status")
    assert anonymous.status_code == 401
    assert anonymous.json()["error"] == "not_authenticated"
    staff = django_user_model.objects.create_user("ops", password="x" * 12, is_staff=True)
    client.force_login(staff)
    body = client.get("/rl/status").json()
    assert body["health"]["healthy"] is True
    assert body["workers"][0]["counters"]["client"] == {"messages": 1234, "gaps": 2}
