"""PPO training speed on KalshiTradingEnv (10 markets) against the same PPO on a zero-cost env,
and with 8 envs per forward pass against one.

Run by hand:  .venv/bin/python benchmarks/bench_train.py [--timesteps 8192]

The zero-cost env has identical observation and action spaces and returns a constant
observation, so the difference is the env's own cost. Targets: our fps >= 0.8x the zero-cost
fps (the env costs at most a fifth of training time), and 8 envs (the trainer's
``make_train_env``: one precomputed history, ``DummyVecEnv``) >= 3x the single-env fps with the
same rollout size. CartPole-v1 fps is printed for reference. Ends with one JSON line of figures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "kalshiflow_site.settings")

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import VecEnv

from apps.simulation.env import EnvConfig, KalshiTradingEnv
from apps.simulation.features import N_FEATURES
from apps.simulation.synthetic import synthetic_history
from apps.training.trainer import make_train_env

HYPERPARAMETERS = {"n_steps": 1024, "batch_size": 256, "n_epochs": 4}


class ZeroCostEnv(gym.Env):
    """Same spaces as the 10-market env; every step costs next to nothing."""

    def __init__(self, n_markets: int, episode_steps: int) -> None:
        self.observation_space = gym.spaces.Box(-1.0, 1.0, shape=(N_FEATURES,), dtype=np.float32)
        self.action_space = gym.spaces.MultiDiscrete([30] * n_markets)
        self._obs = np.zeros(N_FEATURES, dtype=np.float32)
        self._steps = 0
        self._episode_steps = episode_steps

    def reset(self, *, seed=None, options=None):  # type: ignore[no-untyped-def]
        super().reset(seed=seed)
        self._steps = 0
        return self._obs.copy(), {}

    def step(self, action):  # type: ignore[no-untyped-def]
        self._steps += 1
        return self._obs.copy(), 0.0, False, self._steps >= self._episode_steps, {}


def make_model(env: gym.Env | VecEnv, n_envs: int = 1) -> PPO:
    # The same rollout size whatever the number of envs: n_steps is per env in SB3.
    hp = {**HYPERPARAMETERS, "n_steps": HYPERPARAMETERS["n_steps"] // n_envs}
    model = PPO("MlpPolicy", env, seed=0, device="cpu", verbose=0, **hp)
    model.learn(total_timesteps=HYPERPARAMETERS["n_steps"])  # warm-up: first allocations
    return model


def fps(model: PPO, timesteps: int) -> float:
    started = time.perf_counter()
    model.learn(total_timesteps=timesteps, reset_num_timesteps=False)
    return timesteps / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timesteps", type=int, default=4096, help="per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    history = synthetic_history(markets=10, ticks=5_000, untrusted_share=0.02, seed=1)
    kalshi = KalshiTradingEnv(history, config=EnvConfig(episode_steps=300))
    spec = SimpleNamespace(episode_steps=300, n_envs=8, seed=0)
    models = {
        "ours": make_model(kalshi),
        "ours_8_envs": make_model(make_train_env(history, spec), n_envs=8),
        "zero": make_model(ZeroCostEnv(10, 300)),
        "cartpole": make_model(gym.make("CartPole-v1")),
    }
    # Interleaved rounds, best of each: the machine is shared, and load that comes and goes
    # must not land on one side of the ratio only.
    best = dict.fromkeys(models, 0.0)
    for _ in range(args.rounds):
        for name, model in models.items():
            best[name] = max(best[name], fps(model, args.timesteps))
    ours, zero, cartpole = best["ours"], best["zero"], best["cartpole"]
    ratio = ours / zero
    eight = best["ours_8_envs"]
    print(f"PPO fps, KalshiTradingEnv 10 markets: {ours:8.0f}")
    print(f"PPO fps, zero-cost env (same spaces): {zero:8.0f}")
    print(f"PPO fps, CartPole-v1 (reference):     {cartpole:8.0f}")
    print(f"PPO fps, 8 envs per forward pass:     {eight:8.0f}")
    print(f"ratio ours / zero-cost: {ratio:.2f}x (target >= 0.8x)")
    print(f"ratio 8 envs / 1 env:   {eight / ours:.2f}x (target >= 3x)")
    print(
        json.dumps(
            {
                "bench": "train",
                "timesteps_per_round": args.timesteps,
                "rounds": args.rounds,
                "kalshi_10_markets_fps": round(ours, 1),
                "zero_cost_fps": round(zero, 1),
                "cartpole_fps": round(cartpole, 1),
                "ratio_vs_zero_cost": round(ratio, 3),
                "kalshi_10_markets_8_envs_fps": round(eight, 1),
                "ratio_8_envs_vs_1": round(eight / ours, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
