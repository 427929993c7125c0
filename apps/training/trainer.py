"""Training and evaluating one agent on recorded history (no Django: the task wraps this).

Observations are already normalised into [-1, 1] by ``build_observation``, so no running
normalisation statistics (VecNormalize) exist to save or freeze: the artifact alone is the
policy, and the paper trader feeds it the very same features.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback, CallbackList, CheckpointCallback
from stable_baselines3.common.monitor import Monitor

from apps.simulation.env import EnvConfig, KalshiTradingEnv
from apps.simulation.history import RecordedHistory
from apps.training.artifacts import algorithm_class, sha256_of
from apps.training.evaluation import (
    EpisodeResult,
    baseline_policies,
    compare,
    evaluation_starts,
    run_episode,
    summarize,
)
from apps.training.spec import RunSpec


class TrainingCancelled(RuntimeError):
    """The run was cancelled from the registry while it trained."""


@dataclass
class TrainOutcome:
    artifact_path: Path
    artifact_sha256: str
    metrics: dict[str, Any]
    agent_episodes: list[EpisodeResult]
    baseline_episodes: dict[str, list[EpisodeResult]]


class ProgressCallback(BaseCallback):
    """Reports timesteps, fps, mean episode reward and losses at most every ``every_s`` and
    stops training when ``should_stop()`` says so (checked at the same cadence)."""

    def __init__(
        self,
        *,
        total_timesteps: int,
        on_progress: Callable[[dict[str, Any]], None],
        should_stop: Callable[[], bool],
        every_s: float = 2.0,
    ) -> None:
        super().__init__()
        self.total = total_timesteps
        self.on_progress = on_progress
        self.should_stop = should_stop
        self.every_s = every_s
        self._last = 0.0
        self._started = time.monotonic()
        self.cancelled = False

    def _on_step(self) -> bool:
        now = time.monotonic()
        if now - self._last < self.every_s:
            return True
        self._last = now
        self.on_progress(self.snapshot())
        if self.should_stop():
            self.cancelled = True
            return False
        return True

    def snapshot(self) -> dict[str, Any]:
        elapsed = max(time.monotonic() - self._started, 1e-9)
        episodes = [e["r"] for e in self.model.ep_info_buffer] if self.model.ep_info_buffer else []
        logged = {
            k.split("/", 1)[1]: float(v)
            for k, v in self.model.logger.name_to_value.items()
            if k.startswith("train/") and isinstance(v, int | float)
        }
        return {
            "timesteps": int(self.num_timesteps),
            "total_timesteps": self.total,
            "fraction": min(1.0, self.num_timesteps / self.total),
            "fps": round(self.num_timesteps / elapsed, 1),
            "mean_episode_reward": float(np.mean(episodes)) if episodes else None,
            "losses": logged,
        }


def make_env(history: RecordedHistory, spec: RunSpec, **config: Any) -> KalshiTradingEnv:
    return KalshiTradingEnv(history, config=EnvConfig(episode_steps=spec.episode_steps, **config))


def train_and_evaluate(
    spec: RunSpec,
    *,
    train_history: RecordedHistory,
    eval_history: RecordedHistory,
    out_dir: Path,
    tensorboard_dir: Path,
    on_progress: Callable[[dict[str, Any]], None],
    should_stop: Callable[[], bool],
    parent_artifact: Path | None = None,
) -> TrainOutcome:
    """Train ``spec`` on ``train_history``, save the artifact, evaluate on ``eval_history``."""
    torch.set_num_threads(1)  # determinism (and fairness on a shared 2-core machine)
    out_dir.mkdir(parents=True, exist_ok=True)
    env = Monitor(make_env(train_history, spec))
    env.reset(seed=spec.seed)
    cls = algorithm_class(spec.algorithm)
    kwargs = {"seed": spec.seed, "verbose": 0, "tensorboard_log": str(tensorboard_dir)}
    if parent_artifact is not None:
        # Fine-tuning: start from the parent's weights with this run's hyperparameters.
        model = cls.load(parent_artifact, env=env, device="cpu", **kwargs, **spec.hyperparameters)
    else:
        model = cls("MlpPolicy", env, device="cpu", **kwargs, **spec.hyperparameters)
    progress = ProgressCallback(
        total_timesteps=spec.total_timesteps, on_progress=on_progress, should_stop=should_stop
    )
    callbacks: list[BaseCallback] = [progress]
    if spec.checkpoint_every:
        callbacks.append(
            CheckpointCallback(
                save_freq=spec.checkpoint_every,
                save_path=str(out_dir / "checkpoints"),
                name_prefix="step",
            )
        )
    model.learn(
        total_timesteps=spec.total_timesteps,
        callback=CallbackList(callbacks),
        tb_log_name=f"{spec.name}",
        reset_num_timesteps=parent_artifact is None,
    )
    if progress.cancelled:
        raise TrainingCancelled("the run was cancelled")
    on_progress(progress.snapshot())
    artifact = out_dir / "model.zip"
    model.save(artifact)
    sha = sha256_of(artifact)
    # Evaluate the saved artifact (not the in-memory model), as the paper trader will use it.
    agent = cls.load(artifact, device="cpu")
    eval_env = make_env(eval_history, spec)
    starts = evaluation_starts(eval_env, spec.eval_episodes)
    masked = spec.algorithm == "MaskablePPO"

    def agent_policy(obs: np.ndarray, env: KalshiTradingEnv) -> np.ndarray:
        if masked:
            action, _ = agent.predict(obs, deterministic=True, action_masks=env.action_masks())
        else:
            action, _ = agent.predict(obs, deterministic=True)
        return action

    agent_results = [run_episode(eval_env, agent_policy, start_tick=s) for s in starts]
    baselines = {
        name: [run_episode(eval_env, policy, start_tick=s) for s in starts]
        for name, policy in baseline_policies().items()
    }
    metrics = {
        "evaluation": summarize(agent_results),
        "baselines": {name: summarize(res) for name, res in baselines.items()},
        "training": progress.snapshot(),
        # The promotion gate's figure: agent minus no trading on the same held-out paths.
        "versus_no_trading": compare(agent_results, baselines["no_trading"]),
    }
    low = metrics["versus_no_trading"]["ci"][0]
    metrics["beats_no_trading"] = low is not None and low > 0
    return TrainOutcome(artifact, sha, metrics, agent_results, baselines)
