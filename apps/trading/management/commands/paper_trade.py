"""Paper trade the promoted version of a model on the live book (never a real order)."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.trading.options import PaperError, dollars
from apps.trading.services import run_paper_trading
from kalshiflow_site.modes import LiveTradingRefused


class Command(BaseCommand):
    help = (
        "Follow the live books of a model's markets, let its active (promoted) version decide "
        "on a cadence or on every book change, simulate the fills, and log every decision in "
        "rl_trading_actions. A newly promoted version is loaded without a restart. Stops after "
        "--duration seconds, or on Ctrl-C / SIGTERM after writing every decision. Live "
        "trading does not exist: --mode accepts only paper."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--model", required=True, help="the registry name of the model")
        parser.add_argument("--exchange", choices=["local", "demo", "prod"], default="local")
        parser.add_argument("--ws-url", default="", help="any Kalshi-compatible WebSocket URL")
        parser.add_argument(
            "--duration", type=float, default=0.0, help="seconds; 0 = until stopped"
        )
        when = parser.add_mutually_exclusive_group()
        when.add_argument(
            "--cadence-s",
            type=float,
            default=None,
            help="seconds between decisions (default: the model's training step_s)",
        )
        when.add_argument(
            "--on-change", action="store_true", help="decide whenever a followed book changes"
        )
        parser.add_argument(
            "--mode", default="paper", help="only 'paper' exists; 'live' is refused"
        )
        parser.add_argument(
            "--progress-interval", type=float, default=10.0, help="seconds between progress lines"
        )

    def handle(self, *args: object, **opts: object) -> None:
        try:
            result = run_paper_trading(
                model_name=opts["model"],
                exchange=opts["exchange"],
                ws_url=opts["ws_url"],
                duration_s=opts["duration"],
                cadence_s=opts["cadence_s"],
                on_change=opts["on_change"],
                mode=opts["mode"],
                progress_interval_s=opts["progress_interval"],
                progress=lambda line: self.stdout.write(line),
            )
        except (PaperError, LiveTradingRefused) as exc:
            raise CommandError(str(exc)) from None
        kill = result.kill_switch
        self.stdout.write(
            self.style.SUCCESS(
                f"done in {result.elapsed_s:.1f}s: {result.decisions} decisions, "
                f"{result.writer['written']} actions logged, P&L {dollars(result.pnl_dollars)} "
                f"(fees ${result.fees_dollars:,.2f}, {result.trades} fills), model versions "
                f"{result.model_versions}, episode {result.episode_id}, kill switch "
                f"{'ENGAGED: ' + kill['reason'] if kill['engaged'] else 'off'}"
            )
        )
