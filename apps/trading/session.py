"""The paper session runtime: one model trading one episode on the live books.

:class:`PaperSession` holds the trader's state and its three loops, and :func:`run_session`
runs them next to the Kalshi client until the session stops; :mod:`apps.trading.services`
prepares what it needs (the mode and endpoint checks, the model, the episode row).

**Where the books come from.** The trader runs its own :class:`KalshiClient` rather than
listening to the recorder's channel-layer group ``book.<ticker>``: that group carries a
throttled top of book (a few updates a second, best level only) for the live page, while the
model's observation needs the top ten levels of both ladders at the moment it decides, and its
fills walk that depth. The client also gives each book its sequence-checked trust (a gap or a
resync makes a market untrusted until its next snapshot), which the env shows the model and
which limits it to holding. One client per trader keeps the trader independent of the
recorder's process, host and failures; Kalshi allows several connections per key.

**The decision clock** matches the env's: by default the trader decides every ``step_s``
seconds of the model's training run (``--cadence-s`` overrides it), on a grid of Unix time, and
each decision samples every book as it stands (see :mod:`apps.trading.sampling`), exactly what
the history loader does at its ticks. ``--on-change`` decides instead as soon as a followed
book changes (bursts of frames coalesce into one decision). Decisions start once every book is
trusted (or after ``RL_PAPER_WARMUP_S``).

**No database on the loop.** The socket and the decisions share one event loop that never
waits on the database: decisions go to :class:`~apps.trading.writer.ActionWriter`'s queue,
and the registry checks (:mod:`apps.trading.registry`), model loads, heartbeats and the
episode's running summary run in worker threads.

**Hot reload.** Every ``RL_PAPER_RELOAD_CHECK_S`` a worker thread asks the registry for the
model's active version (:func:`~apps.trading.registry.poll_registry`); a new one is swapped in
between two decisions. A version that fails is reported in status and not retried until the
registry row changes; the old model keeps trading.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from django.conf import settings
from django.utils import timezone

from apps.marketdata.endpoints import Endpoint
from apps.marketdata.kalshi.client import ORDERBOOK, ClientConfig, KalshiClient
from apps.marketdata.kalshi.messages import OrderbookDelta, OrderbookSnapshot, Trade
from apps.marketdata.kalshi.units import utc_from_ns
from apps.simulation.env import EnvConfig
from apps.trading.actor import DecisionOutcome, PaperActor
from apps.trading.conf import paper_setting
from apps.trading.options import DecisionTrace, PaperError, PaperOptions, PaperResult, dollars
from apps.trading.registry import LoadedModel, ReloadFailure, poll_registry
from apps.trading.risk import KillSwitch, RiskSettings
from apps.trading.sampling import BookSampler
from apps.trading.writer import ActionWriter
from apps.training.services import update_episode
from apps.workers.runtime import (
    Periodic,
    StopEvent,
    feed_silence,
    logged_failures,
    run_until_stopped,
    stop_signals,
    ticks,
)
from apps.workers.services import report_worker_status, worker_name

log = logging.getLogger(__name__)


def _logged(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` for a worker thread: its database connections closed after it, a failure logged
    instead of raised (registry checks, heartbeats and episode summaries)."""
    return logged_failures(fn, log=log, worker="paper trader")


class _FeedSink:
    """The client's callbacks: only book changes matter here (nothing is recorded)."""

    def __init__(self, session: PaperSession) -> None:
        self.session = session

    def on_connect(self, connection_id: Any, url: str, markets: list[str]) -> None:
        pass

    def on_snapshot(
        self, connection_id: Any, msg: OrderbookSnapshot, received_ns: int, source: str
    ) -> None:
        self.session.book_changed(received_ns)

    def on_delta(self, connection_id: Any, msg: OrderbookDelta, received_ns: int) -> None:
        self.session.book_changed(received_ns)

    def on_trade(self, connection_id: Any, msg: Trade, received_ns: int) -> None:
        pass

    def on_event(self, connection_id: Any, kind: str, **fields: Any) -> None:
        pass

    def on_disconnect(self, connection_id: Any, reason: str) -> None:
        pass


class PaperSession:
    """One running paper trader (one model, one episode); :func:`run_session` drives it."""

    def __init__(
        self,
        *,
        options: PaperOptions,
        model: LoadedModel,
        episode_id: int,
        writer: ActionWriter,
        risk: RiskSettings,
        say: Callable[[str], None],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.options = options
        self.model = model
        self.episode_id = episode_id
        self.writer = writer
        self.say = say
        self.markets = list(model.markets)
        self.kill_switch = KillSwitch(risk)
        self.actor = PaperActor(
            markets=self.markets,
            policy=model.policy,
            # The trainer builds its env with EnvConfig(episode_steps=...), the account
            # precision setting and defaults for cash, sizes, fees and limits: the same here.
            config=EnvConfig(
                episode_steps=model.episode_steps,
                account_precision_e4=settings.RL_ACCOUNT_PRECISION_E4,
            ),
            episode_steps=model.episode_steps,
            kill_switch=self.kill_switch,
        )
        self.sampler = BookSampler(len(self.markets))
        self.cadence_s = options.cadence_s or model.step_s
        self.client: KalshiClient | None = None
        self.deciding = False
        self.stopping = asyncio.Event()
        self.error: BaseException | None = None
        self.pending_model: LoadedModel | None = None
        self.model_versions = [model.version]
        self.reloads = 0
        self.reload_failures: list[ReloadFailure] = []
        self.registry_note = ""  # a problem with the registry (shown in status problems)
        self.clock_note = ""  # a swapped-in version trained on another clock (counters only)
        self.missed_ticks = 0
        self.last_decision_ns: int | None = None
        self.trace: list[DecisionTrace] = []
        # Per decision, ns: book change -> rows enqueued and decision start -> enqueued, both
        # without the forward pass; and the forward pass itself.
        self.change_to_enqueue_ns: deque[int] = deque(maxlen=200_000)
        self.decide_ns: deque[int] = deque(maxlen=200_000)
        self.forward_ns: deque[int] = deque(maxlen=200_000)
        self._change_pending = False
        self._first_change_ns = 0
        self._loop = loop
        self.started_at = timezone.now()
        self.status_name = worker_name(kind="paper", label=model.name)

    # -- deciding ---------------------------------------------------------------------------

    def book_changed(self, received_ns: int) -> None:
        """A frame for a followed book arrived (called before the client applies it)."""
        if not (self.options.on_change and self.deciding) or self._change_pending:
            return
        self._change_pending = True
        self._first_change_ns = received_ns
        # Runs once the client has applied this frame (and any others already read).
        self._loop.call_soon(self._decide_on_change)

    def _decide_on_change(self) -> None:
        self._change_pending = False
        if not self.deciding:
            return
        try:
            self.decide_now(trigger_ns=self._first_change_ns)
        except Exception as exc:
            self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        log.exception("paper trader: a decision failed; stopping", exc_info=exc)
        self.error = exc
        self.deciding = False
        self.stopping.set()

    def decide_now(self, *, trigger_ns: int) -> DecisionOutcome:
        """Sample the books, decide, log: the hot path (no await, no database).

        Args:
            trigger_ns: Unix ns of what prompted the decision (the tick, or the first book
                change since the last decision).
        """
        started_ns = time.time_ns()
        if self.pending_model is not None:
            self._swap_in(self.pending_model)
        client = self.client
        assert client is not None
        books = [client.books[m] for m in self.markets]
        trusted = [client.is_trusted(m) for m in self.markets]
        sample = self.sampler.sample(books, trusted, time_ns=started_ns)
        outcome = self.actor.decide(sample)
        self.writer.enqueue(outcome.rows)
        enqueued_ns = time.time_ns()
        self.last_decision_ns = started_ns
        self.forward_ns.append(outcome.forward_ns)
        self.decide_ns.append(enqueued_ns - started_ns - outcome.forward_ns)
        if self.options.on_change:
            self.change_to_enqueue_ns.append(enqueued_ns - trigger_ns - outcome.forward_ns)
        if self.options.keep_trace:
            self.trace.append(
                DecisionTrace(
                    outcome=outcome,
                    model_version=self.actor.policy.version,
                    trigger_ns=trigger_ns,
                    enqueued_ns=enqueued_ns,
                )
            )
        return outcome

    def _swap_in(self, model: LoadedModel) -> None:
        self.pending_model = None
        previous = self.model.version
        self.model = model
        self.actor.swap_policy(model.policy)
        self.model_versions.append(model.version)
        self.reloads += 1
        log.info(
            "paper trader %s: now trading v%s (was v%s), sha256 %s verified",
            model.name,
            model.version,
            previous,
            model.policy.sha256[:12],
        )
        if not self.options.on_change and abs(model.step_s - self.cadence_s) > 1e-9:
            self.clock_note = (
                f"v{model.version} was trained at step_s={model.step_s}; this trader decides "
                f"every {self.cadence_s}s (restart to follow its clock)"
            )
            log.warning("paper trader %s: %s", model.name, self.clock_note)

    async def _cadence_loop(self) -> None:
        step_ns = round(self.cadence_s * 1e9)
        if step_ns <= 0:
            raise PaperError(f"--cadence-s must be positive, got {self.cadence_s}")
        next_ns = -(-time.time_ns() // step_ns) * step_ns  # the next grid point
        while self.deciding:
            delay = (next_ns - time.time_ns()) / 1e9
            if delay > 0:
                await asyncio.sleep(delay)
            if not self.deciding:
                return
            self.decide_now(trigger_ns=next_ns)
            next_ns += step_ns
            behind = time.time_ns() - next_ns
            if behind >= step_ns:
                # More than a whole tick late: skip the ticks already past rather than burst.
                skipped = behind // step_ns
                self.missed_ticks += skipped
                next_ns += skipped * step_ns

    async def _warm_up(self) -> None:
        """Wait until every book is trusted (at most the warm-up time)."""
        warmup_s = (
            self.options.warmup_s
            if self.options.warmup_s is not None
            else paper_setting("RL_PAPER_WARMUP_S")
        )
        deadline = time.monotonic() + warmup_s
        client = self.client
        assert client is not None
        while time.monotonic() < deadline and not self.stopping.is_set():
            if all(client.is_trusted(m) for m in self.markets):
                return
            await asyncio.sleep(0.01)
        untrusted = [m for m in self.markets if not client.is_trusted(m)]
        if untrusted:
            self.say(f"deciding without a trusted book for {', '.join(untrusted)} (they hold)")

    async def decisions(self) -> None:
        """Warm up, then decide until stopped (on the cadence, or let book changes drive)."""
        await self._warm_up()
        if self.stopping.is_set():
            return
        self.deciding = True
        when = "on every book change" if self.options.on_change else f"every {self.cadence_s}s"
        self.say(
            f"deciding {when} for {len(self.markets)} markets with "
            f"{self.model.name} v{self.model.version}"
        )
        if self.options.on_change:
            await self.stopping.wait()
            return
        try:
            await self._cadence_loop()
        except Exception as exc:
            self._fail(exc)

    # -- housekeeping (worker threads for everything that touches the database) -------------

    async def housekeeping(self) -> None:
        options = self.options
        reload_s = options.reload_check_s or paper_setting("RL_PAPER_RELOAD_CHECK_S")
        status_s = options.status_interval_s or paper_setting("RL_PAPER_STATUS_INTERVAL_S")
        reload = Periodic(reload_s)
        status = Periodic(status_s, first_in_s=0)
        progress = Periodic(options.progress_interval_s)
        async for now in ticks(0.05):
            if self.pending_model is None and reload.due(now):
                await self._check_registry()
            if status.due(now):
                await self.report(stopped=False)
            if progress.due(now):
                self.say(self.progress_line())

    async def _check_registry(self) -> None:
        failed = frozenset((f.pk, f.sha256) for f in self.reload_failures)
        result = await asyncio.to_thread(
            _logged(poll_registry), name=self.model.name, current=self.model, failed=failed
        )
        if isinstance(result, LoadedModel):
            self.pending_model = result  # swapped in before the next decision
            self.registry_note = ""
        elif isinstance(result, ReloadFailure):
            self.reload_failures = [*self.reload_failures[-9:], result]
            log.error(
                "paper trader %s: v%s could not be loaded, still trading v%s: %s",
                self.model.name,
                result.version,
                self.model.version,
                result.error,
            )
        elif result == "none":
            self.registry_note = (
                f"{self.model.name} has no active version; still trading v{self.model.version}"
            )
        elif result == "same":
            self.registry_note = ""

    def progress_line(self) -> str:
        kill = self.kill_switch
        return (
            f"{self.actor.steps} decisions | P&L {dollars(self.actor.pnl_dollars)} | "
            f"{self.model.name} v{self.model.version} | trades {self.actor.stats.trades} | "
            f"kill switch {'ENGAGED: ' + kill.reason if kill.engaged else 'off'} | "
            f"logged {self.writer.stats().written}"
        )

    def problems(self) -> list[str]:
        problems = []
        if self.kill_switch.engaged:
            problems.append(f"kill switch engaged: {self.kill_switch.reason}")
        current = self.model.policy.pk
        for failure in self.reload_failures[-1:]:
            if failure.pk != current:
                problems.append(
                    f"v{failure.version} could not be loaded ({failure.error}); "
                    f"still trading v{self.model.version}"
                )
        if self.registry_note:
            problems.append(self.registry_note)
        client = self.client
        if client is not None and self.deciding:
            silence = feed_silence(client.stats.last_message_at, since=time.time())
            if silence:
                problems.append(silence)
        if self.error is not None:
            problems.append(f"stopped on an error: {self.error}")
        return problems

    def counters(self) -> dict[str, Any]:
        actor = self.actor
        client = self.client
        last = self.last_decision_ns
        writer = self.writer.stats()
        return {
            "model": {
                "name": self.model.name,
                "version": self.model.version,
                "algorithm": self.model.policy.algorithm,
                "sha256": self.model.policy.sha256[:12],
            },
            "episode_id": self.episode_id,
            "decisions": actor.steps,
            "last_decision_at": utc_from_ns(last).isoformat() if last else None,
            "cadence_s": None if self.options.on_change else self.cadence_s,
            "on_change": self.options.on_change,
            "pnl_dollars": round(actor.pnl_dollars, 6),
            "equity_dollars": round(float(actor.equity_e6) / 1e6, 6),
            "fees_dollars": actor.portfolio.fees_paid_e4 / 1e4,
            "trades": actor.stats.trades,
            "positions": actor.positions_contracts(),
            "kill_switch": self.kill_switch.as_dict(),
            "reloads": self.reloads,
            "model_versions": list(self.model_versions),
            "reload_errors": [f.as_dict() for f in self.reload_failures],
            "missed_ticks": self.missed_ticks,
            "notes": [note for note in (self.clock_note,) if note],
            "trusted_markets": (
                sum(client.is_trusted(m) for m in self.markets) if client is not None else 0
            ),
            "client": (
                {
                    k: v
                    for k, v in client.stats.as_dict().items()
                    if k
                    in ("connections", "reconnects", "messages", "gaps", "resyncs", "malformed")
                }
                if client is not None
                else {}
            ),
            "writer": writer.as_dict(),
        }

    async def report(self, *, stopped: bool) -> None:
        """Heartbeat to /rl/status and the episode's running summary (worker thread)."""
        counters, problems = self.counters(), self.problems()
        summary = self.actor.summary()

        def write() -> None:
            report_worker_status(
                name=self.status_name,
                kind="paper",
                started_at=self.started_at,
                counters=counters,
                problems=[] if stopped and self.error is None else problems,
                stopped=stopped,
            )
            if not stopped:
                update_episode(episode_id=self.episode_id, summary=summary, ended=False)

        await asyncio.to_thread(_logged(write))


async def run_session(
    options: PaperOptions,
    *,
    model: LoadedModel,
    episode_id: int,
    endpoint: Endpoint,
    risk: RiskSettings,
    say: Callable[[str], None],
    stop_event: StopEvent | None = None,
    install_signal_handlers: bool = True,
) -> PaperResult:
    """Trade ``model`` in episode ``episode_id`` until ``duration_s`` passes, ``stop_event``
    is set, or SIGTERM/SIGINT; every decision is in the database when this returns."""
    flush_s = options.flush_interval_s or paper_setting("RL_PAPER_FLUSH_INTERVAL_S")
    writer = ActionWriter(
        episode_id=episode_id,
        spill_dir=Path(getattr(settings, "RL_WRITER_SPILL_DIR", Path(settings.VAR_DIR) / "spill")),
        flush_interval_s=flush_s,
    ).start()
    loop = asyncio.get_running_loop()
    session = PaperSession(
        options=options,
        model=model,
        episode_id=episode_id,
        writer=writer,
        risk=risk,
        say=say,
        loop=loop,
    )
    client = KalshiClient(
        ClientConfig(ws_url=endpoint.ws_url, markets=list(model.markets), channels=(ORDERBOOK,)),
        signer=endpoint.signer,
        sink=_FeedSink(session),
    )
    session.client = client
    try:
        with stop_signals(session.stopping, enabled=install_signal_handlers):
            say(
                f"paper trading {model.name} v{model.version} ({model.policy.algorithm}) on "
                f"{len(model.markets)} markets from {client.display_url}; episode {episode_id}"
            )
            started = time.monotonic()
            client_task = asyncio.create_task(client.run(), name="paper-client")
            decisions = asyncio.create_task(session.decisions(), name="paper-decisions")
            housekeeping = asyncio.create_task(session.housekeeping(), name="paper-house")
            try:
                await run_until_stopped(
                    [client_task],
                    stop=session.stopping,
                    duration_s=options.duration_s,
                    outside=stop_event,
                )
            finally:
                session.deciding = False
                session.stopping.set()
                decisions.cancel()  # it only awaits between decisions, never inside one
                await asyncio.gather(decisions, return_exceptions=True)
                client.stop()
                await asyncio.gather(client_task, return_exceptions=True)
                housekeeping.cancel()
                await asyncio.gather(housekeeping, return_exceptions=True)
    finally:
        say("stopping: writing every logged decision to the database")
        await asyncio.to_thread(writer.close)
        await asyncio.to_thread(
            _logged(update_episode),
            episode_id=episode_id,
            summary=session.actor.summary(),
            ended=True,
        )
        await session.report(stopped=True)
    if session.error is not None:
        raise PaperError(f"a decision failed: {session.error}") from session.error
    if client_task.done() and not client_task.cancelled() and client_task.exception():
        raise PaperError(str(client_task.exception()))
    actor = session.actor
    return PaperResult(
        model_name=model.name,
        episode_id=episode_id,
        decisions=actor.steps,
        pnl_dollars=actor.pnl_dollars,
        total_return=float(actor.equity_e6 / actor.initial_cash_e6) - 1.0,
        fees_dollars=actor.portfolio.fees_paid_e4 / 1e4,
        trades=actor.stats.trades,
        positions=actor.positions_contracts(),
        model_versions=list(session.model_versions),
        reload_errors=[f.as_dict() for f in session.reload_failures],
        kill_switch=session.kill_switch.as_dict(),
        writer=writer.stats().as_dict(),
        client=client.stats.as_dict(),
        elapsed_s=time.monotonic() - started,
        missed_ticks=session.missed_ticks,
        latency={
            "change_to_enqueue_ns": list(session.change_to_enqueue_ns),
            "decide_ns": list(session.decide_ns),
            "forward_ns": list(session.forward_ns),
        },
        trace=session.trace,
    )
