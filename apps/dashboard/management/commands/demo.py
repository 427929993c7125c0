"""The product end to end, offline, on embedded defaults (``./run demo``)."""

from __future__ import annotations

import time
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db.models import Count

from apps.marketdata.exchange import (
    ApiKey,
    ExchangeConfig,
    ExchangeThread,
    LocalExchange,
    SyntheticConfig,
    SyntheticSource,
    ensure_dev_keys,
)
from apps.marketdata.ingest import IngestError, IngestOptions, run_ingest
from apps.marketdata.kalshi.units import e2_to_count, e4_to_dollars
from apps.marketdata.models import (
    OrderbookDelta,
    OrderbookSnapshot,
    PublicTrade,
    RecordingConnection,
    RecordingEvent,
)
from apps.marketdata.selectors import rebuild_latest_book


class Command(BaseCommand):
    help = "Run the whole product offline against the bundled local exchange."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--markets", type=int, default=5, help="synthetic markets")
        parser.add_argument("--rate", type=float, default=1000.0, help="exchange messages/s")
        parser.add_argument("--record-seconds", type=float, default=30.0)
        parser.add_argument("--seed", type=int, default=7)

    def handle(self, *args: object, **opts: object) -> None:
        started = time.monotonic()
        self.section("1. local exchange")
        keys = ensure_dev_keys(Path(settings.LOCAL_EXCHANGE_KEY_DIR), announce=self.stdout.write)
        exchange = LocalExchange(
            ExchangeConfig(
                keys=(ApiKey(public_key=keys.public_key_path, key_id=keys.key_id),),
                source=SyntheticSource(
                    SyntheticConfig(markets=opts["markets"], rate=opts["rate"], seed=opts["seed"])
                ),
            )
        )
        with ExchangeThread(exchange) as url:
            self.stdout.write(f"serving {opts['markets']} synthetic markets at {url}")
            self.section(f"2. recording for {opts['record_seconds']:.0f}s")
            try:
                result = run_ingest(
                    IngestOptions(
                        ws_url=url,
                        exchange="local",
                        duration_s=opts["record_seconds"],
                        snapshot_interval_s=10.0,
                    ),
                    progress=lambda line: self.stdout.write(f"  {line}"),
                )
            except IngestError as exc:
                raise CommandError(str(exc)) from None
        self.section("rows per table")
        for model in (
            RecordingConnection,
            OrderbookSnapshot,
            OrderbookDelta,
            PublicTrade,
            RecordingEvent,
        ):
            self.stdout.write(f"  {model._meta.db_table:28s} {model.objects.count():>9,d}")
        by_market = dict(
            OrderbookDelta.objects.values_list("market_ticker").annotate(n=Count("id"))
        )
        self.section("final top of book (YES bid / ask); the book rebuilt from the database")
        for ticker, book in sorted(result.books.items()):
            bid, ask = book.best_yes_bid(), book.best_yes_ask()
            rebuilt = rebuild_latest_book(market_ticker=ticker, connection_id=result.connection_id)
            same = rebuilt.book.snapshot_levels() == book.snapshot_levels()
            self.stdout.write(
                f"  {ticker:24s} bid {self.level(bid)}  ask {self.level(ask)}  "
                f"deltas {by_market.get(ticker, 0):>7,d}  "
                f"{'equals the live book' if same else 'DIFFERS from the live book'}"
            )
        self.stdout.write(
            self.style.SUCCESS(f"\ndemo finished in {time.monotonic() - started:.0f}s")
        )

    def section(self, title: str) -> None:
        self.stdout.write(self.style.MIGRATE_HEADING(f"\n== {title}"))

    @staticmethod
    def level(level: tuple[int, int] | None) -> str:
        if level is None:
            return "   --   "
        return f"${e4_to_dollars(level[0])} x {e2_to_count(level[1]):>9s}"
