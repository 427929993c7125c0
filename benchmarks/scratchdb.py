"""A throw-away PostgreSQL database for a benchmark run: created, migrated, dropped."""

from __future__ import annotations

import os

import psycopg
from psycopg import sql

PG_SERVER = "postgres://postgres@127.0.0.1:5432"


def _drop(name: str, server: str) -> None:
    with psycopg.connect(f"{server}/postgres", autocommit=True) as admin:
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def setup_scratch_django(name: str, *, server: str = PG_SERVER, **env: str) -> str:
    """(Re)create database ``name``, point Django at it, set it up and migrate.

    ``env`` adds environment variables (e.g. ``RL_VAR_DIR``) before Django reads its
    settings. Returns the database URL.
    """
    _drop(name, server)
    with psycopg.connect(f"{server}/postgres", autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = f"{server}/{name}"
    os.environ["DATABASE_URL"] = url
    os.environ.update(env)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "kalshiflow_site.settings")
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    return url


def drop_scratch_database(name: str, *, server: str = PG_SERVER) -> None:
    """Close Django's connections and drop database ``name``."""
    from django.db import connections

    connections.close_all()
    _drop(name, server)
