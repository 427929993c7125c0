"""Load recorded rows into a fresh SQLite database (the embedded default) and save the
history the loader builds from it: ``python -m tests.simulation.sqlite_load rows.json out.npz
markets start end step_s``. Run in a subprocess with no DATABASE_URL, so the project's own
settings pick SQLite and its plain tables."""

from __future__ import annotations

import json
import os
import sys
from datetime import datetime
from pathlib import Path


def main(rows_path: str, out_path: str, markets: str, start: str, end: str, step_s: str) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "kalshiflow_site.settings")
    import django

    django.setup()
    from django.apps import apps
    from django.core.management import call_command
    from django.db import connection
    from django.db.models import DateTimeField

    from apps.simulation.loader import load

    assert connection.vendor == "sqlite", connection.vendor
    call_command("migrate", verbosity=0)
    # Rows as {model label: [{attname: value}]}, times as exact ISO strings (Django's own JSON
    # serializer would cut microseconds to milliseconds).
    for label, rows in json.loads(Path(rows_path).read_text()).items():
        model = apps.get_model(label)
        times = {f.attname for f in model._meta.concrete_fields if isinstance(f, DateTimeField)}
        objs = []
        for row in rows:
            for name in times:
                if row[name] is not None:
                    row[name] = datetime.fromisoformat(row[name])
            objs.append(model(**row))
        model.objects.bulk_create(objs, batch_size=2000)
    history = load(
        markets.split(","),
        datetime.fromisoformat(start),
        datetime.fromisoformat(end),
        step_s=float(step_s),
        use_cache=False,
        progress=False,
    )
    history.save(Path(out_path))


if __name__ == "__main__":
    main(*sys.argv[1:])
