"""``manage.py partitions ensure|list|archive|drop``: the recorded tables' time partitions.

Thin by design: parse options, call :mod:`apps.marketdata.partitions`.
"""

from __future__ import annotations

from argparse import RawDescriptionHelpFormatter
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connection

from apps.marketdata import partitions
from apps.marketdata.partitions import PARTITIONED, PartitionError


class Command(BaseCommand):
    help = (
        "Time partitions of the recorded tables (PostgreSQL; SQLite keeps plain tables).\n\n"
        "The snapshot, delta and trade tables are partitioned by received_at, one partition per "
        "RL_PARTITION_INTERVAL (day or week, UTC), plus a default partition that takes rows "
        "outside every range (nothing is refused).\n"
        "  ensure   create partitions from --start (default: now) through RL_PARTITION_AHEAD "
        "intervals ahead (the recorder also does this at start and hourly)\n"
        "  list     partitions with exact row counts, and the archived ones\n"
        "  archive  write partitions ending on or before --before to zstd Parquet files under "
        "RL_ARCHIVE_DIR (one per partition, with a JSON manifest: table, range, rows, sha256), "
        "check the row count, then drop them; the history loader reads archived ranges "
        "transparently\n"
        "  drop     drop partitions ending on or before --before (their rows are gone)"
    )

    def create_parser(self, prog_name: str, subcommand: str, **kwargs: Any) -> CommandParser:
        parser = super().create_parser(prog_name, subcommand, **kwargs)
        parser.formatter_class = RawDescriptionHelpFormatter
        return parser

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("action", choices=("ensure", "list", "archive", "drop"))
        parser.add_argument(
            "--table",
            action="append",
            choices=sorted(PARTITIONED),
            help="only this table (repeatable; default: all three)",
        )
        parser.add_argument("--start", help="ensure: first interval, YYYY-MM-DD (UTC)")
        parser.add_argument(
            "--ahead", type=int, help="ensure: intervals past now (default RL_PARTITION_AHEAD)"
        )
        parser.add_argument(
            "--before",
            help="archive/drop: partitions whose range ends on or before YYYY-MM-DD (UTC)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if connection.vendor != "postgresql":
            raise CommandError(
                "partitions need PostgreSQL (DATABASE_URL); SQLite keeps plain tables"
            )
        tables = options["table"] or list(PARTITIONED)
        action = options["action"]
        try:
            partitions.settle_pending()
            if action == "ensure":
                start = partitions.day_of(options["start"]) if options["start"] else None
                created = partitions.ensure(tables, start=start, ahead=options["ahead"])
                self.stdout.write(f"created {len(created)} partitions: {' '.join(created)}")
            elif action == "list":
                self._list(tables)
            else:
                if not options["before"]:
                    raise CommandError(f"{action} needs --before YYYY-MM-DD")
                before = partitions.day_of(options["before"])
                for table in tables:
                    for part in partitions.older_than(table, before):
                        if action == "archive":
                            done = partitions.archive(table, part.name)
                            self.stdout.write(
                                f"archived {part.name}: {done.rows} rows -> {done.path} "
                                f"(sha256 {done.sha256[:12]}...)"
                            )
                        else:
                            rows = partitions.drop(table, part.name)
                            self.stdout.write(f"dropped {part.name}: {rows} rows")
        except (PartitionError, ValueError) as exc:
            raise CommandError(str(exc)) from None

    def _list(self, tables: list[str]) -> None:
        self.stdout.write(
            f"interval {settings.RL_PARTITION_INTERVAL}, archive {partitions.archive_dir()}"
        )
        for table in tables:
            for part in partitions.partitions(table, count=True):
                span = "default" if part.is_default else f"[{part.lo:%F %H:%M}, {part.hi:%F %H:%M})"
                self.stdout.write(f"{table:24} {part.name:34} {span:36} {part.rows} rows")
            for item in partitions.archived(table):
                self.stdout.write(
                    f"{table:24} {item.partition:34} [{item.lo:%F %H:%M}, {item.hi:%F %H:%M}) "
                    f"{item.rows} rows archived in {item.path.name}"
                )
