"""WorkerStatus moved from the dashboard app to the workers app without touching its table:
a database migrated before the move keeps its heartbeat rows, and the admin permissions on
the model follow it."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission
from django.contrib.contenttypes.models import ContentType
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone

from apps.workers.models import WorkerStatus
from apps.workers.selectors import ALIVE, worker_state
from apps.workers.services import report_worker_status

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.postgres]

# The last state before the move: the dashboard owns the model, the workers app has nothing.
BEFORE_THE_MOVE = [("dashboard", "0002_plural_name"), ("workers", None)]


def test_a_heartbeat_stored_before_the_move_is_read_and_updated_through_the_new_model() -> None:
    executor = MigrationExecutor(connection)
    latest = executor.loader.graph.leaf_nodes()
    try:
        old_state = executor.migrate(BEFORE_THE_MOVE)
        with pytest.raises(LookupError):
            old_state.apps.get_model("workers", "WorkerStatus")
        OldStatus = old_state.apps.get_model("dashboard", "WorkerStatus")
        # As in a database of that time: the model's content type (and permissions) under
        # the dashboard's label, none under the workers'.
        ContentType.objects.filter(model="workerstatus").delete()
        ContentType.objects.clear_cache()
        content_type = ContentType.objects.create(app_label="dashboard", model="workerstatus")
        permission = Permission.objects.create(
            codename="view_workerstatus", name="Can view", content_type=content_type
        )
        now = timezone.now()
        old = OldStatus.objects.create(
            name="ingest:oldhost:7",
            kind="ingest",
            host="oldhost",
            pid=7,
            started_at=now,
            updated_at=now,
            problems=["writer is stuck: queue not draining"],
            counters={"client": {"messages": 3}},
        )
        executor = MigrationExecutor(connection)
        executor.migrate(latest)
    finally:
        MigrationExecutor(connection).migrate(latest)  # never leave the test DB behind
        ContentType.objects.clear_cache()

    assert "rl_worker_status" in connection.introspection.table_names()
    row = WorkerStatus.objects.get(name="ingest:oldhost:7")
    assert row.pk == old.pk
    assert (row.kind, row.host, row.pid, row.healthy) == ("ingest", "oldhost", 7, True)
    assert row.problems == ["writer is stuck: queue not draining"]
    assert row.counters == {"client": {"messages": 3}}
    assert worker_state(row, timezone.now()) == ALIVE
    # The permission (and whatever points at the content type) now names the new model.
    permission.refresh_from_db()
    assert permission.content_type_id == content_type.pk
    assert ContentType.objects.get_for_model(WorkerStatus).pk == content_type.pk
    # The writers upsert the same row.
    report_worker_status(
        name=row.name, kind="ingest", started_at=now, counters={}, problems=[], stopped=True
    )
    assert WorkerStatus.objects.get(name=row.name).pk == old.pk
    assert WorkerStatus.objects.get(name=row.name).stopped_at is not None


def test_the_move_can_be_undone_without_losing_rows() -> None:
    now = timezone.now()
    WorkerStatus.objects.create(
        name="paper:h:8:m", kind="paper", host="h", pid=8, started_at=now, updated_at=now
    )
    executor = MigrationExecutor(connection)
    latest = executor.loader.graph.leaf_nodes()
    try:
        old_state = executor.migrate(BEFORE_THE_MOVE)
        OldStatus = old_state.apps.get_model("dashboard", "WorkerStatus")
        assert list(OldStatus.objects.values_list("name", flat=True)) == ["paper:h:8:m"]
    finally:
        MigrationExecutor(connection).migrate(latest)
        ContentType.objects.clear_cache()
    assert WorkerStatus.objects.get().name == "paper:h:8:m"
