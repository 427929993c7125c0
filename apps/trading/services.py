"""Paper trading: the promoted model on the live book, every decision logged, hot reload.

``run_paper_trading()`` is what ``manage.py paper_trade``, the Celery task and the demo run.

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
and the registry checks, model loads, heartbeats and the episode row run in worker threads.

**Hot reload.** Every ``RL_PAPER_RELOAD_CHECK_S`` a worker thread asks the registry for the
model's active version. A different version (a promotion or a rollback) is loaded there with
:func:`~apps.training.services.load_policy` (inside ``MODEL_DIR``, sha256 checked, rebuilt
from the run spec with only tensors read from the file) and checked against the
markets and spaces being traded; the loop swaps it in between two decisions. A version that
fails is reported in status and not retried until the registry row changes; the old model
keeps trading.

**Live trading does not exist.** The client only subscribes to market data; nothing in this
module (or anywhere in the product) can send an order. The mode is checked with
:func:`kalshiflow_site.modes.validate_mode` and anything but ``paper`` is refused.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import connections
from django.utils import timezone

from apps.marketdata.endpoints import EndpointError, load_signer, resolve_ws_url
from apps.marketdata.kalshi.client import ORDERBOOK, ClientConfig, KalshiClient
from apps.marketdata.kalshi.messages import OrderbookDelta, OrderbookSnapshot, Trade
from apps.simulation.actions import ACTIONS_PER_MARKET
from apps.simulation.env import EnvConfig
from apps.simulation.features import N_FEATURES, OBSERVATION_SPEC_VERSION
from apps.trading.actor import DecisionOutcome, PaperActor, PolicyVersion, utc_from_ns
from apps.trading.conf import paper_setting
from apps.trading.risk import KillSwitch, RiskSettings
from apps.trading.sampling import BookSampler
from apps.trading.writer import ActionWriter
from apps.workers.runtime import install_stop_handlers, remove_stop_handlers
from apps.workers.services import report_worker_status, worker_name
from kalshiflow_site.modes import LiveTradingRefused, validate_mode

log = logging.getLogger(__name__)

EXCHANGES = ("local", "demo", "prod")


class PaperError(Exception):
    """A problem the operator must fix before paper trading can run (the message says how)."""


# -- the model -----------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadedModel:
    """A verified, loaded registry version and the facts the trader needs about it.

    Attributes:
        name: the registry name.
        policy: the loaded policy with its version, algorithm, row id and sha256.
        markets: the model's markets in slot order.
        step_s: the env step it was trained at, in seconds (the default decision cadence).
        episode_steps: its training episode length (the scale of the progress feature).
    """

    name: str
    policy: PolicyVersion
    markets: tuple[str, ...]
    step_s: float
    episode_steps: int

    @property
    def version(self) -> int:
        return self.policy.version


def load_model(row: Any, *, expect_markets: tuple[str, ...] | None = None) -> LoadedModel:
    """Load one ``RLModel`` row for trading: sha256-verified artifact, compatible spaces.

    Args:
        row: the :class:`~apps.training.models.RLModel` to load.
        expect_markets: the markets being traded (a reload must keep them), or None.

    Raises:
        PaperError: the version cannot be traded here (the message says why).
        ArtifactError: the artifact is missing or changed since it was registered.
    """
    from apps.training.services import load_policy, spec_of

    markets = tuple(row.markets)
    if not 1 <= len(markets) <= 10:
        raise PaperError(f"{row} trades {len(markets)} markets; paper trading needs 1 to 10")
    if expect_markets is not None and markets != expect_markets:
        raise PaperError(
            f"{row} trades {list(markets)}, this trader follows {list(expect_markets)}: "
            "restart paper_trade to follow the new markets"
        )
    if row.observation_spec_version != OBSERVATION_SPEC_VERSION:
        raise PaperError(
            f"{row} was trained on observation spec v{row.observation_spec_version}; this code "
            f"builds v{OBSERVATION_SPEC_VERSION}"
        )
    if not row.artifact_sha256:
        raise PaperError(f"{row} has no trained artifact")
    try:
        spec = spec_of(row)
    except (KeyError, TypeError, ValueError) as exc:
        raise PaperError(f"{row} has no readable run spec: {exc}") from None
    policy = load_policy(row)  # inside MODEL_DIR, sha256 checked, nothing unpickled
    shape = getattr(policy.observation_space, "shape", None)
    nvec = getattr(policy.action_space, "nvec", None)
    if shape != (N_FEATURES,) or nvec is None or list(nvec) != [ACTIONS_PER_MARKET] * len(markets):
        raise PaperError(
            f"{row}'s spaces (observation {shape}, actions {nvec}) do not match "
            f"{N_FEATURES} features and {len(markets)} markets x {ACTIONS_PER_MARKET} actions"
        )
    return LoadedModel(
        name=row.name,
        policy=PolicyVersion(
            policy=policy,
            version=row.version,
            algorithm=row.algorithm,
            pk=row.pk,
            sha256=row.artifact_sha256,
        ),
        markets=markets,
        step_s=float(spec.step_s),
        episode_steps=int(spec.episode_steps),
    )


def load_active_model(*, name: str) -> LoadedModel:
    """The active (promoted) version of ``name``, loaded and verified."""
    from apps.training.artifacts import ArtifactError
    from apps.training.selectors import active_model_for

    row = active_model_for(name)
    if row is None:
        raise PaperError(
            f"model {name!r} has no active version: promote one first (admin, or "
            "apps.training.services.promote_model)"
        )
    try:
        return load_model(row)
    except ArtifactError as exc:
        raise PaperError(str(exc)) from None


@dataclass(frozen=True)
class ReloadFailure:
    """A version that could not be swapped in (kept out until its registry row changes)."""

    pk: int
    version: int
    sha256: str
    error: str
    at: str

    def as_dict(self) -> dict[str, Any]:
        return {"version": self.version, "error": self.error, "at": self.at}


def poll_registry(
    *, name: str, current: LoadedModel, failed: frozenset[tuple[int, str]]
) -> LoadedModel | ReloadFailure | str:
    """One hot-reload check (a worker thread calls it).

    Returns a loaded new version, a :class:`ReloadFailure`, or a word for "nothing to do":
    ``same`` (the active version is the one trading), ``none`` (nothing is active) or
    ``known-bad`` (it failed before and its row has not changed).
    """
    from apps.training.selectors import active_model_for

    row = active_model_for(name)
    if row is None:
        return "none"
    key = (row.pk, row.artifact_sha256)
    if key == (current.policy.pk, current.policy.sha256):
        return "same"
    if key in failed:
        return "known-bad"
    try:
        return load_model(row, expect_markets=current.markets)
    except Exception as exc:  # any failure keeps the old model trading; it is reported
        return ReloadFailure(
            pk=row.pk,
            version=row.version,
            sha256=row.artifact_sha256,
            error=f"{type(exc).__name__}: {exc}"[:500],
            at=timezone.now().isoformat(),
        )


# -- options and results ---------------------------------------------------------------------


@dataclass
class PaperOptions:
    """What to paper trade and how. Times in seconds; None = the setting or model default.

    Attributes:
        model_name: the registry name; its active version trades.
        exchange: ``local`` (the bundled exchange), ``demo`` or ``prod`` (market data only).
        ws_url: any Kalshi-compatible WebSocket URL (overrides the exchange's).
        duration_s: stop after this long; 0 = until stopped.
        cadence_s: seconds between decisions (default: the model's training ``step_s``).
        on_change: decide on every book change instead of on a cadence.
        mode: must be ``paper``; ``live`` and the rest are refused.
        risk: kill-switch limits (default: the ``RL_PAPER_MAX_*`` settings).
        keep_trace: keep every decision's sample, observation, masks and actions in the result
            (for the parity test; memory grows with the run).
    """

    model_name: str
    exchange: str = "local"
    ws_url: str = ""
    duration_s: float = 0.0
    cadence_s: float | None = None
    on_change: bool = False
    mode: str = "paper"
    risk: RiskSettings | None = None
    reload_check_s: float | None = None
    status_interval_s: float | None = None
    flush_interval_s: float | None = None
    warmup_s: float | None = None
    progress_interval_s: float = 10.0
    keep_trace: bool = False


@dataclass
class DecisionTrace:
    """One decision as kept with ``keep_trace`` (times in Unix ns)."""

    outcome: DecisionOutcome
    model_version: int
    trigger_ns: int
    enqueued_ns: int


@dataclass
class PaperResult:
    """What a paper session did (money in dollars)."""

    model_name: str
    episode_id: int
    decisions: int
    pnl_dollars: float
    total_return: float
    fees_dollars: float
    trades: int
    positions: dict[str, float]
    model_versions: list[int]
    reload_errors: list[dict[str, Any]]
    kill_switch: dict[str, Any]
    writer: dict[str, Any]
    client: dict[str, Any]
    elapsed_s: float
    missed_ticks: int
    latency: dict[str, list[int]] = field(default_factory=dict)
    trace: list[DecisionTrace] = field(default_factory=list)


def check_mode(mode: str) -> None:
    """Refuse every mode but ``paper`` (``live`` with the product-wide message)."""
    value = validate_mode(mode, source="--mode")
    if value != "paper":
        raise LiveTradingRefused(
            f"--mode={value!r}: paper_trade only runs in paper mode (training and evaluation "
            "run through the train command)"
        )


# -- the session ------------------------------------------------------------------------------


def _closing(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run ``fn`` in a worker thread and close that thread's database connections after it
    (executor threads are reused by anything)."""

    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        finally:
            connections.close_all()

    return call


def _logged(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Like :func:`_closing`, and a failure is logged instead of raised (heartbeats)."""

    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # a heartbeat must never take the trader down
            log.warning("paper trader: %s failed: %s", fn.__name__, exc)
            return None
        finally:
            connections.close_all()

    return call


def _create_episode(*, model_pk: int, markets: list[str]) -> int:
    from apps.training.models import EpisodeMode, TradingEpisode

    episode = TradingEpisode.objects.create(
        model_id=model_pk, mode=EpisodeMode.PAPER, markets=markets, started_at=timezone.now()
    )
    return episode.pk


def _update_episode(*, episode_id: int, summary: dict[str, Any], ended: bool) -> None:
    from apps.training.models import TradingEpisode

    fields = dict(summary)
    if ended:
        fields["ended_at"] = timezone.now()
    TradingEpisode.objects.filter(pk=episode_id).update(**fields)


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
    """One running paper trader (one model, one episode); :func:`run_paper_async` drives it."""

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
            # The trainer builds its env with EnvConfig(episode_steps=...) and defaults for
            # cash, sizes, fees and limits: the same config here.
            config=EnvConfig(episode_steps=model.episode_steps),
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

    async def housekeeping(self, external_stop: Any) -> None:
        options = self.options
        reload_s = options.reload_check_s or paper_setting("RL_PAPER_RELOAD_CHECK_S")
        status_s = options.status_interval_s or paper_setting("RL_PAPER_STATUS_INTERVAL_S")
        now = time.monotonic()
        next_reload, next_status = now + reload_s, now
        next_progress = now + options.progress_interval_s
        while True:
            await asyncio.sleep(0.05)
            if external_stop is not None and external_stop.is_set():
                self.stopping.set()
            now = time.monotonic()
            if now >= next_reload and self.pending_model is None:
                next_reload = now + reload_s
                await self._check_registry()
            if now >= next_status:
                next_status = now + status_s
                await self.report(stopped=False)
            if now >= next_progress:
                next_progress = now + options.progress_interval_s
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
            silent_s = time.time() - (client.stats.last_message_at or time.time())
            if silent_s > float(getattr(settings, "RL_FEED_SILENT_S", 30)):
                problems.append(f"no frame from the exchange for {silent_s:.0f}s")
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
                _update_episode(episode_id=self.episode_id, summary=summary, ended=False)

        await asyncio.to_thread(_logged(write))


# -- entry points -------------------------------------------------------------------------------


async def run_paper_async(
    options: PaperOptions,
    *,
    progress: Callable[[str], None] | None = None,
    stop_event: asyncio.Event | threading.Event | None = None,
    install_signal_handlers: bool = True,
) -> PaperResult:
    """Paper trade until ``duration_s`` passes, ``stop_event`` is set, or SIGTERM/SIGINT;
    every decision is in the database when this returns."""
    check_mode(options.mode)
    if options.exchange not in EXCHANGES:
        raise PaperError(f"--exchange must be local, demo or prod, not {options.exchange!r}")
    if options.cadence_s is not None and options.cadence_s <= 0:
        raise PaperError(f"--cadence-s must be positive, got {options.cadence_s}")
    try:
        ws_url = resolve_ws_url(exchange=options.exchange, ws_url=options.ws_url)
        signer = load_signer(exchange=options.exchange, ws_url=options.ws_url)
    except EndpointError as exc:
        raise PaperError(str(exc)) from None
    say = progress or (lambda line: log.info("%s", line))
    risk = options.risk or RiskSettings.from_settings()
    model = await asyncio.to_thread(_closing(load_active_model), name=options.model_name)
    import torch

    torch.set_num_threads(1)  # the trainer's setting: the same numbers, no thread contention
    # As the recorder does: full collections over the start-up heap stall the loop for tens
    # of ms; freezing it keeps decisions prompt (see apps/marketdata/writer.py).
    gc.freeze()
    episode_id = await asyncio.to_thread(
        _closing(_create_episode), model_pk=model.policy.pk, markets=list(model.markets)
    )
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
        ClientConfig(ws_url=ws_url, markets=list(model.markets), channels=(ORDERBOOK,)),
        signer=signer,
        sink=_FeedSink(session),
    )
    session.client = client
    installed = install_stop_handlers(loop, session.stopping.set) if install_signal_handlers else []
    say(
        f"paper trading {model.name} v{model.version} ({model.policy.algorithm}) on "
        f"{len(model.markets)} markets from {client.display_url}; episode {episode_id}"
    )
    started = time.monotonic()
    client_task = asyncio.create_task(client.run(), name="paper-client")
    decisions = asyncio.create_task(session.decisions(), name="paper-decisions")
    housekeeping = asyncio.create_task(session.housekeeping(stop_event), name="paper-house")
    stopper = asyncio.create_task(session.stopping.wait())
    try:
        await asyncio.wait(
            [client_task, stopper],
            timeout=options.duration_s or None,
            return_when=asyncio.FIRST_COMPLETED,
        )
    finally:
        session.deciding = False
        session.stopping.set()
        decisions.cancel()  # it only awaits between decisions, never inside one
        await asyncio.gather(decisions, stopper, return_exceptions=True)
        client.stop()
        await asyncio.gather(client_task, return_exceptions=True)
        housekeeping.cancel()
        await asyncio.gather(housekeeping, return_exceptions=True)
        remove_stop_handlers(loop, installed)
        say("stopping: writing every logged decision to the database")
        await asyncio.to_thread(writer.close)
        await asyncio.to_thread(
            _logged(_update_episode),
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


def run_paper_trading(
    *,
    model_name: str,
    ws_url: str = "",
    duration_s: float = 60.0,
    exchange: str = "local",
    progress: Callable[[str], None] | None = None,
    stop_event: threading.Event | None = None,
    install_signal_handlers: bool = True,
    **options: Any,
) -> PaperResult:
    """Paper trade the active version of ``model_name`` (synchronous; the demo calls this).

    Args:
        model_name: the registry name; its promoted version trades and is hot-reloaded.
        ws_url: the exchange's WebSocket URL ("" = the ``exchange``'s own).
        duration_s: seconds to run; 0 = until SIGTERM/SIGINT or ``stop_event``.
        exchange: ``local``, ``demo`` or ``prod`` (which keys and default URL to use).
        progress: called with one human-readable line at a time.
        stop_event: set it (from any thread) to stop.
        install_signal_handlers: stop on SIGTERM/SIGINT (main thread only).
        **options: any other :class:`PaperOptions` field (``cadence_s``, ``on_change``,
            ``mode``, ``risk``, ...).

    Returns:
        A :class:`PaperResult` (P&L in dollars, decision count, episode id, ...).
    """
    opts = PaperOptions(
        model_name=model_name, exchange=exchange, ws_url=ws_url, duration_s=duration_s, **options
    )
    try:
        return asyncio.run(
            run_paper_async(
                opts,
                progress=progress,
                stop_event=stop_event,
                install_signal_handlers=install_signal_handlers,
            )
        )
    except ImproperlyConfigured as exc:
        raise PaperError(str(exc)) from None


def dollars(amount: float) -> str:
    """``+$1,234.50`` / ``-$0.43``: a signed amount of money for people."""
    return f"{'-' if amount < 0 else '+'}${abs(amount):,.2f}"


def latency_summary(values_ns: list[int]) -> dict[str, float | None]:
    """p50 / p99 / max of ns samples, in ms (None when empty)."""
    if not values_ns:
        return {"p50_ms": None, "p99_ms": None, "max_ms": None}
    arr = np.asarray(values_ns, dtype=np.float64) / 1e6
    return {
        "p50_ms": float(np.percentile(arr, 50)),
        "p99_ms": float(np.percentile(arr, 99)),
        "max_ms": float(arr.max()),
    }


__all__ = [
    "LoadedModel",
    "PaperError",
    "PaperOptions",
    "PaperResult",
    "PaperSession",
    "check_mode",
    "dollars",
    "latency_summary",
    "load_active_model",
    "load_model",
    "poll_registry",
    "run_paper_async",
    "run_paper_trading",
]
