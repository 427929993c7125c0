"""Walk-forward evaluation from the shell: rolling (train, test) folds over the recorded
history, one Celery task per fold (the same service the admin uses), then the per-fold and
pooled held-out metrics."""

from __future__ import annotations

import time

from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.training import selectors, services
from apps.training.evaluation import describe_metrics
from apps.training.management.commands.train import _hp, spec_problems
from apps.training.models import WalkForward, WalkForwardStatus
from apps.training.spec import ALGORITHMS, RunSpec, SpecError
from apps.training.walkforward import rolling_windows


class Command(BaseCommand):
    help = "Walk-forward: train and evaluate one registry version per rolling fold, pooled."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--name", required=True, help="the folds are versions of this name")
        parser.add_argument("--algorithm", choices=ALGORITHMS, default="PPO")
        parser.add_argument("--markets", default="", help="comma-separated; default: recorded")
        parser.add_argument("--folds", type=int, default=4)
        parser.add_argument(
            "--train-segments", type=int, default=3, help="training window, in test windows"
        )
        parser.add_argument("--timesteps", type=int, default=20_000)
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--step-s", type=float, default=1.0)
        parser.add_argument("--episode-steps", type=int, default=300)
        parser.add_argument("--eval-episodes", type=int, default=3)
        parser.add_argument("--n-envs", type=int, default=1)
        parser.add_argument("--hp", type=_hp, action="append", default=[], help="key=value")
        parser.add_argument("--no-wait", action="store_true", help="queue and return")

    def handle(self, *args: object, **opts: object) -> None:
        markets = [m for m in str(opts["markets"]).split(",") if m] or selectors.recorded_markets()
        span = selectors.recorded_span(markets) if markets else None
        if span is None:
            raise CommandError("no recorded deltas: run ingest_orderbook first")
        try:
            ts, te, es, ee = rolling_windows(
                *span, folds=opts["folds"], train_segments=opts["train_segments"]
            )[0]
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        spec = RunSpec(
            name=opts["name"],
            algorithm=opts["algorithm"],
            markets=markets,
            train_start=ts,  # each fold replaces the windows with its own
            train_end=te,
            eval_start=es,
            eval_end=ee,
            total_timesteps=opts["timesteps"],
            hyperparameters=dict(opts["hp"]),
            seed=opts["seed"],
            step_s=opts["step_s"],
            episode_steps=opts["episode_steps"],
            eval_episodes=opts["eval_episodes"],
            n_envs=opts["n_envs"],
        )
        try:
            walkforward = services.start_walkforward(
                spec=spec,
                folds=opts["folds"],
                train_segments=opts["train_segments"],
                span=span,
            )
        except SpecError as exc:
            raise CommandError(spec_problems(exc)) from None
        except services.RegistryError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"queued {walkforward}: {opts['folds']} folds")
        if opts["no_wait"]:
            return
        while True:
            walkforward.refresh_from_db()
            if walkforward.status != WalkForwardStatus.RUNNING:
                break
            time.sleep(1)
        self.report(walkforward)

    def report(self, walkforward: WalkForward) -> None:
        metrics = walkforward.metrics
        self.stdout.write(f"{walkforward}; held-out, per hour of market time, [95% interval]:")
        for fold in metrics.get("folds", []):
            line = describe_metrics(fold["evaluation"]) if fold["evaluation"] else fold["status"]
            self.stdout.write(f"  fold {fold['index']} v{fold['version']:<4} {line}")
        pooled = metrics.get("pooled") or {}
        if not pooled:
            raise CommandError("no fold finished: nothing to pool")
        self.stdout.write(f"  pooled over folds {metrics['pooled_folds']}:")
        rows = [("agent", pooled["evaluation"]), *pooled["baselines"].items()]
        for label, values in rows:
            self.stdout.write(f"  {label:14s} {describe_metrics(values)}")
        versus = pooled.get("versus_no_trading") or {}
        low, high = versus.get("ci") or [None, None]
        if versus.get("difference") is not None and low is not None:
            self.stdout.write(
                f"  agent - no trading: {versus['difference']:+.2f} $/h [{low:+.2f}, {high:+.2f}]"
            )
