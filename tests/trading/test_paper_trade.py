"""The paper trader end to end on the real PostgreSQL: hot reload with a real promotion, a
corrupted artifact, the kill switch in /rl/status, SIGTERM, and live trading refused."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.db import connection, transaction

from apps.marketdata.exchange import ExchangeThread
from apps.simulation.actions import ActionType, encode
from apps.trading.models import TradingAction
from apps.trading.risk import KILL_SWITCH, RiskSettings
from apps.trading.services import PaperError, run_paper_trading
from apps.training import services as registry
from apps.training.artifacts import sha256_of
from apps.training.models import RLModel, TradingEpisode
from apps.workers.models import WorkerStatus
from kalshiflow_site.modes import LiveTradingRefused
from tests.conftest import REPO_ROOT
from tests.trading.support import TraderThread, dev_key_exchange, policy_model, register
from tests.training.artifact_support import SENTINEL_ENV, malicious_sb3_zip, pwned

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

HOLD = encode(ActionType.HOLD, 0)
BUY_1_YES = encode(ActionType.BUY_YES, 0)
BUY_5_YES = encode(ActionType.BUY_YES, 1)


def wait_until(predicate, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def versions_by_step(episode_id: int) -> list[int]:
    steps = (
        TradingAction.objects.filter(episode_id=episode_id)
        .order_by("step")
        .values_list("step", "model_version")
        .distinct()
    )
    return [version for _, version in steps]


def paper_status() -> WorkerStatus:
    return WorkerStatus.objects.get(kind="paper")


@pytest.fixture
def trader():
    """Start the trader in a thread; it is stopped at the end of the test whatever happens."""
    started: list[TraderThread] = []

    def start(url: str, **options) -> TraderThread:
        options = {"cadence_s": 0.05, "reload_check_s": 0.1, "flush_interval_s": 0.1} | options
        running = TraderThread(
            model_name="paper", ws_url=url, duration_s=0, status_interval_s=0.2, **options
        ).start()
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop_event.set()
        running.thread.join(30)


def test_a_version_promoted_mid_run_trades_from_the_next_decisions(trader, admin_client) -> None:
    exchange = dev_key_exchange(markets=2, rate=300)
    with ExchangeThread(exchange) as url:
        markets = exchange.tickers()
        v1 = register(markets, always=HOLD)
        v2 = register(markets, always=BUY_1_YES)
        registry.promote_model(model=v1)
        running = trader(url)
        wait_until(lambda: TradingAction.objects.filter(model_version=1).count() >= 20)
        registry.promote_model(model=v2)
        wait_until(lambda: TradingAction.objects.filter(model_version=2).count() >= 20)
        # The heartbeat trails the decision rows by up to one status interval: wait for one
        # written after the switch that has seen at least the 20 decisions counted above.
        wait_until(
            lambda: (
                paper_status().counters["model"]["version"] == 2
                and paper_status().counters["decisions"] >= 20
            )
        )
        status = admin_client.get("/rl/status").json()
        result = running.stop()

    assert result.model_versions == [1, 2] and result.reload_errors == []
    assert TradingEpisode.objects.filter(mode="paper").count() == 1  # no restart
    versions = versions_by_step(result.episode_id)
    switch = versions.index(2)
    assert versions == [1] * switch + [2] * (len(versions) - switch)
    actions = TradingAction.objects.filter(episode_id=result.episode_id)
    assert set(actions.filter(model_version=1).values_list("action_type", flat=True)) == {"HOLD"}
    assert set(actions.filter(model_version=2).values_list("action_id", flat=True)) == {BUY_1_YES}
    assert actions.filter(model_version=2, quantity_filled_e2=100).exists()
    (worker,) = [w for w in status["workers"] if w["kind"] == "paper"]
    counters = worker["counters"]
    assert counters["model"]["version"] == 2 and counters["reloads"] == 1
    assert counters["decisions"] >= 20 and counters["last_decision_at"]
    assert counters["kill_switch"]["engaged"] is False
    assert set(counters["positions"]) <= set(markets) and counters["positions"]
    assert worker["healthy"], worker["problems"]


def test_a_corrupted_artifact_is_refused_and_the_old_version_keeps_trading(trader) -> None:
    exchange = dev_key_exchange(markets=2, rate=300)
    with ExchangeThread(exchange) as url:
        markets = exchange.tickers()
        v1 = register(markets, always=HOLD)
        v2 = register(markets, always=BUY_1_YES)
        registry.promote_model(model=v1)
        running = trader(url)
        wait_until(lambda: TradingAction.objects.count() >= 20)
        # The file changes on the shared volume after the registry checked it.
        with transaction.atomic():
            registry.promote_model(model=v2)
            with Path(v2.artifact_path).open("ab") as handle:
                handle.write(b"tampered")
        wait_until(lambda: paper_status().counters.get("reload_errors"))
        status = paper_status()
        before = TradingAction.objects.count()
        wait_until(lambda: TradingAction.objects.count() >= before + 20)
        result = running.stop()

    (error,) = status.counters["reload_errors"]
    assert error["version"] == 2 and "sha256" in error["error"]
    assert not status.healthy
    assert any("v2 could not be loaded" in p and "still trading v1" in p for p in status.problems)
    assert status.counters["model"]["version"] == 1
    assert result.model_versions == [1] and len(result.reload_errors) == 1  # tried once
    assert set(TradingAction.objects.values_list("model_version", flat=True)) == {1}


def test_a_pickle_payload_behind_a_matching_sha256_never_runs_and_v1_keeps_trading(
    trader, tmp_path, monkeypatch
) -> None:
    # An attacker who can write both the shared volume and the registry row: the sha256
    # matches the swapped file, so only the loader itself stands between the pickle and us.
    monkeypatch.delenv(SENTINEL_ENV, raising=False)
    sentinel = tmp_path / "pwned.txt"
    exchange = dev_key_exchange(markets=2, rate=300)
    with ExchangeThread(exchange) as url:
        markets = exchange.tickers()
        v1 = register(markets, always=HOLD)
        v2 = register(markets, always=BUY_1_YES)
        registry.promote_model(model=v1)
        running = trader(url)
        wait_until(lambda: TradingAction.objects.count() >= 20)
        with transaction.atomic():
            registry.promote_model(model=v2)
            path = Path(v2.artifact_path)
            malicious_sb3_zip(policy_model(len(markets)), path, sentinel)
            RLModel.objects.filter(pk=v2.pk).update(artifact_sha256=sha256_of(path))
        wait_until(lambda: paper_status().counters.get("reload_errors"))
        status = paper_status()
        before = TradingAction.objects.count()
        wait_until(lambda: TradingAction.objects.count() >= before + 20)
        result = running.stop()

    assert not pwned(sentinel)
    (error,) = status.counters["reload_errors"]
    assert error["version"] == 2 and "Stable-Baselines3 model.zip is refused" in error["error"]
    assert status.counters["model"]["version"] == 1
    assert result.model_versions == [1] and len(result.reload_errors) == 1
    assert set(TradingAction.objects.values_list("model_version", flat=True)) == {1}


def test_the_kill_switch_stops_new_orders_and_shows_why_in_status(trader, admin_client) -> None:
    exchange = dev_key_exchange(markets=2, rate=300)
    with ExchangeThread(exchange) as url:
        markets = exchange.tickers()
        registry.promote_model(model=register(markets, always=BUY_5_YES))
        running = trader(url, risk=RiskSettings(max_position_contracts=3))
        wait_until(lambda: TradingAction.objects.filter(refusal=KILL_SWITCH).count() >= 20)
        status = admin_client.get("/rl/status").json()
        health = admin_client.get("/rl/health")
        result = running.stop()

    actions = TradingAction.objects.filter(episode_id=result.episode_id)
    filled = actions.filter(quantity_filled_e2__gt=0)
    assert {(a.step, a.quantity_filled_e2) for a in filled} == {(0, 500)}
    assert actions.exclude(step=0).exclude(refusal=KILL_SWITCH).count() == 0
    assert set(actions.exclude(step=0).values_list("position_after_e2", flat=True)) == {500}
    (worker,) = [w for w in status["workers"] if w["kind"] == "paper"]
    kill = worker["counters"]["kill_switch"]
    assert kill["engaged"] and "RL_PAPER_MAX_POSITION_CONTRACTS" in kill["reason"]
    assert any(p.startswith("kill switch engaged") for p in worker["problems"])
    assert health.status_code == 503
    assert result.kill_switch["engaged"] and result.trades == 2


def test_a_version_for_other_markets_or_none_at_all_is_not_swapped_in() -> None:
    from apps.trading.registry import ReloadFailure, load_active_model, poll_registry

    v1 = register(["M-A", "M-B"])
    registry.promote_model(model=v1)
    current = load_active_model(name="paper")
    assert poll_registry(name="paper", current=current, failed=frozenset()) == "same"
    v2 = register(["M-A", "M-C"])
    registry.promote_model(model=v2)
    failure = poll_registry(name="paper", current=current, failed=frozenset())
    assert isinstance(failure, ReloadFailure) and failure.version == 2
    assert "restart paper_trade to follow the new markets" in failure.error
    known = frozenset({(failure.pk, failure.sha256)})
    assert poll_registry(name="paper", current=current, failed=known) == "known-bad"
    registry.retire_model(model=v2)
    assert poll_registry(name="paper", current=current, failed=known) == "none"


def test_sigterm_leaves_every_decision_in_the_database(settings) -> None:
    exchange = dev_key_exchange(markets=3, rate=300)
    db = connection.settings_dict
    env = {
        **os.environ,
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:"
        f"{db['PORT'] or 5432}/{db['NAME']}",
        "LOCAL_EXCHANGE_KEY_DIR": str(settings.LOCAL_EXCHANGE_KEY_DIR),
        "RL_VAR_DIR": str(settings.VAR_DIR),
        # Nothing is written before the stop: SIGTERM's flush has to write it all.
        "RL_PAPER_FLUSH_INTERVAL_S": "600",
        "RL_PAPER_STATUS_INTERVAL_S": "0.2",
    }
    with ExchangeThread(exchange) as url:
        registry.promote_model(model=register(exchange.tickers(), seed=3))
        proc = subprocess.Popen(
            [
                sys.executable,
                "manage.py",
                "paper_trade",
                "--model",
                "paper",
                "--ws-url",
                url,
                "--cadence-s",
                "0.02",
            ],
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            wait_until(
                lambda: (
                    proc.poll() is None
                    and WorkerStatus.objects.filter(
                        kind="paper", counters__decisions__gte=100
                    ).exists()
                ),
                timeout_s=60,
            )
            assert TradingAction.objects.count() == 0
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0, out
    match = re.search(r"done in .*: (\d+) decisions, (\d+) actions logged", out)
    assert match, out
    decisions, logged = int(match[1]), int(match[2])
    assert decisions >= 100 and logged == 3 * decisions
    episode = TradingEpisode.objects.get(mode="paper")
    steps = TradingAction.objects.filter(episode=episode).values_list("step", flat=True)
    assert sorted(steps) == sorted(list(range(decisions)) * 3)
    assert episode.steps == decisions and episode.ended_at is not None
    assert paper_status().stopped_at is not None


def test_live_trading_is_refused_everywhere_with_a_clear_error() -> None:
    with pytest.raises(CommandError, match="'live' is refused: Kalshi Flow RL never places"):
        call_command("paper_trade", "--model", "paper", "--mode", "live")
    with pytest.raises(LiveTradingRefused, match="never places real orders"):
        run_paper_trading(model_name="paper", mode="live")
    with pytest.raises(LiveTradingRefused, match="only runs in paper mode"):
        run_paper_trading(model_name="paper", mode="training")
    assert not TradingEpisode.objects.exists()
    # No code in the product can place an order: no order endpoint or command exists.
    sources = "\n".join(p.read_text() for p in (REPO_ROOT / "apps").rglob("*.py"))
    for needle in ("portfolio/orders", "create_order", "batch_create_orders", "amend_order"):
        assert needle not in sources, needle


def test_a_model_without_an_active_version_gets_a_clear_error() -> None:
    register(["M-A"])
    with pytest.raises(PaperError, match="'paper' has no active version: promote one first"):
        run_paper_trading(model_name="paper", ws_url="ws://127.0.0.1:9/none", duration_s=1)
    with pytest.raises(CommandError, match="no active version"):
        call_command("paper_trade", "--model", "paper", "--ws-url", "ws://127.0.0.1:9/x")


def test_a_bounded_session_runs_as_a_celery_task() -> None:
    from apps.trading.tasks import paper_trade_task

    exchange = dev_key_exchange(markets=2, rate=300)
    with ExchangeThread(exchange) as url:
        registry.promote_model(model=register(exchange.tickers(), always=HOLD))
        summary = paper_trade_task.apply(
            kwargs={"model_name": "paper", "ws_url": url, "duration_s": 1.5, "cadence_s": 0.05}
        ).get(timeout=30)
    assert summary["decisions"] > 5 and summary["model_versions"] == [1]
    assert TradingAction.objects.filter(episode_id=summary["episode_id"]).count() == (
        2 * summary["decisions"]
    )
    with pytest.raises(PaperError, match="needs duration_s > 0"):
        paper_trade_task.apply(kwargs={"model_name": "paper", "duration_s": 0}).get()
