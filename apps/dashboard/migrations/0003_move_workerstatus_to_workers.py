"""WorkerStatus moved to the workers app (``workers.0001_initial``): state only.

The table ``rl_worker_status`` and its rows stay as they are. The model's content type is
handed over too, so the admin permissions and log entries that point at it follow the model.
"""

from django.db import migrations

OLD, NEW = "dashboard", "workers"


def _hand_over(apps, from_label: str, to_label: str) -> None:
    content_type = apps.get_model("contenttypes", "ContentType")
    rows = content_type.objects.filter(model="workerstatus")
    # When the target already exists (created by a post_migrate run), the old row is left
    # for remove_stale_contenttypes: two rows cannot share a label.
    if not rows.filter(app_label=to_label).exists():
        rows.filter(app_label=from_label).update(app_label=to_label)


def forward(apps, schema_editor) -> None:
    _hand_over(apps, OLD, NEW)


def backward(apps, schema_editor) -> None:
    _hand_over(apps, NEW, OLD)


class Migration(migrations.Migration):
    dependencies = [
        ("dashboard", "0002_plural_name"),
        ("workers", "0001_initial"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[migrations.DeleteModel(name="WorkerStatus")],
            database_operations=[],
        ),
        migrations.RunPython(forward, backward),
    ]
