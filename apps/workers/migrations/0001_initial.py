"""WorkerStatus moves here from the dashboard app: state only.

The table ``rl_worker_status`` was created by ``dashboard.0001_initial`` and keeps its name and
rows; this migration only tells Django that the model is now ``workers.WorkerStatus``
(``dashboard.0003_move_workerstatus_to_workers`` removes it from the dashboard's state).
"""

from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True

    dependencies = [
        # The table exists (created by the dashboard) before this app owns it.
        ("dashboard", "0002_plural_name"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name="WorkerStatus",
                    fields=[
                        (
                            "id",
                            models.BigAutoField(
                                auto_created=True,
                                primary_key=True,
                                serialize=False,
                                verbose_name="ID",
                            ),
                        ),
                        (
                            "name",
                            models.CharField(
                                help_text="kind:host:pid[:label]", max_length=200, unique=True
                            ),
                        ),
                        ("kind", models.CharField(help_text="ingest, paper, ...", max_length=32)),
                        ("host", models.CharField(max_length=255)),
                        ("pid", models.IntegerField()),
                        ("started_at", models.DateTimeField()),
                        ("updated_at", models.DateTimeField()),
                        ("stopped_at", models.DateTimeField(blank=True, null=True)),
                        ("healthy", models.BooleanField(default=True)),
                        ("problems", models.JSONField(blank=True, default=list)),
                        ("counters", models.JSONField(blank=True, default=dict)),
                    ],
                    options={
                        "db_table": "rl_worker_status",
                        "ordering": ["kind", "name"],
                        "verbose_name_plural": "worker statuses",
                    },
                ),
            ],
            database_operations=[],
        ),
    ]
