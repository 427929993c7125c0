"""Record Kalshi order books (snapshots + deltas) and public trades into the database."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.marketdata.ingest import IngestError, IngestOptions, run_ingest
from kalshiflow_site.cli import non_negative_float, positive_float, positive_int


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


class Command(BaseCommand):
    help = (
        "Record live order books into the database through the batched, lossless writer. "
        "Stops after --duration seconds, or on Ctrl-C / SIGTERM after flushing every row."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--markets", type=_csv, default=[], help="comma-separated tickers")
        parser.add_argument(
            "--series", type=_csv, default=[], help="record every open market of these series"
        )
        parser.add_argument(
            "--event",
            dest="events",
            type=_csv,
            default=[],
            help="record every open market of these events",
        )
        parser.add_argument("--exchange", choices=["local", "demo", "prod"], default="local")
        parser.add_argument("--ws-url", default="", help="any Kalshi-compatible WebSocket URL")
        parser.add_argument(
            "--duration", type=non_negative_float, default=0.0, help="seconds; 0 = until stopped"
        )
        parser.add_argument(
            "--use-yes-price", action="store_true", help="subscribe with use_yes_price=true"
        )
        parser.add_argument(
            "--no-trades", action="store_true", help="do not record the trade channel"
        )
        parser.add_argument(
            "--no-lifecycle",
            action="store_true",
            help="do not record the market_lifecycle_v2 channel (market metadata and fees "
            "are still fetched over REST)",
        )
        parser.add_argument(
            "--batch-rows", type=positive_int, default=None, help="rows per database batch"
        )
        parser.add_argument(
            "--flush-interval", type=positive_float, default=None, help="seconds between batches"
        )
        parser.add_argument(
            "--snapshot-interval",
            type=non_negative_float,
            default=60.0,
            help="seconds between our own book snapshots; 0 = off",
        )
        parser.add_argument(
            "--progress-interval",
            type=positive_float,
            default=5.0,
            help="seconds between progress lines",
        )

    def handle(self, *args: object, **opts: object) -> None:
        options = IngestOptions(
            markets=opts["markets"],
            series=opts["series"],
            events=opts["events"],
            exchange=opts["exchange"],
            ws_url=opts["ws_url"],
            duration_s=opts["duration"],
            use_yes_price=opts["use_yes_price"],
            record_trades=not opts["no_trades"],
            record_lifecycle=not opts["no_lifecycle"],
            batch_rows=opts["batch_rows"],
            flush_interval_s=opts["flush_interval"],
            snapshot_interval_s=opts["snapshot_interval"],
            progress_interval_s=opts["progress_interval"],
        )
        try:
            result = run_ingest(options, progress=lambda line: self.stdout.write(line))
        except IngestError as exc:
            raise CommandError(str(exc)) from None
        w, c = result.writer, result.client
        self.stdout.write(
            self.style.SUCCESS(
                f"done in {result.elapsed_s:.1f}s: {c['messages']} messages, "
                f"{w.get('rows_written', 0)} rows written, gaps {c['gaps']}, "
                f"reconnects {c['reconnects']}, malformed {c['malformed']}"
            )
        )
