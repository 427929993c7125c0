"""The admin's "Start a training run" form.

Every check runs before anything is queued, each message next to the field to change: the
form's own types, the spec's bounds and memory budget, then the recorded data (markets that
exist, windows with enough recorded ticks for an episode) — :func:`datachecks.validate_run`,
the same validation the ``train`` command and the registry's service run. Its defaults come
from what is recorded for the chosen markets (:func:`datachecks.run_defaults`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django import forms

from apps.training.datachecks import run_defaults, validate_run
from apps.training.spec import ALGORITHMS, RunSpec, SpecError, parse_json


def add_spec_errors(form: forms.Form, exc: SpecError) -> None:
    """Show each of the validator's problems next to its field (the rest above the form)."""
    for key, problems in exc.errors.items():
        field = key if key in form.fields else None
        for problem in problems:
            form.add_error(field, problem)


def parse_markets(raw: str) -> list[str]:
    return [m.strip().upper() for m in raw.split(",") if m.strip()]


class TrainingRunForm(forms.Form):
    """Validated fields for a run; the service validates the spec again when it queues."""

    name = forms.SlugField(max_length=100)
    algorithm = forms.ChoiceField(choices=[(a, a) for a in ALGORITHMS])
    markets = forms.CharField(help_text="comma-separated tickers (1 to 10) of recorded markets")
    train_start = forms.DateTimeField()
    train_end = forms.DateTimeField()
    eval_start = forms.DateTimeField(help_text="held-out time: must not overlap training")
    eval_end = forms.DateTimeField()
    total_timesteps = forms.IntegerField(min_value=1, initial=20_000)
    seed = forms.IntegerField(initial=0)
    step_s = forms.FloatField(min_value=0.001, initial=1.0, label="env step (s)")
    episode_steps = forms.IntegerField(min_value=2, initial=300)
    n_envs = forms.IntegerField(
        min_value=1,
        max_value=64,
        initial=8,
        required=False,
        label="envs",
        help_text="stepped per policy forward pass (n_steps is per env); empty = 1",
    )
    hyperparameters = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3}),
        required=False,
        initial="{}",
        help_text='JSON, e.g. {"learning_rate": 0.0003, "n_steps": 512}',
    )
    mode = forms.ChoiceField(
        choices=[("training", "training")],
        initial="training",
        help_text="runs only ever train; live trading does not exist",
    )
    queue_anyway = forms.BooleanField(
        required=False,
        label="queue without a worker",
        help_text="queue even though no worker answered: the run waits until one starts",
    )

    def clean_hyperparameters(self) -> dict:
        raw = self.cleaned_data.get("hyperparameters") or "{}"
        try:
            value = parse_json(raw)  # bounded: size, nesting, finite numbers only
        except ValueError as exc:
            raise forms.ValidationError(str(exc)) from None
        if not isinstance(value, dict):
            raise forms.ValidationError("must be a JSON object")
        return value

    def clean_markets(self) -> list[str]:
        return parse_markets(self.cleaned_data["markets"])

    def clean(self) -> dict:
        """The spec's bounds and the recorded data, each problem on its field."""
        data = super().clean()
        if not self.errors:
            try:
                validate_run(self.spec())
            except SpecError as exc:
                add_spec_errors(self, exc)
        return data

    def spec(self) -> RunSpec:
        data = self.cleaned_data
        return RunSpec(
            name=data["name"],
            algorithm=data["algorithm"],
            markets=data["markets"],
            train_start=data["train_start"],
            train_end=data["train_end"],
            eval_start=data["eval_start"],
            eval_end=data["eval_end"],
            total_timesteps=data["total_timesteps"],
            hyperparameters=data["hyperparameters"],
            seed=data["seed"],
            step_s=data["step_s"],
            episode_steps=data["episode_steps"],
            n_envs=data.get("n_envs") or 1,
        )


def initial_values(markets: list[str]) -> dict[str, Any]:
    """The form's defaults for ``markets``: windows, env step and episode length that fit
    what is recorded for them (just the markets when nothing is)."""
    defaults = run_defaults(markets) if markets else None
    if defaults is None:
        return {"markets": ",".join(markets)}
    fmt = datetime.isoformat
    return {
        "markets": ",".join(markets),
        "train_start": fmt(defaults.train_start),
        "train_end": fmt(defaults.train_end),
        "eval_start": fmt(defaults.eval_start),
        "eval_end": fmt(defaults.eval_end),
        "step_s": defaults.step_s,
        "episode_steps": defaults.episode_steps,
    }
