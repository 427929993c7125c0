"""KalshiTradingEnv with real parts: the env checkers, seeds, vector envs, recorded history from
the database (and no query in the hot loop), no look-ahead, masks, settlement, the time split,
fees, and short PPO / MaskablePPO runs."""

from __future__ import annotations

import math
import subprocess
import sys
import warnings
from dataclasses import replace
from fractions import Fraction
from functools import partial
from typing import Any

import numpy as np
import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from gymnasium.utils.env_checker import check_env as gymnasium_check_env
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sb3_contrib import MaskablePPO
from sb3_contrib.common.maskable.utils import get_action_masks
from stable_baselines3 import PPO
from stable_baselines3.common.env_checker import check_env as sb3_check_env
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

from apps.marketdata.exchange import FaultConfig
from apps.marketdata.models import (
    OrderbookDelta,
    OrderbookSnapshot,
    RecordingConnection,
    RecordingEvent,
)
from apps.simulation.actions import ACTIONS_PER_MARKET, N_SIZES, ActionType, encode
from apps.simulation.env import (
    EnvConfig,
    KalshiTradingEnv,
    LookAheadError,
    MarketInfo,
    positions_from_info,
    traded_count,
    trades_from_info,
)
from apps.simulation.features import N_FEATURES
from apps.simulation.fees import TAKER_RATE, FeeChange, FeeSchedule, FeeTimeline
from apps.simulation.history import RecordedHistory
from apps.simulation.loader import load
from apps.simulation.synthetic import synthetic_history
from tests.conftest import REPO_ROOT
from tests.marketdata.exchange_support import make_exchange, run
from tests.simulation.test_history import TableSink, dt, record

HOLD_ONLY = [True] * N_SIZES + [False] * (ACTIONS_PER_MARKET - N_SIZES)
ARRAYS = ("yes_px", "yes_sz", "no_px", "no_sz", "trusted", "updates")


def make_env(
    markets: int = 1,
    *,
    ticks: int = 400,
    episode_steps: int = 50,
    seed: int = 0,
    untrusted_share: float = 0.0,
    window: tuple[int, int] | None = None,
    **config: Any,
) -> KalshiTradingEnv:
    history = synthetic_history(
        markets=markets, ticks=ticks, seed=seed, untrusted_share=untrusted_share
    )
    return KalshiTradingEnv(
        history, config=EnvConfig(episode_steps=episode_steps, **config), window=window
    )


def random_valid_actions(env: KalshiTradingEnv, rng: np.random.Generator) -> np.ndarray:
    """One allowed action id per market, uniformly among the allowed ones."""
    mask = env.action_masks().reshape(env.n_markets, ACTIONS_PER_MARKET)
    return np.array([rng.choice(np.flatnonzero(row)) for row in mask])


def play(env: KalshiTradingEnv, *, seed: int, episodes: int = 2) -> list[tuple]:
    """(obs, reward, terminated, truncated, info) of every reset and step, random valid play."""
    rng = np.random.default_rng(seed)
    out: list[tuple] = []
    for episode in range(episodes):
        obs, info = env.reset(seed=seed) if episode == 0 else env.reset()
        out.append((obs, None, False, False, info))
        done = False
        while not done:
            obs, reward, terminated, truncated, info = env.step(random_valid_actions(env, rng))
            out.append((obs, reward, terminated, truncated, info))
            done = terminated or truncated
    return out


def same(a: Any, b: Any) -> bool:
    """Deep equality that also compares numpy arrays (VecEnv infos hold terminal observations)."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.array_equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def with_rows(history: RecordedHistory, source: RecordedHistory, rows: slice) -> RecordedHistory:
    """A copy of ``history`` whose ``rows`` (ticks) come from ``source``; times unchanged."""
    arrays = {}
    for name in ARRAYS:
        arr = getattr(history, name).copy()
        arr[rows] = getattr(source, name)[rows]
        arrays[name] = arr
    return replace(history, **arrays)


# -- the checkers, seeds, vector envs ---------------------------------------------------------


@pytest.mark.parametrize("markets", [1, 10])
def test_gymnasium_and_sb3_env_checkers_pass(markets: int) -> None:
    env = make_env(markets, ticks=300, episode_steps=40, untrusted_share=0.1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gymnasium_check_env(env, skip_render_check=True)
        sb3_check_env(env, warn=True)
    # The only remark allowed is that a bare env (not made through gymnasium.make) has no spec.
    remarks = [str(w.message) for w in caught if "spec" not in str(w.message)]
    assert remarks == []
    assert env.observation_space.shape == (N_FEATURES,)
    assert env.action_space.nvec.tolist() == [ACTIONS_PER_MARKET] * markets


def test_the_same_seed_gives_identical_trajectories_and_another_seed_differs() -> None:
    first = play(make_env(3, episode_steps=40), seed=7)
    again = play(make_env(3, episode_steps=40), seed=7)
    other = play(make_env(3, episode_steps=40), seed=8)
    assert len(first) == len(again) == 2 * 41
    for a, b in zip(first, again, strict=True):
        assert np.array_equal(a[0], b[0])
        assert same(a[1:], b[1:])  # reward, terminated, truncated, info (fills, fees, positions)
    assert any(traded_count(info) for *_, info in first), "nothing was traded"
    assert not all(np.array_equal(a[0], b[0]) for a, b in zip(first, other, strict=True))
    assert [s[4]["tick"] for s in first] != [s[4]["tick"] for s in other]


def test_it_runs_under_dummy_and_subproc_vec_envs_with_identical_results() -> None:
    history = synthetic_history(markets=2, ticks=300, seed=3)
    # partial() of the env class pickles by reference: the spawned workers import no Django.
    factory = partial(KalshiTradingEnv, history, config=EnvConfig(episode_steps=20))
    dummy = DummyVecEnv([factory, factory])
    subproc = SubprocVecEnv([factory, factory], start_method="forkserver")
    try:
        dummy.seed(5)
        subproc.seed(5)
        obs = dummy.reset()
        assert obs.shape == (2, N_FEATURES)
        assert np.array_equal(obs, subproc.reset())
        rng = np.random.default_rng(0)
        dones = 0
        for _ in range(45):  # crosses two episode ends per env (automatic resets)
            masks = get_action_masks(dummy)
            assert masks.shape == (2, 2 * ACTIONS_PER_MARKET)
            assert np.array_equal(masks, get_action_masks(subproc))
            actions = np.array(
                [[rng.choice(np.flatnonzero(m)) for m in row.reshape(2, -1)] for row in masks]
            )
            obs, rewards, done, infos = dummy.step(actions)
            obs_sub, rewards_sub, done_sub, infos_sub = subproc.step(actions)
            assert np.array_equal(obs, obs_sub)
            # DummyVecEnv keeps rewards in float32, SubprocVecEnv stacks the float64s.
            assert np.array_equal(rewards, rewards_sub.astype(np.float32))
            assert np.array_equal(done, done_sub)
            assert same(infos, infos_sub)
            dones += int(done.sum())
        assert dones == 4
    finally:
        dummy.close()
        subproc.close()


def test_the_env_module_imports_without_django() -> None:
    code = (
        "import sys; import apps.simulation.env, apps.simulation.synthetic; "
        "assert not [m for m in sys.modules if m.startswith('django')], 'django imported'"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True, timeout=60)


# -- recorded history from the database -------------------------------------------------------


@pytest.fixture(scope="module")
def recording() -> TableSink:
    """Frames recorded from the bundled exchange with gaps and a dropped socket (no DB yet)."""
    exchange = make_exchange(
        markets=3, rate=3000, faults=FaultConfig(seq_gap_every=300, drop_after_messages=900)
    )
    sink = TableSink()
    run(record(exchange, sink, 2500), timeout_s=60)
    return sink


@pytest.fixture
def recorded_history(recording: TableSink) -> RecordedHistory:
    """The recording written into the tables and loaded back through ``loader.load``."""
    snaps, deltas, events = recording.rows()
    for connection_id in recording.connections:
        RecordingConnection.objects.create(
            id=connection_id, exchange="local", ws_url="ws://local", opened_at=timezone.now()
        )
    OrderbookSnapshot.objects.bulk_create(snaps)
    OrderbookDelta.objects.bulk_create(deltas, batch_size=2000)
    RecordingEvent.objects.bulk_create(events)
    first = min(ns for *_, ns in recording.snapshot_rows)
    stop = max(ns for *_, ns in recording.event_rows)
    markets = sorted({m.market_ticker for _, m, _, _ in recording.snapshot_rows})
    history = load(markets, dt(first), dt(stop), step_s=0.01, use_cache=False, progress=False)
    assert history.n_ticks > 60 and history.n_levels == 10
    assert history.trusted.any() and (~history.trusted).any(), history.quality_report()
    return history


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_reset_and_step_issue_no_database_query_on_recorded_history(recorded_history) -> None:
    env = KalshiTradingEnv(
        recorded_history, config=EnvConfig(episode_steps=recorded_history.n_ticks - 1)
    )
    rng = np.random.default_rng(1)
    with CaptureQueriesContext(connection) as queries:
        env.reset(seed=1)
        done = steps = 0
        while not done:
            _, _, terminated, truncated, _ = env.step(random_valid_actions(env, rng))
            done, steps = terminated or truncated, steps + 1
        env.reset(seed=2)
    assert steps == recorded_history.n_ticks - 1
    assert queries.captured_queries == []
    # The probe is live: the same context does see a query.
    with CaptureQueriesContext(connection) as probe:
        RecordingConnection.objects.count()
    assert len(probe.captured_queries) == 1


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_observations_stay_inside_minus_one_and_one_on_recorded_history(
    recorded_history,
) -> None:
    env = KalshiTradingEnv(
        recorded_history, config=EnvConfig(episode_steps=recorded_history.n_ticks - 1)
    )
    observations = np.array([step[0] for step in play(env, seed=3, episodes=1)])
    assert observations.shape == (recorded_history.n_ticks, N_FEATURES)
    assert observations.dtype == np.float32
    assert np.isfinite(observations).all()
    assert observations.min() >= -1.0 and observations.max() <= 1.0
    assert np.abs(observations).max() > 0.5  # the features are not all zero


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_an_untrusted_recorded_market_allows_only_hold(recorded_history) -> None:
    env = KalshiTradingEnv(
        recorded_history, config=EnvConfig(episode_steps=recorded_history.n_ticks - 1)
    )
    env.reset(options={"start_tick": 0})
    untrusted_seen = trusted_seen = 0
    for t in range(recorded_history.n_ticks - 1):
        assert env.current_tick == t
        mask = env.action_masks().reshape(env.n_markets, ACTIONS_PER_MARKET)
        for j in range(env.n_markets):
            if not recorded_history.trusted[t, j]:
                assert mask[j].tolist() == HOLD_ONLY
                untrusted_seen += 1
            elif mask[j, N_SIZES:].any():
                trusted_seen += 1
        env.step(np.full(env.n_markets, encode(ActionType.BUY_YES, 0)))
    assert untrusted_seen and trusted_seen


# -- look-ahead -----------------------------------------------------------------------------


def test_changing_only_future_rows_leaves_the_observation_at_t_unchanged() -> None:
    history = synthetic_history(markets=3, ticks=400, seed=8)
    other = synthetic_history(markets=3, ticks=400, seed=99, untrusted_share=0.3)
    start, t = 100, 160
    config = EnvConfig(episode_steps=200)
    env = KalshiTradingEnv(history, config=config)
    future = KalshiTradingEnv(with_rows(history, other, slice(t + 1, None)), config=config)
    past = KalshiTradingEnv(with_rows(history, other, slice(t - 1, t)), config=config)
    rng = np.random.default_rng(4)
    runs = [e.reset(options={"start_tick": start}) for e in (env, future, past)]
    assert same(runs[0], runs[1])
    while env.current_tick < t:
        actions = random_valid_actions(env, rng)
        runs = [e.step(actions) for e in (env, future, past)]
        assert same(runs[0], runs[1]), f"tick {env.current_tick} saw the future"
    assert env.current_tick == future.current_tick == t
    assert traded_count(runs[0][4]) or env.portfolio.positions
    # A changed past row does show up at t, so this test can tell the difference.
    assert not np.array_equal(runs[0][0], runs[2][0])


def test_asking_for_a_tick_after_the_current_one_raises_look_ahead_error() -> None:
    env = make_env(2, episode_steps=20)
    env.reset(options={"start_tick": 50})
    env.step([0, 0])
    assert env.current_tick == 51
    env._observation(51)
    env._book(50, 1)
    with pytest.raises(LookAheadError, match="after the current tick"):
        env._observation(52)
    with pytest.raises(LookAheadError):
        env._book(52, 0)


# -- bounds and masks -------------------------------------------------------------------------


def test_observations_stay_inside_minus_one_and_one_on_synthetic_history() -> None:
    env = make_env(10, ticks=600, episode_steps=599, seed=5, untrusted_share=0.3)
    assert (~env.history.trusted).mean() > 0.2
    observations = np.array([step[0] for step in play(env, seed=5, episodes=1)])
    assert observations.shape == (600, N_FEATURES)
    assert np.isfinite(observations).all()
    assert observations.min() >= -1.0 and observations.max() <= 1.0
    # positions were held: the per-market position features moved off zero
    assert np.abs(observations[:, 49:540:54]).max() > 0


def test_an_untrusted_market_allows_only_hold_even_while_its_book_still_shows_depth() -> None:
    # The trust flag alone must forbid trading: here the untrusted ticks keep their (stale)
    # levels instead of the empty arrays a gap leaves in a loaded history.
    liquid = synthetic_history(markets=3, ticks=300, seed=6)
    trusted = synthetic_history(markets=3, ticks=300, seed=6, untrusted_share=0.3).trusted
    assert (liquid.yes_sz[~trusted][:, 0] > 0).all() and (liquid.no_sz[~trusted][:, 0] > 0).all()
    env = KalshiTradingEnv(replace(liquid, trusted=trusted), config=EnvConfig(episode_steps=299))
    obs, _ = env.reset(options={"start_tick": 0})
    refused = 0
    for t in range(299):
        mask = env.action_masks().reshape(3, ACTIONS_PER_MARKET)
        slots = obs[:540].reshape(10, 54)
        for j in range(3):
            if trusted[t, j]:
                assert mask[j, encode(ActionType.BUY_YES, 0)]
                assert slots[j, 1] == 1.0
            else:
                assert mask[j].tolist() == HOLD_ONLY
                # ... and the observation shows no book for it (offsets 3-46 are zero)
                assert slots[j, 1] == 0.0 and not slots[j, 3:47].any()
        # Alternate NO and YES buys of one contract: they net, so no limit is ever reached.
        buy = np.full(3, encode(ActionType.BUY_NO if t % 2 else ActionType.BUY_YES, 0))
        cash = env.portfolio.cash_e6
        obs, _, _, _, info = env.step(buy)
        for trade, ok in zip(trades_from_info(env.markets, info), trusted[t], strict=True):
            assert (trade["refusal"] is None) == ok
            refused += trade["refusal"] == "untrusted"
        assert (env.portfolio.cash_e6 == cash) == (not trusted[t].any())
    assert refused > 0


def test_selling_without_a_position_is_masked_and_buying_unmasks_the_held_sizes() -> None:
    env = make_env(1, episode_steps=20, seed=9)
    env.reset(options={"start_tick": 10})
    mask = env.action_masks()
    sells = [ActionType.SELL_YES, ActionType.SELL_NO, ActionType.FLATTEN]
    assert not any(mask[encode(a, i)] for a in sells for i in range(N_SIZES))
    assert all(mask[encode(ActionType.BUY_YES, i)] for i in range(N_SIZES))
    _, _, _, _, info = env.step([encode(ActionType.SELL_YES, 0)])
    assert trades_from_info(env.markets, info)[0]["refusal"] == "not_held"
    assert positions_from_info(env.markets, info) == {} and info["cash_e6"] == env.initial_cash_e6
    env.step([encode(ActionType.BUY_YES, 1)])  # 5 contracts
    mask = env.action_masks()
    assert [mask[encode(ActionType.SELL_YES, i)] for i in range(N_SIZES)] == [True] * 2 + [
        False
    ] * 3
    assert not any(mask[encode(ActionType.SELL_NO, i)] for i in range(N_SIZES))
    assert all(mask[encode(ActionType.FLATTEN, i)] for i in range(N_SIZES))


@pytest.mark.parametrize("markets", [1, 3, 10])
def test_the_mask_has_thirty_entries_per_market_and_hold_is_always_allowed(markets) -> None:
    env = make_env(markets, episode_steps=10, untrusted_share=0.2)
    env.reset(seed=0)
    mask = env.action_masks()
    assert mask.shape == (markets * ACTIONS_PER_MARKET,) and mask.dtype == bool
    assert mask.reshape(markets, ACTIONS_PER_MARKET)[:, :N_SIZES].all()


def holdings(env: KalshiTradingEnv) -> dict[str, tuple[int, int]]:
    return {market: (pos.yes_e2, pos.no_e2) for market, pos in env.portfolio}


_PROPERTY_ENV: list[KalshiTradingEnv] = []


def property_env() -> KalshiTradingEnv:
    if not _PROPERTY_ENV:
        _PROPERTY_ENV.append(make_env(3, ticks=400, episode_steps=60, seed=11, untrusted_share=0.2))
    return _PROPERTY_ENV[0]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), market=st.integers(0, 2), steps=st.integers(1, 60))
def test_every_unmasked_action_executed_trades(seed: int, market: int, steps: int) -> None:
    # One market acts per step (the others hold): each mask is exact for the state it saw.
    env = property_env()
    env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        allowed = np.flatnonzero(env.action_masks().reshape(3, ACTIONS_PER_MARKET)[market])
        action_id = int(rng.choice(allowed))
        actions = np.zeros(3, dtype=np.int64)
        actions[market] = action_id
        cash, positions = env.portfolio.cash_e6, holdings(env)
        _, _, terminated, truncated, info = env.step(actions)
        if action_id < N_SIZES:
            assert trades_from_info(env.markets, info) == [] and info["cash_e6"] == cash
        else:
            (trade,) = trades_from_info(env.markets, info)
            assert trade["refusal"] is None, trade
            assert trade["filled_e2"] > 0
            assert info["cash_e6"] != cash or holdings(env) != positions
        if terminated or truncated:
            break


# -- settlement, the time split, fees -------------------------------------------------------


@pytest.mark.parametrize(("result", "payout_e6"), [("yes", 10_000_000), ("no", 0)])
def test_a_market_with_a_known_result_settles_at_its_close(result, payout_e6) -> None:
    history = synthetic_history(markets=2, ticks=100, seed=2)
    closing = history.markets[0]
    close_ns = int(history.times_ns[30])
    info_by_market = {closing: MarketInfo(close_ns=close_ns, result=result)}
    env = KalshiTradingEnv(history, config=EnvConfig(episode_steps=40, market_info=info_by_market))
    env.reset(options={"start_tick": 20})
    _, _, _, _, info = env.step([encode(ActionType.BUY_YES, 2), 0])  # 10 YES contracts
    assert positions_from_info(env.markets, info) == {closing: {"yes_e2": 1_000, "no_e2": 0}}
    cash_after_buy = info["cash_e6"]
    settled = []
    while env.current_tick < 30:
        _, _, terminated, truncated, info = env.step([0, 0])
        settled += info["settled"]
        assert not (terminated or truncated)
    assert info["time_ns"] == close_ns
    assert info["settled"] == [{"market": closing, "how": result, "payout_e6": payout_e6}]
    assert settled == info["settled"]  # once, on the step that reaches the close
    assert positions_from_info(env.markets, info) == {}
    assert info["cash_e6"] == cash_after_buy + payout_e6
    # After the close the market only holds; the other one still trades.
    mask = env.action_masks().reshape(2, ACTIONS_PER_MARKET)
    assert mask[0].tolist() == HOLD_ONLY and mask[1, N_SIZES:].any()


def test_an_episode_ends_when_every_market_has_settled() -> None:
    history = synthetic_history(markets=1, ticks=100, seed=2)
    market = history.markets[0]
    close_ns = int(history.times_ns[30])
    config = EnvConfig(episode_steps=60, market_info={market: MarketInfo(close_ns=close_ns)})
    env = KalshiTradingEnv(history, config=config)
    env.reset(options={"start_tick": 20})
    env.step([encode(ActionType.BUY_NO, 0)])
    terminated = truncated = False
    while not (terminated or truncated):
        _, _, terminated, truncated, info = env.step([0])
    assert terminated and not truncated and info["tick"] == 30
    # No result known: closed at the last mid, reported as such.
    (done,) = info["settled"]
    mid_e4x2 = int(history.yes_px[30, 0, 0]) + 10_000 - int(history.no_px[30, 0, 0])
    assert done["how"] == "settled_at_mid"
    assert done["payout_e6"] == 100 * (10_000 - mid_e4x2 // 2)  # one NO contract
    with pytest.raises(RuntimeError, match="reset"):
        for _ in range(60):
            env.step([0])


def test_an_env_given_a_window_never_reaches_a_tick_at_or_after_its_end() -> None:
    history = synthetic_history(markets=2, ticks=400, seed=4)
    times = history.times_ns
    config = EnvConfig(episode_steps=30)
    train = KalshiTradingEnv(history, config=config, window=(int(times[0]), int(times[200])))
    evaluation = KalshiTradingEnv(
        history, config=config, window=(int(times[200]), int(times[-1]) + 1)
    )
    train_ticks = [s[4]["tick"] for seed in range(15) for s in play(train, seed=seed, episodes=1)]
    eval_ticks = [
        s[4]["tick"] for seed in range(15) for s in play(evaluation, seed=seed, episodes=1)
    ]
    assert max(train_ticks) < 200 <= min(eval_ticks)
    assert max(eval_ticks) < 400
    # The latest start allowed runs up to the tick just before the end, and no further.
    last_start = 200 - 30 - 1
    train.reset(options={"start_tick": last_start})
    for _ in range(30):
        _, _, _, truncated, info = train.step([0, 0])
    assert truncated and info["tick"] == 199 and info["time_ns"] < times[200]
    with pytest.raises(LookAheadError):
        train._observation(200)
    with pytest.raises(ValueError, match="outside"):
        train.reset(options={"start_tick": last_start + 1})


def fee_by_formula_e4(legs: list[tuple[int, int]], multiplier: Fraction) -> int:
    """Σ roundup_to_$0.0001(0.07 × m × C × P × (1 − P)) over the fills, written out, in $0.0001."""
    return sum(
        math.ceil(
            Fraction(7, 100)
            * multiplier
            * Fraction(size, 100)
            * Fraction(p, 10_000)
            * (1 - Fraction(p, 10_000))
            * 10_000
        )
        for p, size in legs
    )


def yes_buy_legs(history: RecordedHistory, t: int, size_e2: int) -> list[tuple[int, int]]:
    """The (YES price, size) fills of a YES buy of ``size_e2`` at tick ``t`` (market 0)."""
    legs, remaining = [], size_e2
    for no_px, no_sz in zip(history.no_px[t, 0], history.no_sz[t, 0], strict=True):
        take = min(int(no_sz), remaining)
        legs.append((10_000 - int(no_px), take))  # a YES buy pays $1 minus the NO bid
        remaining -= take
        if not remaining:
            break
    return legs


@pytest.mark.parametrize("multiplier", [Fraction(1), Fraction(1, 2)])
def test_the_env_charges_each_fill_its_fee_on_a_scripted_buy(multiplier) -> None:
    history = synthetic_history(markets=1, ticks=80, seed=5)
    market = history.markets[0]
    schedule = FeeSchedule(multiplier=multiplier)
    config = EnvConfig(episode_steps=10, fees_by_market={market: schedule})
    env = KalshiTradingEnv(history, config=config)
    # A tick whose best NO bid is thinner than 50 contracts, so the buy walks two levels.
    t = int(np.flatnonzero(history.no_sz[:60, 0, 0] < 5_000)[0])
    env.reset(options={"start_tick": t})
    legs = yes_buy_legs(history, t, 5_000)
    assert len(legs) >= 2
    expected = sum(schedule.trade_fee_e4(p, s) for p, s in legs)
    assert expected == fee_by_formula_e4(legs, multiplier) > 0
    assert TAKER_RATE * multiplier == schedule.taker_rate
    _, _, _, _, info = env.step([encode(ActionType.BUY_YES, 4)])  # 50 contracts
    (trade,) = trades_from_info(env.markets, info)
    assert trade["filled_e2"] == 5_000
    assert trade["fee_e4"] == expected == info["fees_paid_e4"]
    # Each fill's debit rounded up to the cent, a cent back per cent of rounding fees.
    debits = [p * s + 100 * schedule.trade_fee_e4(p, s) for p, s in legs]
    rounding = sum(-(-d // 10_000) * 10_000 - d for d in debits) % 10_000
    assert trade["rounding_fee_e6"] == rounding == info["rounding_fees_e6"]
    notional_e6 = sum(p * s for p, s in legs)
    assert env.initial_cash_e6 - info["cash_e6"] == notional_e6 + 100 * expected + rounding


def test_a_fee_change_in_the_middle_of_an_episode_applies_from_its_tick_on() -> None:
    """The market's multiplier drops from 1 to 0.5 at the time of the episode's fourth tick:
    a one-contract buy each step pays the old fee before that tick and the new one from it."""
    history = synthetic_history(markets=1, ticks=80, seed=5)
    market = history.markets[0]
    start = 20
    before, after = FeeSchedule(), FeeSchedule(multiplier=Fraction(1, 2))
    change = FeeChange(effective_ns=int(history.times_ns[start + 3]), schedule=after)
    timeline = FeeTimeline(initial=before, changes=[change])
    config = EnvConfig(episode_steps=8, fees_by_market={market: timeline})
    env = KalshiTradingEnv(history, config=config)
    env.reset(options={"start_tick": start})
    charged = []
    for _ in range(6):
        t = env.current_tick
        _, _, _, _, info = env.step([encode(ActionType.BUY_YES, 0)])  # the smallest size
        (trade,) = trades_from_info(env.markets, info)
        assert trade["refusal"] is None, trade
        legs = yes_buy_legs(history, t, trade["filled_e2"])
        fee_before = sum(before.trade_fee_e4(p, s) for p, s in legs)
        fee_after = sum(after.trade_fee_e4(p, s) for p, s in legs)
        assert fee_before != fee_after
        charged.append("after" if trade["fee_e4"] == fee_after else "before")
        assert trade["fee_e4"] == (fee_after if t >= start + 3 else fee_before)
    assert charged == ["before"] * 3 + ["after"] * 3


def test_the_account_precision_is_a_setting_of_the_env() -> None:
    """A direct member ($0.0001) is debited the trade fees and no cent rounding."""
    history = synthetic_history(markets=1, ticks=40, seed=5)
    for precision_e4 in (100, 1):
        config = EnvConfig(episode_steps=5, account_precision_e4=precision_e4)
        env = KalshiTradingEnv(history, config=config)
        env.reset(options={"start_tick": 10})
        _, _, _, _, info = env.step([encode(ActionType.BUY_YES, 2)])
        legs = yes_buy_legs(history, 10, info["fills"][0][3])
        debits = [p * s + 100 * FeeSchedule().trade_fee_e4(p, s) for p, s in legs]
        step = precision_e4 * 100
        rounding = sum(-(-d // step) * step - d for d in debits) % 10_000
        assert info["rounding_fees_e6"] == rounding
        assert env.initial_cash_e6 - info["cash_e6"] == sum(debits) + rounding
    with pytest.raises(ValueError, match="precision"):
        EnvConfig(account_precision_e4=10)


# -- training -----------------------------------------------------------------------------------


def train_and_eval_envs() -> tuple[KalshiTradingEnv, KalshiTradingEnv]:
    history = synthetic_history(markets=2, ticks=600, seed=12)
    times = history.times_ns
    config = EnvConfig(episode_steps=64)
    train = KalshiTradingEnv(history, config=config, window=(int(times[0]), int(times[400])))
    evaluation = KalshiTradingEnv(
        history, config=config, window=(int(times[400]), int(times[-1]) + 1)
    )
    return train, evaluation


def test_ppo_trains_on_the_env_and_a_deterministic_evaluation_episode_completes() -> None:
    train, evaluation = train_and_eval_envs()
    model = PPO(
        "MlpPolicy",
        train,
        n_steps=128,
        batch_size=64,
        n_epochs=2,
        policy_kwargs={"net_arch": [32, 32]},
        seed=0,
        device="cpu",
    )
    model.learn(total_timesteps=2_048)
    assert model.num_timesteps >= 2_048
    obs, _ = evaluation.reset(seed=1)
    total, steps, done = 0.0, 0, False
    while not done:
        action, _ = model.predict(obs, deterministic=True)
        obs, reward, terminated, truncated, info = evaluation.step(action)
        total, steps, done = total + reward, steps + 1, terminated or truncated
    assert steps == 64 and math.isfinite(total)
    assert 400 <= info["tick"] < 600


def test_maskable_ppo_trains_and_its_evaluation_only_takes_allowed_actions() -> None:
    train, evaluation = train_and_eval_envs()
    model = MaskablePPO(
        "MlpPolicy",
        train,
        n_steps=128,
        batch_size=64,
        n_epochs=2,
        policy_kwargs={"net_arch": [32, 32]},
        seed=0,
        device="cpu",
    )
    model.learn(total_timesteps=2_048)
    assert model.num_timesteps >= 2_048
    obs, _ = evaluation.reset(seed=1)
    steps, done, refusals = 0, False, []
    while not done:
        mask = evaluation.action_masks()
        action, _ = model.predict(obs, action_masks=mask, deterministic=True)
        rows = mask.reshape(2, ACTIONS_PER_MARKET)
        assert all(rows[j, a] for j, a in enumerate(action))
        obs, _, terminated, truncated, info = evaluation.step(action)
        refusals += [t for t in trades_from_info(evaluation.markets, info) if t["refusal"]]
        steps, done = steps + 1, terminated or truncated
    assert steps == 64
    assert refusals == []


def test_spawned_envs_share_the_precomputed_history_and_keep_their_own_accounts() -> None:
    history = synthetic_history(markets=3, ticks=400, seed=8)
    env = KalshiTradingEnv(history, config=EnvConfig(episode_steps=50))
    twin = env.spawn()
    fresh = KalshiTradingEnv(history, config=EnvConfig(episode_steps=50))
    assert twin._static is env._static and twin._px is env._px  # one precomputation
    assert twin._pos is not env._pos and twin._acct is not env._acct
    rng = np.random.default_rng(3)
    obs_t, _ = twin.reset(seed=5)
    obs_f, _ = fresh.reset(seed=5)
    env.reset(seed=99)
    before = env.position_table()
    assert np.array_equal(obs_t, obs_f)
    for _ in range(50):
        action = rng.integers(0, 30, size=3)
        step_t = twin.step(action)
        step_f = fresh.step(action)
        assert np.array_equal(step_t[0], step_f[0]) and step_t[1:4] == step_f[1:4]
        assert np.array_equal(step_t[4]["fills"], step_f[4]["fills"])
    assert np.array_equal(env.position_table(), before)  # the twin's trades are its own
    assert twin.portfolio.fees_paid_e4 > 0 and env.portfolio.fees_paid_e4 == 0
