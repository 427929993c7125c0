"""The planted edge survives the real path: local exchange -> recorder -> PostgreSQL -> loader
-> env, where the oracle that knows it beats no trading after fees."""

from __future__ import annotations

import asyncio
import warnings

import numpy as np
import pytest
from django.utils import timezone

from apps.marketdata.exchange import (
    ApiKey,
    ExchangeConfig,
    ExchangeThread,
    LocalExchange,
    ensure_dev_keys,
)
from apps.marketdata.exchange.planted import PlantedSource
from apps.marketdata.exchange.planted_world import PlantedConfig
from apps.marketdata.ingest import IngestOptions, run_ingest_async
from apps.simulation.env import EnvConfig, KalshiTradingEnv
from apps.simulation.loader import load
from apps.simulation.planted import LeadLagOracle
from apps.training.evaluation import compare, hold_policy, run_episode, summarize

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


async def _record(url: str, seconds: float) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(
        run_ingest_async(
            IngestOptions(ws_url=url, exchange="local", snapshot_interval_s=2.0),
            stop_event=stop,
            install_signal_handlers=False,
        )
    )
    await asyncio.sleep(seconds)
    stop.set()
    await task


def test_the_oracle_earns_on_the_recorded_planted_market(settings) -> None:
    # A fast world: a jump every ~2 s, the follower 0.5 s behind, big enough to pay fees.
    config = PlantedConfig(seed=5, jump_cents=10, mean_gap_s=2.0, lag_s=0.5)
    source = PlantedSource(config, rate=400)
    keys = ensure_dev_keys(settings.LOCAL_EXCHANGE_KEY_DIR, announce=lambda *_: None)
    exchange = LocalExchange(
        ExchangeConfig(keys=(ApiKey(public_key=keys.public_key_path, key_id=keys.key_id),)),
        source=source,
    )
    started = timezone.now()
    with ExchangeThread(exchange) as url:
        asyncio.run(_record(url, 20.0))
    assert source.requotes >= 10, source.requotes
    history = load(list(config.tickers), started, timezone.now(), step_s=0.1, use_cache=False)
    # Every leader jump the recorder saw is followed by the follower about lag_s later, not
    # at once (a follower that moved with the leader would count as not following).
    mid = (history.yes_px[:, :, 0] + 10_000 - history.no_px[:, :, 0]) / 2
    both = (history.yes_sz[:, :, 0] > 0) & (history.no_sz[:, :, 0] > 0) & history.trusted
    seen, followed = lead_lag_followed(mid, both, lag_ticks=5)
    assert seen >= 4 and followed >= 0.6 * seen, (seen, followed)
    same_time = np.stack([mid[:, 0], mid[:, 0]], axis=1)
    assert lead_lag_followed(same_time, both[:, [0, 0]], lag_ticks=5)[1] <= 0.3 * seen
    env = KalshiTradingEnv(history, config=EnvConfig(episode_steps=25))
    last = env.end_tick - 26
    starts = list(range(env.first_tick, last + 1, 25))
    assert len(starts) >= 4
    oracle = [run_episode(env, LeadLagOracle(config), start_tick=s) for s in starts]
    hold = [run_episode(env, hold_policy, start_tick=s) for s in starts]
    summary = summarize(oracle)
    assert summary["round_trips"] >= 3, summary
    versus = compare(oracle, hold)
    assert versus["difference"] > 0, versus
    assert summary["pnl_dollars"] > 0, summary


def lead_lag_followed(mid: np.ndarray, both: np.ndarray, *, lag_ticks: int) -> tuple[int, int]:
    """(leader jumps seen, jumps the follower made too, ``lag_ticks`` later and not at once).

    A jump: the leader's mid one tick later is 5 cents or more from the median of the five
    ticks before, and the median of the five after agrees (a one-tick spike is not a jump).
    """
    # A window without a two-sided book has no median: nanmedian warns and gives NaN, which
    # the checks below treat as "not seen".
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return _followed(np.where(both, mid, np.nan), lag_ticks)


def _followed(m: np.ndarray, lag_ticks: int) -> tuple[int, int]:
    seen = followed = 0
    t = 5
    while t < len(m) - lag_ticks - 6:
        before = np.nanmedian(m[t - 4 : t + 1, 0])
        after = np.nanmedian(m[t + 1 : t + 6, 0])
        first = m[t + 1, 0]
        if (
            np.isnan([before, after, first]).any()
            or min(abs(after - before), abs(first - before)) < 500
        ):
            t += 1
            continue
        seen += 1
        sign = np.sign(after - before)
        f_before = np.nanmedian(m[t - 4 : t + 1, 1])
        f_now = np.nanmedian(m[t + 1 : t + 3, 1])
        f_later = np.nanmedian(m[t + lag_ticks + 2 : t + lag_ticks + 6, 1])
        if sign * (f_later - f_before) >= 500 and abs(f_now - f_before) < 500:
            followed += 1
        t += 5
    return seen, followed
