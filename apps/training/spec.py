"""A training run's specification, validated before anything is queued (no Django here)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

ALGORITHMS = ("PPO", "A2C", "MaskablePPO")
MAX_MARKETS = 10

# Hyperparameters a user may set, with the type each must have. Anything else is refused
# before the run is queued, so a typo never silently trains with a default.
ALLOWED_HYPERPARAMETERS: dict[str, dict[str, type | tuple[type, ...]]] = {
    "PPO": {
        "learning_rate": (float, int),
        "n_steps": int,
        "batch_size": int,
        "n_epochs": int,
        "gamma": (float, int),
        "gae_lambda": (float, int),
        "clip_range": (float, int),
        "ent_coef": (float, int),
        "vf_coef": (float, int),
        "max_grad_norm": (float, int),
    },
    "A2C": {
        "learning_rate": (float, int),
        "n_steps": int,
        "gamma": (float, int),
        "gae_lambda": (float, int),
        "ent_coef": (float, int),
        "vf_coef": (float, int),
        "max_grad_norm": (float, int),
    },
}
ALLOWED_HYPERPARAMETERS["MaskablePPO"] = ALLOWED_HYPERPARAMETERS["PPO"]
POSITIVE = {"learning_rate", "n_steps", "batch_size", "n_epochs", "max_grad_norm", "clip_range"}
UNIT_INTERVAL = {"gamma", "gae_lambda"}


class SpecError(ValueError):
    """A run specification that cannot be trained; the message says what to change."""


@dataclass(frozen=True)
class RunSpec:
    """Everything a training run needs. Windows are [start, end) in UTC."""

    name: str
    algorithm: str
    markets: list[str]
    train_start: datetime
    train_end: datetime
    eval_start: datetime
    eval_end: datetime
    total_timesteps: int = 20_000
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    step_s: float = 1.0
    episode_steps: int = 300
    eval_episodes: int = 3
    checkpoint_every: int = 0  # timesteps; 0 = no intermediate checkpoints
    parent_version: int | None = None

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("train_start", "train_end", "eval_start", "eval_end"):
            data[key] = data[key].isoformat()
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunSpec:
        values = dict(data)
        for key in ("train_start", "train_end", "eval_start", "eval_end"):
            values[key] = datetime.fromisoformat(values[key])
        return cls(**values)


def validate_spec(spec: RunSpec) -> RunSpec:
    """Raise :class:`SpecError` with every problem found, or return the spec unchanged."""
    problems: list[str] = []
    if not spec.name or not spec.name.replace("-", "").replace("_", "").isalnum():
        problems.append("name must be letters, digits, '-' or '_'")
    if spec.algorithm not in ALGORITHMS:
        problems.append(f"algorithm must be one of {', '.join(ALGORITHMS)}, not {spec.algorithm!r}")
    if not 1 <= len(spec.markets) <= MAX_MARKETS:
        problems.append(f"give 1 to {MAX_MARKETS} markets, not {len(spec.markets)}")
    if len(set(spec.markets)) != len(spec.markets):
        problems.append("markets must be distinct")
    for start, end, what in (
        (spec.train_start, spec.train_end, "training"),
        (spec.eval_start, spec.eval_end, "evaluation"),
    ):
        if start.tzinfo is None or end.tzinfo is None:
            problems.append(f"the {what} window needs timezone-aware times")
        elif end <= start:
            problems.append(f"the {what} window ends before it starts")
    if not problems and spec.eval_start < spec.train_end and spec.train_start < spec.eval_end:
        problems.append("the evaluation window overlaps the training window (held-out time)")
    if spec.total_timesteps < 1:
        problems.append("total_timesteps must be positive")
    if spec.step_s <= 0:
        problems.append("step_s must be positive")
    if spec.episode_steps < 2:
        problems.append("episode_steps must be at least 2")
    if spec.eval_episodes < 1:
        problems.append("eval_episodes must be at least 1")
    if spec.checkpoint_every < 0:
        problems.append("checkpoint_every must be 0 (off) or positive")
    allowed = ALLOWED_HYPERPARAMETERS.get(spec.algorithm, {})
    for key, value in spec.hyperparameters.items():
        expected = allowed.get(key)
        if expected is None:
            problems.append(
                f"unknown hyperparameter {key!r} for {spec.algorithm}; "
                f"allowed: {', '.join(sorted(allowed))}"
            )
        elif isinstance(value, bool) or not isinstance(value, expected):
            problems.append(f"hyperparameter {key}={value!r} has the wrong type")
        elif key in POSITIVE and value <= 0:
            problems.append(f"hyperparameter {key} must be positive, got {value}")
        elif key in UNIT_INTERVAL and not 0 < value <= 1:
            problems.append(f"hyperparameter {key} must be in (0, 1], got {value}")
    hp = spec.hyperparameters
    if "batch_size" in hp and "n_steps" in hp and not problems and hp["batch_size"] > hp["n_steps"]:
        problems.append("batch_size cannot exceed n_steps (one environment)")
    if problems:
        raise SpecError("; ".join(problems))
    return spec
