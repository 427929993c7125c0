"""Registry rows for the admin page tests: versions with real verifiable artifacts (a fresh
policy saved in the artifact format, no training), a run spec, held-out metrics in the shape
the trainer stores, evaluation episodes and TensorBoard scalars written by the real writer."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.utils import timezone

from apps.training.artifacts import build_policy, save_artifact
from apps.training.models import RLModel, TradingEpisode
from apps.training.services import artifact_dir, tensorboard_dir
from apps.training.spec import RunSpec

MARKET = "KXADMIN-26DEC-T1"
T0 = datetime(2026, 11, 3, 14, 0, 0, tzinfo=UTC)
HELD_OUT = (T0 + timedelta(hours=2), T0 + timedelta(hours=3, seconds=7))


def policy_metrics(pnl_per_hour: float, *, spread: float = 1.0, trips: int = 12) -> dict:
    """One policy's summary as apps.training.evaluation.summarize stores it (value and
    ``<name>_ci`` for every metric)."""
    values: dict[str, Any] = {
        "episodes": 3,
        "mean_return": pnl_per_hour / 1000,
        "sharpe": pnl_per_hour / 2,
        "pnl_dollars": pnl_per_hour * 0.5,
        "return_per_episode": pnl_per_hour / 1000,
        "pnl_per_hour_dollars": pnl_per_hour,
        "sharpe_per_hour": pnl_per_hour / 2,
        "win_rate": 0.5 + pnl_per_hour / 100 if trips else None,
        "turnover": 0.25 if trips else 0.0,
        "fees_dollars": 0.07 * trips,
        "time_in_market": 0.4 if trips else 0.0,
        "max_drawdown": 0.0388 if trips else 0.0,
        "round_trips": trips,
        "open_trips": 0,
        "hours": 0.5,
        "steps": 900,
    }
    for name in (
        "pnl_dollars",
        "return_per_episode",
        "pnl_per_hour_dollars",
        "sharpe_per_hour",
        "win_rate",
        "turnover",
        "fees_dollars",
        "time_in_market",
        "max_drawdown",
    ):
        value = values[name]
        values[f"{name}_ci"] = (
            [None, None] if value is None else [value - spread * abs(value or 1), value + spread]
        )
    return values


def held_out_metrics(agent_pnl: float, edge: tuple[float, float]) -> dict:
    """The model's metrics as the trainer stores them: agent, three baselines, the gate's
    comparison with no trading, and the training snapshot."""
    no_trading = policy_metrics(0.0, spread=0.0, trips=0)
    no_trading["pnl_per_hour_dollars_ci"] = [0.0, 0.0]
    return {
        "evaluation": policy_metrics(agent_pnl),
        "baselines": {
            "no_trading": no_trading,
            "hold_favourite": policy_metrics(-0.6),
            "momentum": policy_metrics(0.3),
        },
        "training": {"timesteps": 4096, "total_timesteps": 4096, "fraction": 1.0, "fps": 812.5},
        "versus_no_trading": {
            "metric": "pnl_per_hour_dollars",
            "difference": agent_pnl,
            "ci": list(edge),
        },
        "beats_no_trading": edge[0] > 0,
    }


def spec_json(name: str, **overrides: Any) -> dict:
    values = dict(
        name=name,
        algorithm="PPO",
        markets=[MARKET],
        train_start=T0,
        train_end=HELD_OUT[0],
        eval_start=HELD_OUT[0],
        eval_end=HELD_OUT[1],
        total_timesteps=4096,
        hyperparameters={"n_steps": 256, "learning_rate": 0.0003},
        seed=7,
        step_s=0.1,
        episode_steps=300,
    )
    values.update(overrides)
    return RunSpec(**values).as_json()


def version(
    name: str,
    number: int,
    status: str,
    *,
    agent_pnl: float = 1.2,
    edge: tuple[float, float] = (0.4, 2.8),
    parent: RLModel | None = None,
    promoted_at: datetime | None = None,
    promoted_by: Any = None,
    curves: list[list[float]] | None = None,
    **spec: Any,
) -> RLModel:
    """A trained, evaluated version with a real artifact the registry can verify and load."""
    path = artifact_dir(name=name, version=number) / "model.zip"
    path.parent.mkdir(parents=True, exist_ok=True)
    sha = save_artifact(build_policy(algorithm="PPO", n_markets=1), path, algorithm="PPO")
    model = RLModel.objects.create(
        name=name,
        version=number,
        algorithm="PPO",
        status=status,
        markets=[MARKET],
        hyperparameters={"n_steps": 256, "learning_rate": 0.0003, "_spec": spec_json(name, **spec)},
        metrics=held_out_metrics(agent_pnl, edge),
        progress={"timesteps": 4096, "total_timesteps": 4096, "fraction": 1.0},
        artifact_path=str(path),
        artifact_sha256=sha,
        parent=parent,
        trained_at=timezone.now(),
        promoted_at=promoted_at,
        promoted_by=promoted_by,
    )
    for i, curve in enumerate(curves or [[1.0, 1.004, 0.998, 1.01], [1.0, 0.996, 1.002, 1.006]]):
        TradingEpisode.objects.create(
            model=model,
            mode="evaluation",
            markets=[MARKET],
            started_at=HELD_OUT[0] + timedelta(minutes=10 * i),
            ended_at=HELD_OUT[0] + timedelta(minutes=10 * i + 1),
            steps=len(curve) - 1,
            total_return=curve[-1] - 1,
            max_drawdown=0.006,
            equity_curve=curve,
        )
    return model


def write_learning_curve(model: RLModel, points: list[tuple[int, float]]) -> Path:
    """TensorBoard scalars as SB3 writes them (torch's SummaryWriter), in the version's run."""
    from torch.utils.tensorboard import SummaryWriter

    folder = tensorboard_dir(name=model.name, version=model.version) / "PPO_1"
    writer = SummaryWriter(log_dir=str(folder))
    for step, value in points:
        writer.add_scalar("rollout/ep_rew_mean", value, step)
    writer.close()
    return folder


def model_dir() -> Path:
    return Path(settings.MODEL_DIR)
