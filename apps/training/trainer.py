"""Training and evaluating one agent on recorded history (no Django: the task wraps this).

Observations are already normalised into [-1, 1] by ``build_observation``, so no running
normalisation statistics (VecNormalize) exist to save or freeze: the artifact alone is the
policy, and the paper trader feeds it the very same features.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from django.conf import settings
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv

from apps.simulation.env import EnvConfig, KalshiTradingEnv
from apps.simulation.history import RecordedHistory
from apps.simulation.metrics import METRICS as METRIC_NAMES
from apps.training.artifacts import algorithm_class, load_verified, save_artifact
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


class TrainingPruned(TrainingCancelled):
    """A study's pruner stopped the run on an intermediate held-out evaluation."""


@dataclass
class TrainOutcome:
    artifact_path: Path
    artifact_sha256: str
    metrics: dict[str, Any]
    agent_episodes: list[EpisodeResult]
    baseline_episodes: dict[str, list[EpisodeResult]]


class CancelCheck:
    """``should_stop()`` asked at most every ``every_s`` (it reads the database); once it
    said yes, the answer stays yes."""

    def __init__(self, should_stop: Callable[[], bool], *, every_s: float = 2.0) -> None:
        self.should_stop = should_stop
        self.every_s = every_s
        self._last = -math.inf
        self.cancelled = False

    def __call__(self) -> bool:
        if not self.cancelled:
            now = time.monotonic()
            if now - self._last >= self.every_s:
                self._last = now
                self.cancelled = bool(self.should_stop())
        return self.cancelled

    def watch_optimizer(self, optimizer: torch.optim.Optimizer) -> Any:
        """Check before every optimiser step too: SB3's ``train()`` runs all its epochs and
        minibatches without calling back, so a rollout-only check would let a cancelled run
        finish every epoch first. The hook raises :class:`TrainingCancelled` out of
        ``learn()``; returns the hook's handle."""

        def hook(_optimizer: torch.optim.Optimizer, _args: Any, _kwargs: Any) -> None:
            if self():
                raise TrainingCancelled("the run was cancelled during optimisation")

        return optimizer.register_step_pre_hook(hook)


class ProgressCallback(BaseCallback):
    """Reports timesteps, fps, mean episode reward and losses at most every ``every_s`` and
    stops the rollout when ``cancel()`` says so."""

    def __init__(
        self,
        *,
        total_timesteps: int,
        on_progress: Callable[[dict[str, Any]], None],
        cancel: CancelCheck,
        every_s: float = 2.0,
    ) -> None:
        super().__init__()
        self.total = total_timesteps
        self.on_progress = on_progress
        self.cancel = cancel
        self.every_s = every_s
        self._last = 0.0
        self._started = time.monotonic()

    @property
    def cancelled(self) -> bool:
        return self.cancel.cancelled

    def _on_step(self) -> bool:
        now = time.monotonic()
        if now - self._last >= self.every_s:
            self._last = now
            self.on_progress(self.snapshot())
        return not self.cancel()

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


class CheckpointCallback(BaseCallback):
    """Every ``every`` timesteps, the policy as ``<folder>/step_<n>.zip`` in the artifact
    format (tensors and a manifest: never SB3's pickled ``model.save``)."""

    def __init__(self, *, every: int, folder: Path, algorithm: str) -> None:
        super().__init__()
        self.every = every
        self.folder = folder
        self.algorithm = algorithm

    def _on_step(self) -> bool:
        if self.n_calls % self.every == 0:
            path = self.folder / f"step_{self.num_timesteps}.zip"
            save_artifact(self.model.policy, path, algorithm=self.algorithm)
        return True


class HeldOutCallback(BaseCallback):
    """Every ``every`` timesteps, the current policy (deterministic) on the held-out start
    ticks; ``report(timesteps, agent metrics)`` says whether to stop (a study's pruner)."""

    def __init__(
        self,
        *,
        every: int,
        eval_env: KalshiTradingEnv,
        starts: list[int],
        masked: bool,
        report: Callable[[int, dict[str, Any]], bool],
    ) -> None:
        super().__init__()
        self.every, self.eval_env, self.starts, self.masked = every, eval_env, starts, masked
        self.report = report
        self.pruned = False
        self._next = every

    def _on_step(self) -> bool:
        if self.num_timesteps < self._next:
            return True
        self._next = self.num_timesteps + self.every
        policy = agent_policy(self.model, masked=self.masked)
        results = [run_episode(self.eval_env, policy, start_tick=s) for s in self.starts]
        self.pruned = bool(self.report(int(self.num_timesteps), summarize(results)))
        return not self.pruned


def agent_policy(agent: Any, *, masked: bool) -> Callable[[np.ndarray, KalshiTradingEnv], Any]:
    """A deterministic policy of ``agent`` for :func:`run_episode` (with action masks for
    MaskablePPO)."""

    def policy(obs: np.ndarray, env: KalshiTradingEnv) -> np.ndarray:
        if masked:
            action, _ = agent.predict(obs, deterministic=True, action_masks=env.action_masks())
        else:
            action, _ = agent.predict(obs, deterministic=True)
        return action

    return policy


def new_model(
    spec: RunSpec, env: Any, *, tensorboard_dir: Path, parent_policy: Any | None = None
) -> Any:
    """The algorithm for ``spec`` on ``env`` with this run's hyperparameters; when
    fine-tuning, its policy starts from ``parent_policy``'s weights (a policy that
    :func:`~apps.training.artifacts.load_verified` rebuilt: no SB3 ``.load()``)."""
    cls = algorithm_class(spec.algorithm)
    kwargs = {"seed": spec.seed, "verbose": 0, "tensorboard_log": str(tensorboard_dir)}
    model = cls("MlpPolicy", env, device="cpu", **kwargs, **spec.hyperparameters)
    if parent_policy is not None:
        model.policy.load_state_dict(parent_policy.state_dict(), strict=True)
    return model


def log_heldout(logger: Any, metrics: dict[str, Any], *, step: int) -> None:
    """The held-out evaluation as TensorBoard scalars beside SB3's, at the last training step:
    ``heldout/<policy>/<metric>`` with ``.../<metric>_ci_low`` and ``_ci_high`` for the agent and
    every baseline, and ``heldout/agent_minus_no_trading/...`` (the promotion gate's figure)."""
    policies = {"agent": metrics["evaluation"], **metrics["baselines"]}
    for policy, values in policies.items():
        for name in (*METRIC_NAMES, "round_trips"):
            value = values.get(name)
            if value is not None:
                logger.record(f"heldout/{policy}/{name}", float(value))
            low, high = values.get(f"{name}_ci") or (None, None)
            if low is not None and high is not None:
                logger.record(f"heldout/{policy}/{name}_ci_low", float(low))
                logger.record(f"heldout/{policy}/{name}_ci_high", float(high))
    versus = metrics["versus_no_trading"]
    if versus["difference"] is not None:
        prefix = f"heldout/agent_minus_no_trading/{versus['metric']}"
        logger.record(prefix, float(versus["difference"]))
        low, high = versus["ci"]
        if low is not None:
            logger.record(f"{prefix}_ci_low", float(low))
            logger.record(f"{prefix}_ci_high", float(high))
    logger.dump(step)


def make_env(history: RecordedHistory, spec: RunSpec, **config: Any) -> KalshiTradingEnv:
    # The account precision the paper trader uses too (RL_ACCOUNT_PRECISION_E4).
    config.setdefault("account_precision_e4", settings.RL_ACCOUNT_PRECISION_E4)
    return KalshiTradingEnv(history, config=EnvConfig(episode_steps=spec.episode_steps, **config))


def make_train_env(history: RecordedHistory, spec: RunSpec) -> DummyVecEnv:
    """``spec.n_envs`` envs stepped together, one policy forward pass for all of them.

    In-process (``DummyVecEnv``): a step of the compiled env costs microseconds, so the gain
    is the batched forward pass, not parallel stepping. The envs share one precomputed
    history (:meth:`KalshiTradingEnv.spawn`); env ``i`` is seeded ``spec.seed + i``.
    """
    first = make_env(history, spec)
    envs = [first, *(first.spawn() for _ in range(int(spec.n_envs) - 1))]
    vec = DummyVecEnv([lambda env=env: Monitor(env) for env in envs])
    vec.seed(spec.seed)
    return vec


def train_and_evaluate(
    spec: RunSpec,
    *,
    train_history: RecordedHistory,
    eval_history: RecordedHistory,
    out_dir: Path,
    tensorboard_dir: Path,
    on_progress: Callable[[dict[str, Any]], None],
    should_stop: Callable[[], bool],
    parent_policy: Any | None = None,
    check_every_s: float = 2.0,
    on_evaluation: Callable[[int, dict[str, Any]], bool] | None = None,
    evaluate_every: int = 0,
) -> TrainOutcome:
    """Train ``spec`` on ``train_history``, save the artifact, evaluate on ``eval_history``.

    ``parent_policy`` (fine-tuning) is a verified, loaded policy of the parent version.
    ``should_stop`` is asked at most every ``check_every_s`` during rollouts and between
    optimisation steps; when it says yes, :class:`TrainingCancelled` is raised. With
    ``evaluate_every`` and ``on_evaluation``, the policy is evaluated on the held-out ticks
    every ``evaluate_every`` timesteps and ``on_evaluation(timesteps, metrics)`` may stop the
    run (:class:`TrainingPruned`)."""
    torch.set_num_threads(1)  # determinism (and fairness on a shared 2-core machine)
    out_dir.mkdir(parents=True, exist_ok=True)
    env = make_train_env(train_history, spec)
    # Fine-tuning starts from the parent's weights with this run's hyperparameters (a fresh
    # optimizer: the artifact holds the policy's tensors only).
    model = new_model(spec, env, tensorboard_dir=tensorboard_dir, parent_policy=parent_policy)
    cancel = CancelCheck(should_stop, every_s=check_every_s)
    cancel.watch_optimizer(model.policy.optimizer)
    progress = ProgressCallback(
        total_timesteps=spec.total_timesteps, on_progress=on_progress, cancel=cancel
    )
    callbacks: list[BaseCallback] = [progress]
    eval_env = make_env(eval_history, spec)
    starts = evaluation_starts(eval_env, spec.eval_episodes)
    masked = spec.algorithm == "MaskablePPO"
    heldout = None
    if on_evaluation is not None and evaluate_every > 0:
        heldout = HeldOutCallback(
            every=evaluate_every,
            eval_env=eval_env,
            starts=starts,
            masked=masked,
            report=on_evaluation,
        )
        callbacks.append(heldout)
    if spec.checkpoint_every:
        callbacks.append(
            CheckpointCallback(
                every=spec.checkpoint_every,
                folder=out_dir / "checkpoints",
                algorithm=spec.algorithm,
            )
        )
    model.learn(
        total_timesteps=spec.total_timesteps,
        callback=CallbackList(callbacks),
        tb_log_name=spec.algorithm,
    )
    if progress.cancelled:
        raise TrainingCancelled("the run was cancelled")
    if heldout is not None and heldout.pruned:
        raise TrainingPruned(f"pruned at {model.num_timesteps} timesteps")
    on_progress(progress.snapshot())
    artifact = out_dir / "model.zip"
    sha = save_artifact(model.policy, artifact, algorithm=spec.algorithm)
    # Evaluate the saved artifact (not the in-memory model), loaded as the paper trader will.
    agent = load_verified(
        path=artifact,
        sha256=sha,
        algorithm=spec.algorithm,
        n_markets=len(spec.markets),
        root=out_dir,
    )
    policy = agent_policy(agent, masked=masked)
    agent_results = [run_episode(eval_env, policy, start_tick=s) for s in starts]
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
    log_heldout(model.logger, metrics, step=model.num_timesteps)
    return TrainOutcome(artifact, sha, metrics, agent_results, baselines)
