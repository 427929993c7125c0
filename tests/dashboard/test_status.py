"""/rl/health and /rl/status read the workers' heartbeats."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from apps.workers.models import WorkerStatus
from apps.workers.services import report_worker_status, worker_name

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
    assert response.json() == {
        "healthy": True,
        "workers": 1,
        "dead": 0,
        "expected": [],
        "problems": [],
    }


def test_health_reports_a_stuck_writer_with_503(client) -> None:
    beat(["writer is stuck: queue not draining"])
    response = client.get("/rl/health")
    assert response.status_code == 503
    assert "writer is stuck" in response.json()["problems"][0]


def age(name: str, seconds: float) -> None:
    """Make the worker's last heartbeat ``seconds`` old (as a process killed then would)."""
    WorkerStatus.objects.filter(name=name).update(
        updated_at=timezone.now() - timedelta(seconds=seconds)
    )


def test_a_silent_worker_makes_health_fail(client, settings) -> None:
    settings.RL_HEARTBEAT_STALE_S, settings.RL_WORKER_DEAD_AFTER_S = 15, 300
    age(beat(), 120)
    response = client.get("/rl/health")
    assert response.status_code == 503
    body = response.json()
    assert body["healthy"] is False
    assert "no heartbeat for 120s" in body["problems"][0]
    assert (body["workers"], body["dead"]) == (1, 0)


def test_a_dead_worker_is_shown_dead_but_does_not_keep_health_red(
    client, settings, staff_user
) -> None:
    settings.RL_HEARTBEAT_STALE_S, settings.RL_WORKER_DEAD_AFTER_S = 15, 300
    settings.RL_HEALTH_EXPECT = []
    # A SIGKILLed recorder: its row says running, and reported a problem before it died.
    dead = beat(["writer is stuck: queue not draining"])
    age(dead, 301)
    response = client.get("/rl/health")
    assert response.status_code == 200, response.json()
    assert response.json() == {
        "healthy": True,
        "workers": 0,
        "dead": 1,
        "expected": [],
        "problems": [],
    }
    client.force_login(staff_user)
    status = client.get("/rl/status").json()
    (worker,) = status["workers"]
    assert (worker["name"], worker["state"], worker["healthy"]) == (dead, "dead", False)
    assert worker["problems"][0] == "writer is stuck: queue not draining"
    assert worker["problems"][1].startswith("dead: no heartbeat for 301s")
    assert status["health"]["healthy"] is True
    # The admin shows it dead too, and its state filter finds it.
    listing = client.get("/admin/workers/workerstatus/", {"state": "dead"})
    assert listing.status_code == 200
    assert dead in listing.content.decode()
    assert '<td class="field-state">dead</td>' in listing.content.decode()
    alive_only = client.get("/admin/workers/workerstatus/", {"state": "alive"}).content
    assert dead not in alive_only.decode()
    row = WorkerStatus.objects.get(name=dead)
    page = client.get(f"/admin/workers/workerstatus/{row.pk}/change/").content.decode()
    assert "dead" in page


def test_an_expected_kind_without_a_live_worker_is_a_503(client, settings) -> None:
    settings.RL_HEARTBEAT_STALE_S, settings.RL_WORKER_DEAD_AFTER_S = 15, 300
    settings.RL_HEALTH_EXPECT = ["ingest"]
    age(beat(), 3600)  # the only recorder is dead
    response = client.get("/rl/health")
    assert response.status_code == 503
    body = response.json()
    assert body["expected"] == [{"worker": "ingest", "alive": 0}]
    assert body["problems"] == ["expected ingest: no live worker (RL_HEALTH_EXPECT)"]
    # A restarted recorder (a new pid, so a new row) fulfils it; the dead row stays dead.
    report_worker_status(
        name="ingest:otherhost:4242",
        kind="ingest",
        started_at=timezone.now(),
        counters={},
        problems=[],
    )
    response = client.get("/rl/health")
    assert response.status_code == 200, response.json()
    assert response.json()["expected"] == [{"worker": "ingest", "alive": 1}]
    assert response.json()["dead"] == 1


def test_nothing_running_is_a_503_only_for_what_is_expected(client, settings) -> None:
    settings.RL_HEALTH_EXPECT = []
    assert client.get("/rl/health").status_code == 200
    settings.RL_HEALTH_EXPECT = ["paper"]
    response = client.get("/rl/health")
    assert response.status_code == 503
    assert response.json()["problems"] == ["expected paper: no live worker (RL_HEALTH_EXPECT)"]


def test_an_expected_kind_and_label_needs_that_label(client, settings) -> None:
    settings.RL_HEALTH_EXPECT = ["paper:alpha"]
    report_worker_status(
        name=worker_name(kind="paper", label="beta"),
        kind="paper",
        started_at=timezone.now(),
        counters={},
        problems=[],
    )
    assert client.get("/rl/health").status_code == 503
    report_worker_status(
        name=worker_name(kind="paper", label="alpha"),
        kind="paper",
        started_at=timezone.now(),
        counters={},
        problems=[],
    )
    body = client.get("/rl/health").json()
    assert body["healthy"] is True
    assert body["expected"] == [{"worker": "paper:alpha", "alive": 1}]


def test_a_silent_expected_worker_is_not_live(client, settings) -> None:
    settings.RL_HEARTBEAT_STALE_S, settings.RL_WORKER_DEAD_AFTER_S = 15, 300
    settings.RL_HEALTH_EXPECT = ["ingest"]
    age(beat(), 60)
    body = client.get("/rl/health").json()
    assert body["expected"] == [{"worker": "ingest", "alive": 0}]
    assert len(body["problems"]) == 2  # silent, and the expectation unmet


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
