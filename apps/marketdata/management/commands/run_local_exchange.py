"""``manage.py run_local_exchange``: serve the bundled Kalshi-compatible exchange.

Thin by design: parse options, build the database replay if asked (the one source that needs
Django, so it is built here rather than by the exchange), call
``apps.marketdata.exchange.runner.run_local_exchange``.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.marketdata.db_replay import DbReplaySource
from apps.marketdata.exchange.config import FaultConfig
from apps.marketdata.exchange.errors import ConfigError, MarketError
from apps.marketdata.exchange.planted_world import EDGES, PlantedConfig
from apps.marketdata.exchange.runner import build_source, run_local_exchange


class Command(BaseCommand):
    help = (
        "Serve a local Kalshi-compatible exchange (WebSocket /trade-api/ws/v2 with Kalshi's "
        "signed handshake, plus REST /trade-api/v2/markets): synthetic markets by default, or "
        "a replay of a JSONL capture or of the recorded database."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default=settings.LOCAL_EXCHANGE_HOST)
        parser.add_argument("--port", type=int, default=settings.LOCAL_EXCHANGE_PORT)
        src = parser.add_argument_group("market data")
        src.add_argument("--markets", type=int, default=8, help="synthetic markets (default 8)")
        src.add_argument(
            "--rate",
            type=float,
            default=settings.LOCAL_EXCHANGE_MSG_RATE,
            help="synthetic book messages per second across all markets",
        )
        src.add_argument("--seed", type=int, default=0, help="synthetic random seed")
        src.add_argument(
            "--max-messages", type=int, default=None, help="stop generating after this many"
        )
        src.add_argument(
            "--resolve-after",
            type=float,
            default=None,
            metavar="SECONDS",
            help="synthetic markets close, resolve and settle this long after the start "
            "(market_lifecycle_v2); default: never",
        )
        src.add_argument(
            "--resolve-markets", type=int, default=1, help="how many markets resolve (default 1)"
        )
        src.add_argument("--replay-jsonl", metavar="PATH", help="replay a JSONL capture")
        src.add_argument(
            "--replay-db", action="store_true", help="replay recorded books from the database"
        )
        src.add_argument(
            "--speed",
            type=float,
            default=1.0,
            help="replay speed: N x recorded time; 0 = as fast as clients read",
        )
        src.add_argument("--tickers", help="comma-separated markets to replay from the database")
        src.add_argument(
            "--recorded-use-yes-price",
            action="store_true",
            help="the JSONL capture was subscribed with use_yes_price=true",
        )
        planted = parser.add_argument_group(
            "planted edge (two markets whose makers follow a known process; see "
            "apps/marketdata/exchange/planted_world.py)"
        )
        planted.add_argument(
            "--planted",
            choices=EDGES,
            help="serve the planted world: lead_lag (the follower lags the leader) or none",
        )
        planted.add_argument("--planted-lag", type=float, default=3.0, help="follower lag, s")
        planted.add_argument("--planted-jump", type=int, default=8, help="jump size, cents")
        planted.add_argument(
            "--planted-gap", type=float, default=12.0, help="mean seconds between jumps"
        )
        parser.add_argument(
            "--duration", type=float, default=0.0, help="seconds to run; 0 = until Ctrl-C"
        )
        parser.add_argument(
            "--progress-interval", type=float, default=5.0, help="seconds between progress lines"
        )
        auth = parser.add_argument_group("authentication")
        auth.add_argument(
            "--public-key",
            metavar="PATH",
            help="accept signatures by this public key (default: the development key)",
        )
        auth.add_argument("--key-id", help="with --public-key: the only key id accepted")
        auth.add_argument(
            "--key-dir",
            default=str(settings.LOCAL_EXCHANGE_KEY_DIR),
            help="where the development key lives (default LOCAL_EXCHANGE_KEY_DIR)",
        )
        auth.add_argument("--max-skew", type=float, default=30.0, help="allowed clock skew, s")
        parser.add_argument("--ping-interval", type=float, default=10.0, help="ping period, s")
        faults = parser.add_argument_group("fault injection (for testing clients)")
        faults.add_argument("--drop-after", type=int, help="abort each connection after K msgs")
        faults.add_argument("--gap-after", type=int, help="skip one seq per sid after N msgs")
        faults.add_argument("--gap-every", type=int, help="skip one seq every M msgs per sid")
        faults.add_argument("--malformed-every", type=int, help="a malformed frame every M msgs")
        faults.add_argument("--stall-after", type=int, help="stall each connection after K msgs")
        faults.add_argument("--stall-seconds", type=float, default=5.0)
        faults.add_argument(
            "--stall-ignore-pings", action="store_true", help="stop reading during a stall"
        )
        faults.add_argument("--error-after", type=int, help="unsolicited error after K msgs")
        faults.add_argument("--error-code", type=int, default=25)

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            source = build_source(
                markets=options["markets"],
                rate=options["rate"],
                seed=options["seed"],
                max_messages=options["max_messages"],
                resolve_after_s=options["resolve_after"],
                resolve_markets=options["resolve_markets"],
                replay_jsonl=options["replay_jsonl"],
                replay_db=DbReplaySource(
                    speed=options["speed"],
                    tickers=[t for t in (options["tickers"] or "").split(",") if t] or None,
                )
                if options["replay_db"]
                else None,
                speed=options["speed"],
                recorded_use_yes_price=options["recorded_use_yes_price"],
                planted=PlantedConfig(
                    edge=options["planted"],
                    seed=options["seed"],
                    lag_s=options["planted_lag"],
                    jump_cents=options["planted_jump"],
                    mean_gap_s=options["planted_gap"],
                )
                if options["planted"]
                else None,
            )
            faults = FaultConfig(
                drop_after_messages=options["drop_after"],
                seq_gap_after=options["gap_after"],
                seq_gap_every=options["gap_every"],
                malformed_every=options["malformed_every"],
                stall_after_messages=options["stall_after"],
                stall_s=options["stall_seconds"],
                stall_ignores_pings=options["stall_ignore_pings"],
                error_after_messages=options["error_after"],
                error_code=options["error_code"],
            )
            run_local_exchange(
                host=options["host"],
                port=options["port"],
                source=source,
                key_dir=options["key_dir"],
                public_key=options["public_key"],
                key_id=options["key_id"],
                faults=faults,
                max_clock_skew_s=options["max_skew"],
                ping_interval_s=options["ping_interval"] or None,
                duration_s=options["duration"],
                progress_interval_s=options["progress_interval"],
                report=self._report,
            )
        except (ConfigError, MarketError, ValueError) as exc:
            raise CommandError(str(exc)) from None

    def _report(self, line: str) -> None:
        self.stdout.write(line)
        self.stdout.flush()
