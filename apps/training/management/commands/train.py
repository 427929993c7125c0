"""Train an agent on recorded history from the shell (the same service the admin uses)."""

from __future__ import annotations

import argparse
import threading
import time
from datetime import datetime

from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from apps.training import selectors, services
from apps.training.datachecks import (
    DEFAULT_EPISODE_STEPS,
    STEP_CHOICES_S,
    run_defaults,
    unrecorded,
)
from apps.training.dispatch import worker_status
from apps.training.evaluation import describe_metrics
from apps.training.models import ModelStatus, RLModel
from apps.training.spec import RunSpec, SpecError, parse_json


def _hp(value: str) -> tuple[str, object]:
    key, sep, raw = value.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"--hp takes key=value, got {value[:60]!r}")
    try:
        return key, parse_json(raw)  # bounded: size, nesting, finite numbers only
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--hp {key[:40]}: {exc}") from None


FALLBACK_STEP_S = STEP_CHOICES_S[0]  # when nothing is recorded (the run is then refused)

# The flag of each RunSpec field, to name it in an error.
FLAGS = {
    "name": "--name",
    "algorithm": "--algorithm",
    "markets": "--markets",
    "train_start": "--train-start",
    "train_end": "--train-end",
    "eval_start": "--eval-start",
    "eval_end": "--eval-end",
    "total_timesteps": "--timesteps",
    "hyperparameters": "--hp",
    "seed": "--seed",
    "step_s": "--step-s",
    "episode_steps": "--episode-steps",
    "eval_episodes": "--eval-episodes",
    "n_envs": "--n-envs",
    "parent_version": "--parent-version",
}


def spec_problems(exc: SpecError) -> str:
    """One line per problem, each led by the flag to change."""
    lines = []
    for key, messages in exc.errors.items():
        flag = FLAGS.get(key)
        lines += [f"{flag}: {m}" if flag else m for m in messages]
    return "the run was not queued:\n  " + "\n  ".join(lines)


class Command(BaseCommand):
    help = (
        "Train PPO / A2C / MaskablePPO on recorded history as a Celery task, then evaluate "
        "(in this process when no worker answers and the command waits)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--name", required=True, help="model name (versions are per name)")
        parser.add_argument("--algorithm", choices=["PPO", "A2C", "MaskablePPO"], default="PPO")
        parser.add_argument("--markets", default="", help="comma-separated; default: recorded")
        parser.add_argument("--timesteps", type=int, default=20_000)
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument(
            "--step-s",
            type=float,
            help="env clock step, seconds (default: one that fits the recorded data)",
        )
        parser.add_argument(
            "--episode-steps",
            type=int,
            help="steps per episode (default: one that fits the recorded data, at most 300)",
        )
        parser.add_argument("--eval-episodes", type=int, default=3)
        parser.add_argument(
            "--n-envs", type=int, default=1, help="envs per forward pass (n_steps is per env)"
        )
        parser.add_argument("--train-share", type=float, default=0.7)
        parser.add_argument("--train-start", type=datetime.fromisoformat)
        parser.add_argument("--train-end", type=datetime.fromisoformat)
        parser.add_argument("--eval-start", type=datetime.fromisoformat)
        parser.add_argument("--eval-end", type=datetime.fromisoformat)
        parser.add_argument("--hp", type=_hp, action="append", default=[], help="key=value")
        parser.add_argument("--parent-version", type=int, help="fine-tune from this version")
        parser.add_argument("--no-wait", action="store_true", help="queue and return")

    def handle(self, *args: object, **opts: object) -> None:
        markets = [m for m in str(opts["markets"]).split(",") if m] or selectors.recorded_markets()
        if not markets:
            raise CommandError("no recorded markets: run ingest_orderbook first")
        # Windows, env step and episode length not given fit what is recorded for the markets
        # (validate_run then says what the data lacks, e.g. a market that is not recorded).
        defaults = run_defaults(markets, train_share=opts["train_share"])
        windows = [opts["train_start"], opts["train_end"], opts["eval_start"], opts["eval_end"]]
        if not all(windows):
            if defaults is None:
                missing = unrecorded(markets)
                if missing:
                    raise CommandError(f"--markets: not in the recorded data: {', '.join(missing)}")
                raise CommandError(f"no recorded deltas for {', '.join(markets)}")
            derived = (
                defaults.train_start,
                defaults.train_end,
                defaults.eval_start,
                defaults.eval_end,
            )
            windows = [w or d for w, d in zip(windows, derived, strict=True)]
        step_s, episode_steps = opts["step_s"], opts["episode_steps"]
        if step_s is None:
            step_s = defaults.step_s if defaults else FALLBACK_STEP_S
        if episode_steps is None:
            episode_steps = defaults.episode_steps if defaults else DEFAULT_EPISODE_STEPS
        spec = RunSpec(
            name=opts["name"],
            algorithm=opts["algorithm"],
            markets=markets,
            train_start=windows[0],
            train_end=windows[1],
            eval_start=windows[2],
            eval_end=windows[3],
            total_timesteps=opts["timesteps"],
            hyperparameters=dict(opts["hp"]),
            seed=opts["seed"],
            step_s=step_s,
            episode_steps=episode_steps,
            eval_episodes=opts["eval_episodes"],
            parent_version=opts["parent_version"],
            n_envs=opts["n_envs"],
        )
        stop = threading.Event()
        holder: dict[str, RLModel] = {}
        bar = tqdm(total=spec.total_timesteps, unit="steps", desc=f"training {spec.name}")
        watcher = threading.Thread(target=self._watch, args=(holder, bar, stop), daemon=True)
        watcher.start()
        # Waiting anyway: with no worker listening, the run is this process's job.
        here = not opts["no_wait"] and not worker_status().online
        try:
            model = services.start_training_run(spec=spec, enqueue=not here)
        except (SpecError, services.RegistryError) as exc:
            stop.set()
            watcher.join(5)
            bar.close()
            message = spec_problems(exc) if isinstance(exc, SpecError) else str(exc)
            raise CommandError(message) from None
        holder["model"] = model
        if opts["no_wait"]:
            stop.set()
            bar.close()
            self.stdout.write(f"queued {model}")
            warning = worker_status().warning()
            if warning:
                self.stderr.write(f"warning: {warning}")
            return
        if here:
            services.run_training_here(model=model)
        while RLModel.objects.get(pk=model.pk).status == ModelStatus.TRAINING:
            time.sleep(1)
        stop.set()
        watcher.join(5)
        bar.close()
        model.refresh_from_db()
        if model.status != ModelStatus.READY:
            raise CommandError(f"{model}: {model.error.splitlines()[0] if model.error else ''}")
        self.report(model)

    def _watch(self, holder: dict[str, RLModel], bar: tqdm, stop: threading.Event) -> None:
        """Move the bar from the progress the task writes to the row (works in eager mode)."""
        from django.db import connection

        while not stop.wait(1.0):
            model = holder.get("model")
            query = RLModel.objects.filter(status=ModelStatus.TRAINING).order_by("-id")
            row = query.filter(pk=model.pk).first() if model else query.first()
            if row is not None:
                bar.n = int(row.progress.get("timesteps", 0))
                bar.refresh()
        connection.close()

    def report(self, model: RLModel) -> None:
        ev = model.metrics["evaluation"]
        self.stdout.write(self.style.SUCCESS(f"{model} trained; artifact {model.artifact_path}"))
        self.stdout.write("  held-out, per hour of market time, [95% interval]:")
        rows = [("agent", ev), *model.metrics["baselines"].items()]
        for label, m in rows:
            self.stdout.write(f"  {label:14s} {describe_metrics(m)}")
        self.stdout.write(f"  promotion gate: {selectors.promotion_check(model)}")
