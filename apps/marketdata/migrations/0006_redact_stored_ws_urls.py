"""Connection rows stored before URLs were redacted may hold ``ws://user:secret@host`` URLs:
blank the credentials in place (the recorder now stores only the redacted form)."""

from django.db import migrations

from apps.marketdata.kalshi.urls import redact_url


def redact(apps, schema_editor):  # type: ignore[no-untyped-def]
    connection_model = apps.get_model("marketdata", "RecordingConnection")
    rows = connection_model.objects.filter(ws_url__contains="@").only("id", "ws_url")
    for row in rows.iterator():
        clean = redact_url(row.ws_url)
        if clean != row.ws_url:
            connection_model.objects.filter(pk=row.pk).update(ws_url=clean)
    rows = connection_model.objects.filter(ws_url__contains="?").only("id", "ws_url")
    for row in rows.iterator():
        connection_model.objects.filter(pk=row.pk).update(ws_url=redact_url(row.ws_url))


class Migration(migrations.Migration):
    dependencies = [("marketdata", "0005_bigint_sids")]

    operations = [migrations.RunPython(redact, migrations.RunPython.noop)]
