"""A run checked against the recorded data before it is queued, and defaults taken from it.

:func:`validate_run` is what every way of starting a run calls (the admin's form, the
``train`` command, the registry's service): the spec's own bounds
(:func:`apps.training.spec.validate_spec`), then, when those hold, the data — every market is
in the recorded tables, and each window holds a recorded, trusted book of every market for at
least an episode's worth of ticks. A run that would fail in the worker for want of data is
refused here, with one message on the field to change.

:func:`run_defaults` proposes windows, an env step and an episode length that fit what is
recorded for the chosen markets (a 30-second demo recording and a week of production data
need different ones).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db.models import Max, Min

from apps.marketdata.models import OrderbookDelta, OrderbookSnapshot
from apps.training.selectors import recorded_span, split_windows
from apps.training.spec import RunSpec, SpecError, validate_spec
from apps.training.storage import memory_budget_bytes

# Env steps the defaults choose from, largest first: the largest that gives the held-out
# window two full episodes of DEFAULT_EPISODE_STEPS.
STEP_CHOICES_S = (1.0, 0.5, 0.25, 0.1, 0.05, 0.02, 0.01)
DEFAULT_EPISODE_STEPS = 300
DEFAULT_TRAIN_SHARE = 0.7


def _when(moment: datetime) -> str:
    return f"{moment:%Y-%m-%d %H:%M:%S} UTC"


def unrecorded(markets: list[str]) -> list[str]:
    """The markets of ``markets`` with no recorded snapshot or delta, in the given order."""
    seen = set(
        OrderbookSnapshot.objects.filter(market_ticker__in=markets)
        .values_list("market_ticker", flat=True)
        .distinct()
    )
    missing = [m for m in markets if m not in seen]
    if missing:
        seen |= set(
            OrderbookDelta.objects.filter(market_ticker__in=missing)
            .values_list("market_ticker", flat=True)
            .distinct()
        )
    return [m for m in markets if m not in seen]


@dataclass(frozen=True)
class Coverage:
    """Where a market's recorded book is usable inside a window: from its first trusted
    state (a snapshot at or before the window's start, else its first snapshot inside it)
    to the window's end when the market was still recorded after it, else to its last
    stored row (the loader distrusts a book after its recording's end)."""

    market: str
    start: datetime | None
    end: datetime | None

    @property
    def seconds(self) -> float:
        if self.start is None or self.end is None or self.end <= self.start:
            return 0.0
        return (self.end - self.start).total_seconds()

    def ticks(self, step_s: float) -> int:
        return int(self.seconds / step_s) + 1 if self.seconds else 0


def coverage(market: str, start: datetime, end: datetime) -> Coverage:
    """The part of [start, end) where ``market`` has a trusted recorded book."""
    snapshots = OrderbookSnapshot.objects.filter(market_ticker=market).exclude(as_of_sid=None)
    if snapshots.filter(received_at__lte=start).exists():
        trusted_from: datetime | None = start
    else:
        trusted_from = snapshots.filter(received_at__gt=start, received_at__lt=end).aggregate(
            t=Min("received_at")
        )["t"]
    tables = (OrderbookDelta.objects, OrderbookSnapshot.objects)
    if any(t.filter(market_ticker=market, received_at__gte=end).exists() for t in tables):
        return Coverage(market, trusted_from, end)  # the recording went on past the window
    last = [
        t.filter(market_ticker=market, received_at__lt=end).aggregate(t=Max("received_at"))["t"]
        for t in tables
    ]
    stored = [t for t in last if t is not None]
    return Coverage(market, trusted_from, max(stored) if stored else None)


def data_problems(spec: RunSpec) -> dict[str, list[str]]:
    """What the recorded data lacks for ``spec`` (a spec that passed ``validate_spec``),
    keyed by the form field to change; one message per field."""
    missing = unrecorded(spec.markets)
    if missing:
        return {
            "markets": [
                f"not in the recorded data: {', '.join(missing)} (record "
                f"{'it' if len(missing) == 1 else 'them'} first with ingest_orderbook, or "
                "check the ticker)"
            ]
        }
    problems: dict[str, list[str]] = {}
    needed = spec.episode_steps + 1
    for key, start, end, what in (
        ("train_end", spec.train_start, spec.train_end, "training"),
        ("eval_end", spec.eval_start, spec.eval_end, "evaluation"),
    ):
        short = [
            c
            for c in (coverage(m, start, end) for m in spec.markets)
            if c.ticks(spec.step_s) < needed
        ]
        if not short:
            continue
        worst = min(short, key=lambda c: c.seconds)
        if worst.start is None:
            found = f"has no order book snapshot of {worst.market} (its book is never trusted)"
        elif worst.end is None or worst.end <= worst.start:
            ended = f": its recording ends at {_when(worst.end)}" if worst.end else ""
            found = f"has no recorded data of {worst.market}{ended}"
        else:
            found = (
                f"has a recorded book of {worst.market} only from {_when(worst.start)} to "
                f"{_when(worst.end)}: {worst.ticks(spec.step_s):,} ticks of {spec.step_s:g} s"
            )
        others = f" (and {len(short) - 1} other market(s))" if len(short) > 1 else ""
        problems[key] = [
            f"the {what} window {found}{others}; an episode of {spec.episode_steps} steps "
            f"needs {needed}: widen the window, lower the env step or shorten the episode"
        ]
    return problems


def validate_run(spec: RunSpec) -> RunSpec:
    """Raise :class:`SpecError` with every problem of ``spec`` (bounds, memory, then the
    recorded data), or return it."""
    validate_spec(spec, memory_budget_bytes=memory_budget_bytes())
    problems = data_problems(spec)
    if problems:
        raise SpecError(problems)
    return spec


@dataclass(frozen=True)
class RunDefaults:
    markets: list[str]
    train_start: datetime
    train_end: datetime
    eval_start: datetime
    eval_end: datetime
    step_s: float
    episode_steps: int


def run_defaults(
    markets: list[str], *, train_share: float = DEFAULT_TRAIN_SHARE
) -> RunDefaults | None:
    """Windows, env step and episode length that fit what is recorded for ``markets``: the
    first ``train_share`` of their recorded span to train, the rest held out; the largest
    env step at which the held-out window holds two episodes of 300 steps (else the
    smallest step, and episodes of a third of the held-out window). None when nothing is
    recorded for them."""
    span = recorded_span(markets)
    if span is None:
        return None
    (ts, te), (es, ee) = split_windows(*span, train_share=train_share)
    held_out_s = (ee - es) / timedelta(seconds=1)
    step = next(
        (s for s in STEP_CHOICES_S if held_out_s / s >= 2 * (DEFAULT_EPISODE_STEPS + 1)),
        STEP_CHOICES_S[-1],
    )
    ticks = int(held_out_s / step)
    episode = max(2, min(DEFAULT_EPISODE_STEPS, ticks // 3))
    return RunDefaults(markets, ts, te, es, ee, step, episode)
