"""Hyperparameter studies from the shell: ``study start`` queues an Optuna study's trials as
Celery tasks (the same service the admin uses); ``study status`` shows its trials."""

from __future__ import annotations

import time

from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.training import selectors, services, tuning
from apps.training.management.commands.train import _hp, spec_problems
from apps.training.models import Study, StudyStatus
from apps.training.spec import ALGORITHMS, RunSpec, SpecError, parse_json


class Command(BaseCommand):
    help = "Optuna studies stored in the database, trials run by any Celery worker."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        start = sub.add_parser("start", help="queue a study's trials")
        start.add_argument("--name", required=True, help="each trial is a version of it")
        start.add_argument("--algorithm", choices=ALGORITHMS, default="PPO")
        start.add_argument("--markets", default="", help="comma-separated; default: recorded")
        start.add_argument("--trials", type=int, default=10, help="the budget")
        start.add_argument(
            "--space", default=None, help="search space JSON (default: lr, gamma, ent_coef)"
        )
        start.add_argument("--evaluate-every", type=int, default=None, help="timesteps (pruning)")
        start.add_argument("--timesteps", type=int, default=20_000)
        start.add_argument("--seed", type=int, default=0)
        start.add_argument("--step-s", type=float, default=1.0)
        start.add_argument("--episode-steps", type=int, default=300)
        start.add_argument("--eval-episodes", type=int, default=3)
        start.add_argument("--train-share", type=float, default=0.7)
        start.add_argument("--hp", type=_hp, action="append", default=[], help="key=value")
        start.add_argument("--wait", action="store_true", help="wait for the budget to be spent")
        status = sub.add_parser("status", help="a study's trials and best parameters")
        status.add_argument("study", type=int, nargs="?", help="study id (default: the newest)")

    def handle(self, *args: object, **opts: object) -> None:
        if opts["action"] == "start":
            study = self.start(opts)
            if not opts["wait"]:
                return
            while Study.objects.get(pk=study.pk).status == StudyStatus.RUNNING:
                time.sleep(2)
            study.refresh_from_db()
        else:
            query = Study.objects.order_by("-pk")
            study = query.filter(pk=opts["study"]).first() if opts["study"] else query.first()
            if study is None:
                raise CommandError("no such study")
        self.report(study)

    def start(self, opts: dict) -> Study:
        markets = [m for m in str(opts["markets"]).split(",") if m] or selectors.recorded_markets()
        span = selectors.recorded_span(markets) if markets else None
        if span is None:
            raise CommandError("no recorded deltas: run ingest_orderbook first")
        (ts, te), (es, ee) = selectors.split_windows(*span, train_share=opts["train_share"])
        try:
            space = parse_json(opts["space"]) if opts["space"] else None
        except ValueError as exc:
            raise CommandError(f"--space: {exc}") from None
        spec = RunSpec(
            name=opts["name"],
            algorithm=opts["algorithm"],
            markets=markets,
            train_start=ts,
            train_end=te,
            eval_start=es,
            eval_end=ee,
            total_timesteps=opts["timesteps"],
            hyperparameters=dict(opts["hp"]),
            seed=opts["seed"],
            step_s=opts["step_s"],
            episode_steps=opts["episode_steps"],
            eval_episodes=opts["eval_episodes"],
        )
        try:
            study = services.start_study(
                spec=spec,
                n_trials=opts["trials"],
                search_space=space,
                evaluate_every=opts["evaluate_every"],
            )
        except SpecError as exc:
            raise CommandError(spec_problems(exc)) from None
        self.stdout.write(f"queued {study}: {study.n_trials} trials")
        return study

    def report(self, study: Study) -> None:
        info = tuning.status(study)
        states = ", ".join(f"{n} {s}" for s, n in sorted(info["states"].items())) or "none yet"
        self.stdout.write(f"{study}: budget {info['budget']} trials; {states}")
        self.stdout.write(f"  workers: {', '.join(info['workers']) or '-'}")
        for trial in info["trials"]:
            value = "" if trial.value is None else f"{trial.value:+.4f} $/h"
            version = f"v{trial.model.version}" if trial.model else "-"
            self.stdout.write(
                f"  trial {trial.number:<3} {trial.state:9s} {version:6s} {value:14s} "
                f"{trial.worker:24s} {trial.params}"
            )
        best = info["best"]
        if best:
            self.stdout.write(
                f"  best: trial {best['number']} (v{best['version']}) "
                f"{best['value']:+.4f} $/h held-out, parameters {best['params']}"
            )
