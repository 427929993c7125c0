"""Parity: a recorded stream replayed through the local exchange into the paper trader, and
the same history stepped through KalshiTradingEnv with the same model, give identical
observation vectors, masks, actions and fills at every decision point.

The trader decides on the model's own clock (every ``step_s``) and keeps each decision's
sample of the live books; those samples are a :class:`RecordedHistory` (the tick times, top-10
ladders, trust flags and update counts the history loader would store), and the env is
stepped over it from tick 0 for one training episode, the span over which the env defines
the progress feature.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from apps.marketdata.db_replay import DbReplaySource
from apps.marketdata.exchange import ExchangeThread
from apps.simulation.env import EnvConfig, KalshiTradingEnv, trades_from_info
from apps.simulation.history import MarketQuality, RecordedHistory
from apps.trading.models import TradingAction
from apps.trading.risk import RiskSettings
from apps.training import services as registry
from apps.training.models import ModelStatus
from apps.training.services import load_policy
from apps.training.tasks import train_model_task
from tests.trading.support import TraderThread, dev_key_exchange
from tests.training.conftest import record_history, small_spec

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True), pytest.mark.slow]

EPISODE_STEPS = 60  # decisions compared: EPISODE_STEPS + 1
STEP_S = 0.02


def history_of(trace, markets: list[str]) -> RecordedHistory:
    samples = [d.outcome.sample for d in trace]
    return RecordedHistory(
        markets=markets,
        times_ns=np.array([s.time_ns for s in samples], dtype=np.int64),
        yes_px=np.stack([s.px[:, 0] for s in samples]).astype(np.int32),
        yes_sz=np.stack([s.sz[:, 0] for s in samples]),
        no_px=np.stack([s.px[:, 1] for s in samples]).astype(np.int32),
        no_sz=np.stack([s.sz[:, 1] for s in samples]),
        trusted=np.stack([s.trusted for s in samples]),
        updates=np.stack([s.updates for s in samples]).astype(np.int32),
        quality={m: MarketQuality() for m in markets},
        step_ns=round(STEP_S * 1e9),
    )


def wait_until(predicate, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.mark.parametrize("algorithm", ["PPO", "MaskablePPO"])
def test_a_replayed_recording_gives_the_env_and_the_trader_identical_decisions(algorithm) -> None:
    markets = record_history(markets=2, min_deltas=15_000)
    spec = small_spec(markets, algorithm=algorithm, step_s=STEP_S, episode_steps=EPISODE_STEPS)
    model = registry.start_training_run(spec=spec, enqueue=False)
    outcome = train_model_task(model.pk)
    model.refresh_from_db()
    assert model.status == ModelStatus.READY, (outcome, model.error)
    registry.promote_model(model=model)

    # The recorded rows, replayed at their recorded pace; the replay starts once the trader
    # has subscribed, so it sees the stream from its first snapshot.
    exchange = dev_key_exchange(
        source=DbReplaySource(tickers=markets, speed=1.0), start_paused=True
    )
    thread = ExchangeThread(exchange)
    with thread as url:
        trader = TraderThread(
            model_name="tiny",
            ws_url=url,
            duration_s=0,
            keep_trace=True,
            risk=RiskSettings(1e9, 1e9, 1e9),  # the env has no operator kill switch
        ).start()
        wait_until(lambda: exchange.stats.connections_opened >= 1)
        time.sleep(0.3)  # subscribed and snapshotted
        thread.call(exchange.resume)
        thread.call(lambda: exchange.wait_source_done(60), timeout_s=90)
        time.sleep(0.2)
        result = trader.stop()

    trace = result.trace
    assert len(trace) > EPISODE_STEPS + 1, len(trace)
    assert result.model_versions == [1]
    history = history_of(trace, markets)
    assert history.trusted.all()
    assert (np.diff(history.yes_px[:, :, 0], axis=0) != 0).any()  # the books moved
    env = KalshiTradingEnv(history, config=EnvConfig(episode_steps=EPISODE_STEPS))
    agent = load_policy(model)
    obs, _ = env.reset(options={"start_tick": 0})
    fills = 0
    for k in range(EPISODE_STEPS + 1):
        paper = trace[k].outcome
        assert paper.observation.tobytes() == obs.tobytes(), f"observation {k}"
        masks = env.action_masks()
        assert np.array_equal(paper.masks.reshape(-1), masks), f"masks {k}"
        if algorithm == "MaskablePPO":
            action, _ = agent.predict(obs, deterministic=True, action_masks=masks)
        else:
            action, _ = agent.predict(obs, deterministic=True)
        assert paper.actions.tolist() == action.tolist(), f"action {k}"
        if k == EPISODE_STEPS:
            break
        obs, _, _, _, info = env.step(action)
        env_fills = {t["market"]: t for t in trades_from_info(env.markets, info)}
        for j, market in enumerate(markets):
            row = paper.rows[j]
            trade = env_fills.get(market)
            assert row.quantity_filled_e2 == (trade["filled_e2"] if trade else 0), (k, market)
            assert row.fee_e4 == (trade["fee_e4"] if trade else 0), (k, market)
            assert row.position_after_e2 == env.portfolio.position(market).net_e2, (k, market)
            fills += row.quantity_filled_e2 > 0
        assert paper.rows[-1].cash_after_e4 == env.portfolio.cash_e6 // 100, k
    # What was compared is what was logged.
    logged = TradingAction.objects.filter(episode_id=result.episode_id)
    assert logged.count() == len(trace) * len(markets)
    first = logged.filter(step__lte=EPISODE_STEPS).order_by("step", "market_ticker")
    by_step = {(a.step, a.market_ticker): a.action_id for a in first}
    for k in range(EPISODE_STEPS + 1):
        for j, market in enumerate(markets):
            assert by_step[(k, market)] == int(trace[k].outcome.actions[j])
    if algorithm == "MaskablePPO":
        # Its masks steer it to orders that fill (dozens per episode); the tiny PPO may
        # mostly hold. Fills against the live book are also compared in test_actor.py.
        assert fills > 0
