"""Helpers for the paper-trading tests: real SB3 artifacts in the registry, a local exchange
that trusts the development key, and the trader in a background thread."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import torch
from django.conf import settings

from apps.marketdata.exchange import (
    ApiKey,
    ExchangeConfig,
    FaultConfig,
    LocalExchange,
    MarketDataSource,
    SyntheticConfig,
    SyntheticSource,
    ensure_dev_keys,
)
from apps.simulation.actions import ACTIONS_PER_MARKET
from apps.simulation.env import EnvConfig, KalshiTradingEnv
from apps.simulation.synthetic import synthetic_history
from apps.trading.services import PaperResult, run_paper_trading
from apps.training.artifacts import algorithm_class, save_artifact
from apps.training.models import ModelStatus, RLModel
from apps.training.spec import RunSpec

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def policy_model(
    n_markets: int, *, algorithm: str = "PPO", seed: int = 0, always: int | None = None
):
    """A real SB3 model for ``n_markets`` markets (untrained). With ``always``, its action
    head is set so that the deterministic action is ``always`` in every market (when allowed)."""
    env = KalshiTradingEnv(
        synthetic_history(markets=n_markets, ticks=50), config=EnvConfig(episode_steps=10)
    )
    model = algorithm_class(algorithm)("MlpPolicy", env, seed=seed, device="cpu", n_steps=64)
    if always is not None:
        head = model.policy.action_net
        with torch.no_grad():
            head.weight.zero_()
            head.bias.fill_(-10.0)
            for j in range(n_markets):
                head.bias[j * ACTIONS_PER_MARKET + always] = 10.0
    return model


def register(
    markets: list[str],
    *,
    name: str = "paper",
    algorithm: str = "PPO",
    seed: int = 0,
    always: int | None = None,
    step_s: float = 0.05,
    episode_steps: int = 50,
    status: str = ModelStatus.READY,
) -> RLModel:
    """Save a real artifact and register it as the next version of ``name``."""
    version = RLModel.objects.filter(name=name).count() + 1
    folder = Path(settings.MODEL_DIR) / name / f"v{version}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.zip"
    model = policy_model(len(markets), algorithm=algorithm, seed=seed, always=always)
    sha256 = save_artifact(model.policy, path, algorithm=algorithm)
    spec = RunSpec(
        name=name,
        algorithm=algorithm,
        markets=list(markets),
        train_start=T0,
        train_end=T0 + timedelta(hours=1),
        eval_start=T0 + timedelta(hours=1),
        eval_end=T0 + timedelta(hours=2),
        step_s=step_s,
        episode_steps=episode_steps,
    )
    return RLModel.objects.create(
        name=name,
        version=version,
        algorithm=algorithm,
        status=status,
        hyperparameters={"_spec": spec.as_json()},
        markets=list(markets),
        artifact_path=str(path),
        artifact_sha256=sha256,
    )


def dev_key_exchange(
    *,
    markets: int = 3,
    rate: float = 400.0,
    seed: int = 5,
    source: MarketDataSource | None = None,
    faults: FaultConfig | None = None,
    **config: Any,
) -> LocalExchange:
    """A local exchange that trusts the development key the trader signs with."""
    keys = ensure_dev_keys(Path(settings.LOCAL_EXCHANGE_KEY_DIR), announce=lambda *_: None)
    return LocalExchange(
        ExchangeConfig(
            keys=(ApiKey(public_key=keys.public_key_path, key_id=keys.key_id),),
            faults=faults or FaultConfig(),
            **config,
        ),
        source=source or SyntheticSource(SyntheticConfig(markets=markets, rate=rate, seed=seed)),
    )


class TraderThread:
    """``run_paper_trading`` in a background thread (no signal handlers there)."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("progress", lambda line: None)
        kwargs.setdefault("warmup_s", 10.0)
        self.kwargs = kwargs
        self.stop_event = threading.Event()
        self.result: PaperResult | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._main, daemon=True)

    def _main(self) -> None:
        from django.db import connections

        try:
            self.result = run_paper_trading(
                stop_event=self.stop_event, install_signal_handlers=False, **self.kwargs
            )
        except BaseException as exc:
            self.error = exc
        finally:
            connections.close_all()

    def start(self) -> TraderThread:
        self.thread.start()
        return self

    def join(self, timeout_s: float = 60.0) -> PaperResult:
        self.thread.join(timeout_s)
        assert not self.thread.is_alive(), "the trader did not stop"
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result

    def stop(self, timeout_s: float = 60.0) -> PaperResult:
        self.stop_event.set()
        return self.join(timeout_s)
