"""The pipeline learns: on a market with a strong planted lead-lag edge, a briefly trained agent
beats no trading on held-out time, with the whole 95 % interval above zero.

The fast version of ``benchmarks/bench_learn.py`` (which goes through the recorder, the tables
and a Celery worker, and also checks the no-edge side): here the planted books come straight
from :func:`planted_history`, and the trainer's own ``train_and_evaluate`` trains and evaluates.
The held-out window is later time of the same world, never seen in training; the observation
holds only the books (the oracle's knowledge of the process is nowhere in it).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from apps.simulation.planted import PlantedConfig, planted_history
from apps.training.spec import RunSpec, validate_spec
from apps.training.trainer import train_and_evaluate

pytestmark = pytest.mark.slow

# A strong edge: a 20-cent jump every 5 s on average, the follower 4 s behind (4 ticks to act,
# 15 cents of it left after the spread and both fees).
STRONG = PlantedConfig(seed=2, jump_cents=20, mean_gap_s=5.0, lag_s=4.0)
TICKS, TRAIN_SHARE = 6_000, 0.7


def _utc(ns: int) -> datetime:
    return datetime.fromtimestamp(ns / 1e9, UTC)


def test_a_briefly_trained_agent_beats_no_trading_on_heldout_planted_time(tmp_path: Path) -> None:
    history = planted_history(STRONG, ticks=TICKS, step_s=1.0)
    times = history.times_ns
    cut = int(times[int(TICKS * TRAIN_SHARE)])
    train = history.window(int(times[0]), cut)
    heldout = history.window(cut, int(times[-1]) + 1)
    assert train.times_ns[-1] < heldout.times_ns[0]  # held-out time is never trained on
    spec = validate_spec(
        RunSpec(
            name="planted",
            algorithm="MaskablePPO",
            markets=list(STRONG.tickers),
            train_start=_utc(int(times[0])),
            train_end=_utc(cut),
            eval_start=_utc(cut),
            eval_end=_utc(int(times[-1]) + 1),
            total_timesteps=8_192,
            hyperparameters={
                "n_steps": 64,
                "batch_size": 256,
                "n_epochs": 10,
                "gamma": 0.8,
                "gae_lambda": 0.9,
                "learning_rate": 0.001,
            },
            seed=0,
            episode_steps=200,
            eval_episodes=6,
            n_envs=8,
        )
    )
    outcome = train_and_evaluate(
        spec,
        train_history=train,
        eval_history=heldout,
        out_dir=tmp_path / "model",
        tensorboard_dir=tmp_path / "tb",
        on_progress=lambda _p: None,
        should_stop=lambda: False,
    )
    metrics = outcome.metrics
    versus = metrics["versus_no_trading"]
    assert versus["ci"][0] > 0, (versus, metrics["evaluation"])
    assert metrics["beats_no_trading"]
    assert metrics["evaluation"]["round_trips"] > 10  # it trades the edge, not one lucky bet
