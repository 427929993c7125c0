"""The product end to end, offline, on embedded defaults (``./run demo``)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.dashboard import demo
from apps.marketdata.exchange import ExchangeThread
from apps.marketdata.ingest import IngestError
from apps.marketdata.kalshi.units import e2_to_count, e4_to_dollars
from apps.marketdata.selectors import rebuild_latest_book
from apps.trading.services import run_paper_trading
from apps.training.evaluation import describe_metrics
from kalshiflow_site.cli import positive_float, positive_int


class Command(BaseCommand):
    help = "Run the whole product offline against the bundled local exchange."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--world",
            choices=("planted", "synthetic"),
            default="planted",
            help="planted: two markets with a documented lead-lag edge (README); synthetic: "
            "random-walk markets with no edge to find (default: %(default)s)",
        )
        parser.add_argument(
            "--markets", type=positive_int, default=5, help="synthetic markets (default: 5)"
        )
        parser.add_argument(
            "--rate", type=positive_float, default=1000.0, help="exchange messages/s"
        )
        parser.add_argument("--record-seconds", type=positive_float, default=120.0)
        parser.add_argument(
            "--step-s", type=positive_float, default=0.1, help="env clock step, seconds"
        )
        parser.add_argument(
            "--timesteps", type=positive_int, default=30_000, help="PPO training steps"
        )
        parser.add_argument("--model-name", default="demo")
        parser.add_argument("--paper-seconds", type=float, default=60.0)
        parser.add_argument("--seed", type=int, default=7)

    def handle(self, *args: object, **opts: object) -> None:
        started = time.monotonic()
        say = self.stdout.write
        self.section("1. local exchange")
        planted = opts["world"] == "planted"
        exchange = demo.local_exchange(
            world=opts["world"],
            markets=opts["markets"],
            rate=opts["rate"],
            seed=opts["seed"],
            say=say,
        )
        with ExchangeThread(exchange) as url:
            if planted:
                say(
                    f"serving the planted lead-lag world at {url}: the follower repeats each "
                    "move of the leader 0.5 s later (README: Proof that the pipeline learns)"
                )
            else:
                say(f"serving {opts['markets']} synthetic markets at {url}")
            self.section(f"2. recording for {opts['record_seconds']:.0f}s")
            try:
                result = demo.record(url=url, seconds=opts["record_seconds"], say=say)
            except IngestError as exc:
                raise CommandError(str(exc)) from None
            self.report_recording(result)
            markets = sorted(result.books)
            # This run's own window: from its first to its last recorded frame.
            first_ns = time.time_ns() - int(result.elapsed_s * 1e9)
            start = datetime.fromtimestamp(first_ns / 1e9, UTC)
            end = datetime.now(UTC)
            self.section("3. history -> KalshiTradingEnv, one random-policy episode")
            episode = demo.random_episode(
                markets=markets, start=start, end=end, step_s=opts["step_s"], seed=opts["seed"]
            )
            say(
                f"  {episode.ticks} ticks of {opts['step_s']}s for {len(markets)} markets; "
                f"episode of {episode.steps} steps: return {episode.total_return:+.4%}, "
                f"fees ${episode.fees_dollars:.2f}, {episode.trades} fills"
            )
            gaps = sum(q["gaps"] for q in episode.quality.values())
            untrusted = sum(q["untrusted_ticks"] for q in episode.quality.values())
            say(f"  data quality: {gaps} gaps, {untrusted} untrusted market-ticks")
            self.section("4. training PPO as a Celery task, held-out evaluation, promotion")
            try:
                trained = demo.train_model(
                    name=opts["model_name"],
                    markets=markets,
                    start=start,
                    end=end + timedelta(seconds=1),
                    step_s=opts["step_s"],
                    timesteps=opts["timesteps"],
                    seed=opts["seed"],
                    planted=planted,
                )
            except RuntimeError as exc:
                raise CommandError(str(exc)) from None
            self.report_model(trained)
            model, refusal = demo.promote_or_explain(trained)
            if refusal:
                say(f"  promotion REFUSED by the gate: {refusal}")
                say(
                    "  the demo forces it with an override recorded in the admin "
                    "(by admin, reason given) only to show paper trading"
                )
            else:
                say(f"  {model} promoted: it beat no trading on held-out time")
                if planted:
                    say(
                        "  (the edge it found: the follower repeats the leader's moves 0.5 s "
                        "later; README: why the agent wins here)"
                    )
            self.section(f"5. paper trading {model} for {opts['paper_seconds']:.0f}s")
            paper = run_paper_trading(
                model_name=model.name,
                ws_url=url,
                duration_s=opts["paper_seconds"],
                progress=lambda line: say(f"  {line}"),
                install_signal_handlers=False,
            )
            say(
                f"  {paper.decisions} decisions, {paper.trades} fills, P&L "
                f"${paper.pnl_dollars:+,.2f} ({paper.total_return:+.4%}), fees "
                f"${paper.fees_dollars:,.2f}; every decision is in rl_trading_actions "
                f"(episode {paper.episode_id})"
            )
        self.section("6. operate it")
        username, password, generated = demo.ensure_demo_admin()
        shown = password if generated else "(from DEMO_ADMIN_PASSWORD)"
        base = "http://127.0.0.1:8000"
        say("  serve the site (daphne, static files included):  ./run serve")
        say(f"  admin (models, promote/rollback, episodes):  {base}/admin/")
        say(f"  live page (books, recorder, paper trader):   {base}/rl/live")
        say(f"  REST API docs / OpenAPI schema:               {base}/rl/docs  {base}/rl/schema")
        say(f"  log in as {username} / {shown}")
        self.stdout.write(
            self.style.SUCCESS(f"\ndemo finished in {time.monotonic() - started:.0f}s")
        )

    def report_recording(self, result) -> None:  # type: ignore[no-untyped-def]
        say = self.stdout.write
        self.section("rows per table")
        for table, count in demo.table_counts().items():
            say(f"  {table:28s} {count:>9,d}")
        by_market = demo.deltas_by_market()
        self.section("final top of book (YES bid / ask); the book rebuilt from the database")
        for ticker, book in sorted(result.books.items()):
            rebuilt = rebuild_latest_book(market_ticker=ticker, connection_id=result.connection_id)
            same = rebuilt.book.snapshot_levels() == book.snapshot_levels()
            say(
                f"  {ticker:24s} bid {self.level(book.best_yes_bid())}  "
                f"ask {self.level(book.best_yes_ask())}  deltas {by_market.get(ticker, 0):>7,d}  "
                f"{'equals the live book' if same else 'DIFFERS from the live book'}"
            )

    def report_model(self, model) -> None:  # type: ignore[no-untyped-def]
        say = self.stdout.write
        say(f"  {model}; artifact {model.artifact_path}")
        say(f"  sha256 {model.artifact_sha256}")
        say("  held-out, per hour of market time, [95% interval]:")
        rows = [("agent", model.metrics["evaluation"]), *model.metrics["baselines"].items()]
        for label, m in rows:
            say(f"  {label:14s} {describe_metrics(m)}")
        versus = model.metrics.get("versus_no_trading") or {}
        if versus.get("difference") is not None:
            low, high = versus["ci"]
            say(
                f"  agent - no trading: {versus['difference']:+,.2f} $/h "
                f"[{low:+,.2f}, {high:+,.2f}]"
            )

    def section(self, title: str) -> None:
        self.stdout.write(self.style.MIGRATE_HEADING(f"\n== {title}"))

    @staticmethod
    def level(level: tuple[int, int] | None) -> str:
        if level is None:
            return "   --   "
        return f"${e4_to_dollars(level[0])} x {e2_to_count(level[1]):>9s}"
