"""A small but complete world for the operations surface: a recorded market with a book, a
model with a parent, episodes with equity curves, logged decisions and worker heartbeats."""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

import pytest
from django.test import RequestFactory
from django.utils import timezone

from apps.dashboard.throttling import FailedLoginThrottle
from apps.marketdata.models import OrderbookDelta, OrderbookSnapshot, RecordingConnection
from apps.trading.models import TradingAction
from apps.training.models import RLModel, TradingEpisode
from apps.workers.services import report_worker_status, worker_name

STAFF_PASSWORD = "staff-password-123"
# Recognisable fake Kalshi credentials: no response, message or log may ever show them.
KEY_ID = "H8-KALSHI-KEY-ID-5b0e7c1d"
PRIVATE_KEY = (
    "-----BEGIN PRIVATE KEY-----\nH8PRIVATEKEYBODYc2VjcmV0LXNlY3JldA==\n-----END PRIVATE KEY-----"
)
SECRET_MARKERS = (KEY_ID, "H8PRIVATEKEYBODY", "BEGIN PRIVATE KEY")


@dataclass
class World:
    market: str
    connection: RecordingConnection
    parent: RLModel
    model: RLModel
    evaluation: TradingEpisode
    paper: TradingEpisode
    start: datetime


def make_world(market: str = "H8-TEST-MKT") -> World:
    now = timezone.now()
    start = now - timedelta(minutes=5)
    connection = RecordingConnection.objects.create(
        id=uuid.uuid4(),
        exchange="local",
        ws_url="ws://127.0.0.1:1/trade-api/ws/v2",
        markets=[market],
        host=socket.gethostname(),
        pid=os.getpid(),  # this process also sends the ingest heartbeat: "recording"
        opened_at=start,
    )
    OrderbookSnapshot.objects.create(
        connection=connection,
        market_ticker=market,
        sid=1,
        seq=1,
        yes_levels=[[4000, 500], [4400, 1000]],
        no_levels=[[5000, 300], [5300, 700]],
        received_at=start,
        source="ws",
        as_of_sid=1,
        as_of_seq=1,
    )
    OrderbookDelta.objects.create(
        connection=connection,
        market_ticker=market,
        sid=1,
        seq=2,
        side="yes",
        price_e4=4500,
        delta_e2=200,
        received_at=start + timedelta(seconds=1),
    )
    parent = RLModel.objects.create(
        name="h8agent",
        version=1,
        algorithm="PPO",
        status="retired",
        markets=[market],
        metrics={"evaluation": {"mean_return": 0.01, "sharpe": 0.5}},
    )
    model = RLModel.objects.create(
        name="h8agent",
        version=2,
        algorithm="PPO",
        status="active",
        markets=[market],
        parent=parent,
        metrics={"evaluation": {"mean_return": 0.02, "sharpe": 1.5}, "beats_no_trading": True},
    )
    curve = [1.0, 1.01, 1.03, 0.99, 1.02, 1.05, 1.01, 1.06]
    evaluation = TradingEpisode.objects.create(
        model=model,
        mode="evaluation",
        markets=[market],
        started_at=start,
        ended_at=start + timedelta(minutes=1),
        steps=len(curve) - 1,
        total_return=0.06,
        sharpe=float("nan"),
        max_drawdown=0.0388,
        win_rate=0.57,
        fees_paid_e4=1200,
        equity_curve=curve,
    )
    paper = TradingEpisode.objects.create(
        model=model,
        mode="paper",
        markets=[market],
        started_at=start + timedelta(minutes=2),
        steps=3,
        equity_curve=[1.0, 1.002, 0.998, 1.004],
    )
    for step in range(3):
        TradingAction.objects.create(
            episode=paper,
            step=step,
            time=start + timedelta(minutes=2, seconds=step),
            market_ticker=market,
            action_id=1 + step,
            action_type="buy_yes" if step < 2 else "hold",
            action_size=1 if step < 2 else 0,
            mask_bits=0b111,
            price_e4=4600 if step < 2 else None,
            quantity_filled_e2=100 if step < 2 else 0,
            fee_e4=70 if step < 2 else 0,
            position_after_e2=100 * min(step + 1, 2),
            cash_after_e4=1_000_000 - 4670 * min(step + 1, 2),
            reward=0.001 * (step - 1),
            model_version=2,
        )
    report_worker_status(
        name=worker_name(kind="ingest", label="h8"),
        kind="ingest",
        started_at=now,
        counters={
            "client": {"messages": 1234, "deltas": 1000, "gaps": 1, "resyncs": 1, "reconnects": 0},
            "writer": {"rows_written": 1200, "queue_depth": 3, "spilled_rows": 0},
        },
        problems=[],
    )
    report_worker_status(
        name=worker_name(kind="paper", label="h8"),
        kind="paper",
        started_at=now,
        counters={
            "model": {"name": "h8agent", "version": 2, "algorithm": "PPO"},
            "decisions": 3,
            "pnl_dollars": 0.42,
            "positions": {market: 2.0},
            "kill_switch": {"engaged": False, "reason": ""},
            "reloads": 0,
        },
        problems=[],
    )
    return World(market, connection, parent, model, evaluation, paper, start)


@pytest.fixture
def world(db) -> World:  # type: ignore[no-untyped-def]
    return make_world()


@pytest.fixture
def staff_user(django_user_model):  # type: ignore[no-untyped-def]
    return django_user_model.objects.create_user(
        "h8staff", password=STAFF_PASSWORD, is_staff=True, is_superuser=True
    )


@pytest.fixture
def staff_client(client, staff_user):  # type: ignore[no-untyped-def]
    client.force_login(staff_user)
    return client


# The client addresses the tests authenticate from (Django's test client: 127.0.0.1).
TEST_ADDRESSES = ("127.0.0.1", "10.0.0.2", "10.0.0.3")


@pytest.fixture(autouse=True)
def _forget_failed_logins() -> None:
    """Failed passwords are counted per address in a cache that outlives a test (Redis):
    start each test with none, so earlier tests (or runs) cannot throttle it."""
    throttle = FailedLoginThrottle()
    for address in TEST_ADDRESSES:
        request = RequestFactory().get("/", REMOTE_ADDR=address)
        throttle.cache.delete(throttle.get_cache_key(request))
