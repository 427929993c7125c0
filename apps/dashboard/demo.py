"""The end-to-end demo, step by step: exchange -> record -> history -> train -> promote.

Each step is a function the ``demo`` command calls and reports; nothing here is demo-only
logic: every step goes through the same services a user would call.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from django.conf import settings
from django.db.models import Count

from apps.marketdata.exchange import (
    ApiKey,
    ExchangeConfig,
    LocalExchange,
    SyntheticConfig,
    SyntheticSource,
    ensure_dev_keys,
)
from apps.marketdata.exchange.planted import PlantedSource
from apps.marketdata.exchange.planted_world import PlantedConfig
from apps.marketdata.ingest import IngestOptions, IngestResult, run_ingest
from apps.marketdata.models import (
    OrderbookDelta,
    OrderbookSnapshot,
    PublicTrade,
    RecordingConnection,
    RecordingEvent,
)
from apps.simulation.env import EnvConfig, KalshiTradingEnv, traded_count
from apps.simulation.loader import load
from apps.training import selectors, services
from apps.training.dispatch import worker_status
from apps.training.models import ModelStatus, RLModel
from apps.training.spec import RunSpec

Say = Callable[[str], None]


# The demo's planted world (README, "Proof that the pipeline learns"): the leader's fair value
# jumps 15 cents every 0.8 s on average and the follower's makers requote 0.5 s later, so an
# agent sampling the books every 0.1 s has 5 ticks to buy (or sell) the follower before it
# moves. That is the edge the demo's agent is meant to find; nothing in its observation says
# which market leads.
DEMO_PLANTED = {"jump_cents": 15, "mean_gap_s": 0.8, "lag_s": 0.5}
# Trainer settings that learn this edge in about 30,000 steps (benchmarks/bench_learn.py):
# many small updates over 8 envs and a horizon of about ten steps (gamma 0.9), where SB3's
# defaults (14 updates in 30,000 steps, gamma 0.99) do not.
PLANTED_HYPERPARAMETERS = {
    "n_steps": 64,
    "batch_size": 256,
    "n_epochs": 10,
    "gamma": 0.9,
    "learning_rate": 0.001,
}
SYNTHETIC_HYPERPARAMETERS = {"n_steps": 512, "batch_size": 128, "n_epochs": 4}


def local_exchange(*, world: str, markets: int, rate: float, seed: int, say: Say) -> LocalExchange:
    """The bundled exchange serving the planted lead-lag world (two markets) or ``markets``
    synthetic random-walk markets."""
    keys = ensure_dev_keys(Path(settings.LOCAL_EXCHANGE_KEY_DIR), announce=say)
    if world == "planted":
        source: SyntheticSource = PlantedSource(PlantedConfig(seed=seed, **DEMO_PLANTED), rate=rate)
    else:
        source = SyntheticSource(SyntheticConfig(markets=markets, rate=rate, seed=seed))
    return LocalExchange(
        ExchangeConfig(keys=(ApiKey(public_key=keys.public_key_path, key_id=keys.key_id),)),
        source=source,
    )


def record(*, url: str, seconds: float, say: Say) -> IngestResult:
    return run_ingest(
        IngestOptions(ws_url=url, exchange="local", duration_s=seconds, snapshot_interval_s=10),
        progress=lambda line: say(f"  {line}"),
    )


def table_counts() -> dict[str, int]:
    return {
        model._meta.db_table: model.objects.count()
        for model in (
            RecordingConnection,
            OrderbookSnapshot,
            OrderbookDelta,
            PublicTrade,
            RecordingEvent,
        )
    }


def deltas_by_market() -> dict[str, int]:
    return dict(
        OrderbookDelta.objects.order_by().values_list("market_ticker").annotate(n=Count("id"))
    )


@dataclass
class EpisodeSummary:
    ticks: int
    steps: int
    total_return: float
    fees_dollars: float
    trades: int
    quality: dict[str, dict[str, int]]


def random_episode(
    *, markets: list[str], start: datetime, end: datetime, step_s: float, seed: int
) -> EpisodeSummary:
    """Load the recorded window into arrays and run one seeded random-policy episode."""
    history = load(markets, start, end, step_s=step_s, use_cache=False, progress=False)
    steps = max(2, min(200, history.n_ticks - 2))
    env = KalshiTradingEnv(history, config=EnvConfig(episode_steps=steps))
    env.reset(seed=seed)
    env.action_space.seed(seed)
    rng = np.random.default_rng(seed)
    trades = 0
    done = False
    info: dict[str, Any] = {}
    while not done:
        # A random policy that respects the masks (what MaskablePPO would be allowed to do).
        mask = env.action_masks().reshape(env.n_markets, -1)
        action = np.array([rng.choice(np.flatnonzero(row)) for row in mask])
        _, _, terminated, truncated, info = env.step(action)
        trades += traded_count(info)
        done = terminated or truncated
    return EpisodeSummary(
        ticks=history.n_ticks,
        steps=steps,
        total_return=info["equity_e6"] / env.initial_cash_e6 - 1,
        fees_dollars=info["fees_paid_e4"] / 1e4,
        trades=trades,
        quality=history.quality_report(),
    )


def train_model(
    *,
    name: str,
    markets: list[str],
    start: datetime,
    end: datetime,
    step_s: float,
    timesteps: int,
    seed: int,
    planted: bool,
) -> RLModel:
    """Train a PPO model as a Celery task (in this process when no worker answers) on the
    first 70 % of the window and evaluate it on the rest (the same services the admin and
    ``train`` use)."""
    (ts, te), (es, ee) = selectors.split_windows(start, end, train_share=0.7)
    eval_ticks = int((ee - es) / timedelta(seconds=step_s))
    episode_steps = max(2, min(100, eval_ticks // 3))
    spec = RunSpec(
        name=name,
        algorithm="PPO",
        markets=markets,
        train_start=ts,
        train_end=te,
        eval_start=es,
        eval_end=ee,
        total_timesteps=timesteps,
        hyperparameters=dict(PLANTED_HYPERPARAMETERS if planted else SYNTHETIC_HYPERPARAMETERS),
        seed=seed,
        step_s=step_s,
        episode_steps=episode_steps,
        # As many held-out episodes as fit without overlapping (overlap would count the same
        # market time twice and narrow the intervals the gate reads).
        eval_episodes=max(2, min(20, eval_ticks // (episode_steps + 1))),
        n_envs=8 if planted else 1,
    )
    # Offline there is no worker (./run serve starts one): the demo then trains in-process.
    here = not worker_status().online
    model = services.start_training_run(spec=spec, enqueue=not here)
    if here:
        services.run_training_here(model=model)
    deadline = time.monotonic() + 900
    while model.status == ModelStatus.TRAINING and time.monotonic() < deadline:
        time.sleep(0.5)
        model.refresh_from_db()
    if model.status != ModelStatus.READY:
        raise RuntimeError(f"training did not finish: {model.status} {model.error[:300]}")
    return model


def promote_or_explain(model: RLModel) -> tuple[RLModel, str]:
    """Promote ``model`` through the gate; if the gate refuses, say why and force it with a
    recorded override by the demo's admin user, so that the demo can still show the paper
    trader (paper only: the override is visible in the admin). Returns (model, refusal)."""
    try:
        return services.promote_model(model=model), ""
    except services.PromotionRefused as exc:
        refusal = str(exc)
    from django.contrib.auth import get_user_model

    user, _ = get_user_model().objects.get_or_create(username="admin")
    forced = services.promote_model(
        model=model,
        promoted_by=user,
        override_reason="demo: shows the paper trader with a model the gate refused",
    )
    return forced, refusal


def ensure_demo_admin(*, username: str = "admin") -> tuple[str, str, bool]:
    """A superuser for the admin and the live page.

    The password comes from ``DEMO_ADMIN_PASSWORD`` when set (and is then not printed);
    otherwise a fresh one is generated on every run and returned for the demo to print.
    Returns (username, password, password_was_generated).
    """
    import os
    import secrets

    from django.contrib.auth import get_user_model

    password = os.environ.get("DEMO_ADMIN_PASSWORD", "")
    generated = not password
    if generated:
        password = secrets.token_urlsafe(12)
    user_model = get_user_model()
    user, _ = user_model.objects.get_or_create(username=username)
    user.is_staff = True
    user.is_superuser = True
    user.set_password(password)
    user.save()
    return username, password, generated
