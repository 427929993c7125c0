"""Fixtures for the registry tests: recorded history in the tables and small trained models."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from django.utils import timezone

from apps.marketdata.models import (
    OrderbookDelta,
    OrderbookSnapshot,
    RecordingConnection,
    RecordingEvent,
)
from apps.training import selectors
from apps.training.spec import RunSpec
from tests.marketdata.exchange_support import make_exchange, run
from tests.simulation.test_history import TableSink, record


def record_history(markets: int = 2, min_deltas: int = 6000) -> list[str]:
    """Record a real stream from the local exchange into the tables; returns the tickers."""
    exchange = make_exchange(markets=markets, rate=3000, seed=11)
    sink = TableSink()
    run(record(exchange, sink, min_deltas), timeout_s=60)
    snaps, deltas, events = sink.rows()
    for connection_id in sink.connections:
        RecordingConnection.objects.create(
            id=connection_id, exchange="local", ws_url="ws://local", opened_at=timezone.now()
        )
    OrderbookSnapshot.objects.bulk_create(snaps)
    OrderbookDelta.objects.bulk_create(deltas, batch_size=5000)
    RecordingEvent.objects.bulk_create(events)
    return exchange.tickers()


def small_spec(markets: list[str], **overrides) -> RunSpec:
    first, last = selectors.recorded_span(markets)
    (ts, te), (es, ee) = selectors.split_windows(first, last, train_share=0.6)
    values = dict(
        name="tiny",
        algorithm="PPO",
        markets=markets,
        train_start=ts,
        train_end=te,
        eval_start=es,
        eval_end=ee,
        total_timesteps=512,
        hyperparameters={"n_steps": 128, "batch_size": 64, "n_epochs": 2},
        seed=3,
        step_s=0.02,
        episode_steps=20,
        eval_episodes=2,
    )
    values.update(overrides)
    return RunSpec(**values)


@pytest.fixture
def recorded_markets(db) -> list[str]:
    return record_history()


NOW = datetime(2026, 11, 1, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _promotion_gate_statistics_off(settings) -> None:  # type: ignore[no-untyped-def]
    """These tests train tiny models on seconds of synthetic data, which cannot show an edge;
    they exercise promotion mechanics, so the statistical gate is off here. The gate's own
    tests (test_promotion_gate.py) turn it on explicitly."""
    settings.RL_PROMOTION_REQUIRE_EDGE = False
