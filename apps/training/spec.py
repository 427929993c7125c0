"""A training run's specification, validated before anything is queued (no Django here).

:func:`validate_spec` is the one validator: the admin form, ``manage.py train`` and
:func:`apps.training.services.start_training_run` all call it. It bounds every field and
hyperparameter (finite numbers in a stated range, nothing else) and estimates the memory the
run will hold — history arrays, the env's precomputed observations and the rollout buffer,
computed from their real shapes (:func:`estimate_memory`) — against a budget
(``RL_TRAINING_MEMORY_BUDGET_MB``). Problems are reported per field (:class:`SpecError`).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

ALGORITHMS = ("PPO", "A2C", "MaskablePPO")
MAX_MARKETS = 10
NON_FIELD = "__all__"  # the key of problems that concern several fields (Django's name)

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
# Stable-Baselines3's defaults for the ones the memory estimate needs (a test checks them
# against SB3's signatures).
SB3_DEFAULTS: dict[str, dict[str, int | None]] = {
    "PPO": {"n_steps": 2048, "batch_size": 64, "n_epochs": 10},
    "MaskablePPO": {"n_steps": 2048, "batch_size": 64, "n_epochs": 10},
    "A2C": {"n_steps": 5, "batch_size": None, "n_epochs": 1},  # A2C: one full-buffer batch
}


@dataclass(frozen=True)
class Bound:
    """A closed range [lo, hi], or (lo, hi] when ``lo_open``."""

    lo: float
    hi: float
    lo_open: bool = False

    def contains(self, value: float) -> bool:
        above = value > self.lo if self.lo_open else value >= self.lo
        return above and value <= self.hi

    def __str__(self) -> str:
        return f"{'(' if self.lo_open else '['}{_num(self.lo)}, {_num(self.hi)}]"


def _num(value: float) -> str:
    """A number for a message: grouped digits, and no 4,000-digit echo of hostile input."""
    if isinstance(value, int):
        digits = len(str(abs(value))) if abs(value) < 10**1000 else None
        if digits is None or digits > 18:
            return f"a number of {digits or 'over 1000'} digits"
        return f"{value:,}"
    return f"{int(value):,}" if value.is_integer() and abs(value) < 1e15 else f"{value:g}"


def _show(value: Any) -> str:
    """``repr`` for a message, short (and safe for ints beyond ``int``'s str limit)."""
    if _is_int(value):
        return _num(value)
    return repr(value)[:40]


HYPERPARAMETER_BOUNDS: dict[str, Bound] = {
    "learning_rate": Bound(0, 1, lo_open=True),
    "n_steps": Bound(2, 1_000_000),  # the memory budget usually bounds it further
    "batch_size": Bound(2, 1_000_000),  # PPO normalises advantages: a batch of 1 is refused
    "n_epochs": Bound(1, 1_000),
    "gamma": Bound(0, 1, lo_open=True),
    "gae_lambda": Bound(0, 1, lo_open=True),
    "clip_range": Bound(0, 1, lo_open=True),
    "ent_coef": Bound(0, 1),
    "vf_coef": Bound(0, 10),
    "max_grad_norm": Bound(0, 1_000, lo_open=True),
}
FIELD_BOUNDS: dict[str, Bound] = {
    "total_timesteps": Bound(1, 100_000_000),
    "seed": Bound(0, 2**32 - 1),  # numpy's seeds
    "step_s": Bound(0.001, 3_600),
    "episode_steps": Bound(2, 1_000_000),
    "eval_episodes": Bound(1, 100),
    "checkpoint_every": Bound(0, 100_000_000),  # 0 = no intermediate checkpoints
    "n_envs": Bound(1, 64),
}
MAX_CHECKPOINTS = 1_000
MAX_HYPERPARAMETERS_JSON_CHARS = 4_096
_NAME = re.compile(r"[A-Za-z0-9_-]{1,100}")  # rl_models.name is varchar(100)
_TICKER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # tickers are varchar(128)


class SpecError(ValueError):
    """A run specification that cannot be trained; the message says what to change.

    ``errors`` maps a field of :class:`RunSpec` (or :data:`NON_FIELD`) to its problems, so
    that a form can show each next to its field and the CLI can name the flag.
    """

    def __init__(self, errors: dict[str, list[str]] | str) -> None:
        self.errors = {NON_FIELD: [errors]} if isinstance(errors, str) else errors
        super().__init__("; ".join(m for messages in self.errors.values() for m in messages))


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
    # Envs stepped per policy forward pass (n_steps is per env, as in SB3): they share one
    # precomputed history, so memory grows only by the rollout buffer.
    n_envs: int = 1

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

    def hyperparameter(self, key: str) -> int | None:
        """A hyperparameter as the run will use it: the spec's, else SB3's default."""
        value = self.hyperparameters.get(key)
        return value if value is not None else SB3_DEFAULTS[self.algorithm].get(key)


# -- parsing user input -----------------------------------------------------------------------


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number (only finite numbers are accepted)")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is out of range (only finite numbers are accepted)")
    return value


def parse_json(raw: str, *, max_chars: int = MAX_HYPERPARAMETERS_JSON_CHARS) -> Any:
    """Parse user JSON (a form field, a ``--hp`` value) with bounds: at most ``max_chars``,
    finite numbers only (NaN, Infinity and 1e400 are refused), no pathological nesting.

    Raises ValueError with a message fit to show the user.
    """
    if len(raw) > max_chars:
        raise ValueError(f"longer than {max_chars} characters")
    try:
        return json.loads(raw, parse_constant=_refuse_constant, parse_float=_finite_float)
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"not valid JSON: {exc.msg} (line {exc.lineno} column {exc.colno})"
        ) from None
    except RecursionError:
        raise ValueError("nested too deeply") from None
    # int() of 4,300+ digits raises a plain ValueError ("Exceeds the limit"): already one.


# -- validation -----------------------------------------------------------------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return _is_int(value) or (isinstance(value, float) and math.isfinite(value))


def _window_ticks(start: datetime, end: datetime, step_s: float) -> int:
    """Ticks the history loader samples over [start, end) (as HistoryBuilder counts them)."""
    step_ns = int(step_s * 1e9)
    start_ns = int(start.timestamp() * 1_000_000) * 1000
    end_ns = int(end.timestamp() * 1_000_000) * 1000
    return max(0, (end_ns - start_ns + step_ns - 1) // step_ns)


def validate_spec(spec: RunSpec, *, memory_budget_bytes: int | None = None) -> RunSpec:
    """Raise :class:`SpecError` with every problem found, or return the spec unchanged.

    With ``memory_budget_bytes``, a run whose :func:`estimate_memory` exceeds it is refused.
    """
    problems: dict[str, list[str]] = {}

    def problem(key: str, message: str) -> None:
        problems.setdefault(key, []).append(message)

    if not isinstance(spec.name, str) or not _NAME.fullmatch(spec.name):
        problem("name", "name must be 1 to 100 letters, digits, '-' or '_'")
    if spec.algorithm not in ALGORITHMS:
        problem(
            "algorithm", f"algorithm must be one of {', '.join(ALGORITHMS)}, not {spec.algorithm!r}"
        )
    markets = spec.markets if isinstance(spec.markets, list) else []
    if not 1 <= len(markets) <= MAX_MARKETS:
        problem("markets", f"give 1 to {MAX_MARKETS} markets, not {len(markets)}")
    bad = [m for m in markets if not isinstance(m, str) or not _TICKER.fullmatch(m)]
    if bad:
        problem("markets", f"not a market ticker: {', '.join(repr(m)[:40] for m in bad[:3])}")
    elif len(set(markets)) != len(markets):
        problem("markets", "markets must be distinct")
    windows_ok = True
    for key, start, end, what in (
        ("train_end", spec.train_start, spec.train_end, "training"),
        ("eval_end", spec.eval_start, spec.eval_end, "evaluation"),
    ):
        if not isinstance(start, datetime) or not isinstance(end, datetime):
            problem(key, f"the {what} window needs two datetimes")
            windows_ok = False
        elif start.tzinfo is None or end.tzinfo is None:
            problem(key, f"the {what} window needs timezone-aware times")
            windows_ok = False
        elif end <= start:
            problem(key, f"the {what} window ends before it starts")
            windows_ok = False
    if windows_ok and spec.eval_start < spec.train_end and spec.train_start < spec.eval_end:
        problem("eval_start", "the evaluation window overlaps the training window (held-out time)")
    for key, bound in FIELD_BOUNDS.items():
        value = getattr(spec, key)
        integer = key != "step_s"
        if (integer and not _is_int(value)) or (not integer and not _is_number(value)):
            kind = "a whole number" if integer else "a finite number"
            problem(key, f"{key} must be {kind}, not {_show(value)}")
        elif not bound.contains(value):
            if key == "total_timesteps" and value < 1:
                problem(key, "total_timesteps must be positive")
            else:
                problem(key, f"{key} must be in {bound}, got {_num(value)}")
    if (
        _is_int(spec.checkpoint_every)
        and _is_int(spec.total_timesteps)
        and spec.checkpoint_every > 0
        and spec.total_timesteps / spec.checkpoint_every > MAX_CHECKPOINTS
    ):
        problem(
            "checkpoint_every",
            f"checkpoint_every={spec.checkpoint_every} writes more than {MAX_CHECKPOINTS} "
            f"checkpoints over {spec.total_timesteps} timesteps",
        )
    if spec.parent_version is not None and (
        not _is_int(spec.parent_version) or spec.parent_version < 1
    ):
        problem("parent_version", "parent_version must be a version number (1 or more)")
    _check_hyperparameters(spec, problem)
    fields_ok = not problems
    if fields_ok:
        # An episode needs episode_steps + 1 ticks of each window (the env refuses less).
        for key, start, end, what in (
            ("train_end", spec.train_start, spec.train_end, "training"),
            ("eval_end", spec.eval_start, spec.eval_end, "evaluation"),
        ):
            ticks = _window_ticks(start, end, spec.step_s)
            if ticks < spec.episode_steps + 1:
                problem(
                    key,
                    f"the {what} window holds {ticks} ticks of {spec.step_s:g} s; an episode of "
                    f"{spec.episode_steps} steps needs {spec.episode_steps + 1}",
                )
    if fields_ok and memory_budget_bytes is not None:
        estimate = estimate_memory(spec)
        if estimate.total > memory_budget_bytes:
            problem(
                NON_FIELD,
                f"this run would hold about {_gib(estimate.total)} in memory "
                f"({estimate.describe()}), over the budget of {_gib(memory_budget_bytes)} "
                "(RL_TRAINING_MEMORY_BUDGET_MB): use a larger step_s, shorter windows, fewer "
                "markets or a smaller n_steps",
            )
    if problems:
        raise SpecError(problems)
    return spec


def _check_hyperparameters(spec: RunSpec, problem: Any) -> None:
    hp = spec.hyperparameters
    if not isinstance(hp, dict):
        problem("hyperparameters", "hyperparameters must be a JSON object")
        return
    allowed = ALLOWED_HYPERPARAMETERS.get(spec.algorithm, {})
    ok = True
    for key, value in hp.items():
        expected = allowed.get(key)
        if expected is None:
            problem(
                "hyperparameters",
                f"unknown hyperparameter {str(key)[:40]!r} for {spec.algorithm}; "
                f"allowed: {', '.join(sorted(allowed))}",
            )
        elif isinstance(value, bool) or not isinstance(value, expected):
            problem("hyperparameters", f"hyperparameter {key}={_show(value)} has the wrong type")
        elif isinstance(value, float) and not math.isfinite(value):
            problem("hyperparameters", f"hyperparameter {key} must be a finite number")
        elif not HYPERPARAMETER_BOUNDS[key].contains(value):
            bound = HYPERPARAMETER_BOUNDS[key]
            problem(
                "hyperparameters", f"hyperparameter {key} must be in {bound}, got {_num(value)}"
            )
        else:
            continue
        ok = False
    envs = spec.n_envs if _is_int(spec.n_envs) and spec.n_envs >= 1 else 1
    if ok and "batch_size" in hp and "n_steps" in hp and hp["batch_size"] > hp["n_steps"] * envs:
        problem(
            "hyperparameters",
            f"batch_size cannot exceed n_steps x n_envs ({hp['n_steps']} x {envs})",
        )


# -- memory ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a run holds at its peak, by part (see :func:`estimate_memory`)."""

    parts: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    def describe(self) -> str:
        return ", ".join(f"{name} {_gib(n)}" for name, n in self.parts.items() if n)


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def history_bytes(ticks: int, markets: int, levels: int) -> int:
    """A :class:`~apps.simulation.history.RecordedHistory`'s arrays (dtypes as it stores)."""
    return ticks * (8 + markets * levels * (4 + 8 + 4 + 8) + markets * (1 + 4))


def history_load_overhead_bytes(ticks: int, markets: int, levels: int) -> int:
    """What :class:`~apps.simulation.history.HistoryBuilder` holds beside the history while
    it finishes, per tick and market: ``_sampled`` (bool), the forward-fill row index and its
    ``np.where`` source (int64 each), one re-indexed int64 ladder at a time, the int64 cumsum
    of the trust rule and its two bool comparisons."""
    return ticks * markets * (1 + 8 + 8 + levels * 8 + 8 + 2)


_PRECOMPUTE_CHUNK_ROWS = 4096  # KalshiTradingEnv._precompute works in slices of this many
_PRECOMPUTE_ROW_TEMP_BYTES = 11_000  # static_features' float64 temporaries a row (measured)


def env_bytes(ticks: int, markets: int) -> tuple[int, int]:
    """(kept, transient) bytes of one :class:`~apps.simulation.env.KalshiTradingEnv`'s
    precomputation over ``ticks`` (``_precompute``).

    Kept: books padded to 10 markets x 2 sides x 10 levels of int64 prices and sizes, trust,
    the float32 static features, the marks (int64 a market), the fee rows (int32 a market) and
    the tick times as a Python list (an 8-byte slot and a 32-byte int each). Transient: the
    float64 history block of 10 markets and the temporaries of one slice of static features.
    """
    from apps.simulation.books import BOOK_LEVELS
    from apps.simulation.features import FEATURES_PER_MARKET, N_HISTORY, N_MARKETS

    per_tick = (
        2 * N_MARKETS * 2 * BOOK_LEVELS * 8  # _px, _sz
        + N_MARKETS  # _trusted
        + N_MARKETS * FEATURES_PER_MARKET * 4  # _static
        + markets * 8  # _mid_e4x2
        + markets * 4  # the fee row of each market per tick (int32 fee_ids)
        + 8
        + 32  # _times_list
    )
    transient = (
        ticks * N_MARKETS * N_HISTORY * 8
        + min(ticks, _PRECOMPUTE_CHUNK_ROWS) * _PRECOMPUTE_ROW_TEMP_BYTES
    )
    return ticks * per_tick, transient


def rollout_bytes(spec: RunSpec) -> tuple[int, int]:
    """(kept, transient) bytes of SB3's rollout buffer for ``spec`` (n_steps x n_envs rows;
    the envs share the precomputed history, see ``KalshiTradingEnv.spawn``): per step the
    float32 observation, the int64 MultiDiscrete action, six float32 scalars (rewards,
    returns, episode starts, values, log-probs, advantages) and, for MaskablePPO, the float32
    action masks; while it trains, each minibatch is gathered and copied to torch (twice its
    rows), and the shuffled index (int64 a step)."""
    from apps.simulation.actions import ACTIONS_PER_MARKET
    from apps.simulation.features import N_FEATURES

    m = len(spec.markets)
    n_steps = int(spec.hyperparameter("n_steps") or 1) * int(spec.n_envs or 1)
    mask = ACTIONS_PER_MARKET * m * 4 if spec.algorithm == "MaskablePPO" else 0
    row = N_FEATURES * 4 + m * 8 + 6 * 4 + mask
    batch = spec.hyperparameter("batch_size") or n_steps
    return n_steps * row, 2 * min(batch, n_steps) * row + n_steps * 8


def estimate_memory(spec: RunSpec, *, levels: int | None = None) -> MemoryEstimate:
    """The bytes a run of ``spec`` holds at its peak, from the shapes of what it allocates.

    During evaluation everything is alive at once: both windows' histories, the training env
    (the model keeps it) and the evaluation env, the rollout buffer; the largest transient
    (a history load, a precomputation, a training minibatch) comes on top. Python, torch and
    the network itself (~0.5 GB, independent of the spec) are not counted.
    """
    from apps.simulation.history import DEFAULT_LEVELS

    k = levels or DEFAULT_LEVELS
    m = len(spec.markets)
    train = _window_ticks(spec.train_start, spec.train_end, spec.step_s)
    evaluation = _window_ticks(spec.eval_start, spec.eval_end, spec.step_s)
    env_train, env_train_tmp = env_bytes(train, m)
    env_eval, env_eval_tmp = env_bytes(evaluation, m)
    rollout, rollout_tmp = rollout_bytes(spec)
    transient = max(
        history_load_overhead_bytes(max(train, evaluation), m, k),
        env_train_tmp,
        env_eval_tmp,
        rollout_tmp,
    )
    return MemoryEstimate(
        {
            "training history": history_bytes(train, m, k),
            "evaluation history": history_bytes(evaluation, m, k),
            "training env": env_train,
            "evaluation env": env_eval,
            "rollout buffer": rollout,
            "peak transient": transient,
        }
    )
