"""The actor against the env on the same history, the kill switch, and what it logs."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from apps.simulation.actions import ActionType, encode
from apps.simulation.env import EnvConfig, KalshiTradingEnv, traded_count, trades_from_info
from apps.simulation.fees import FeeChange, FeeSchedule, FeeTimeline
from apps.simulation.portfolio import MarketPosition, Portfolio
from apps.simulation.synthetic import synthetic_history
from apps.trading.actor import PaperActor, PolicyVersion
from apps.trading.risk import KILL_SWITCH, KillSwitch, RiskSettings
from tests.trading.support import policy_model
from tests.trading.test_sampling import samples_of

NS = 1_000_000_000
LOOSE = RiskSettings(1e9, 1e9, 1e9)


class Always:
    """A scripted policy: the same action in every market (records what it was shown)."""

    def __init__(self, action_id: int, n_markets: int) -> None:
        self.action = np.full(n_markets, action_id, dtype=np.int64)
        self.masks: list[np.ndarray | None] = []

    def predict(self, observation, deterministic=False, action_masks=None):
        self.masks.append(action_masks)
        return self.action.copy(), None


def actor_for(markets, policy, *, algorithm="PPO", risk=LOOSE, episode_steps=40) -> PaperActor:
    return PaperActor(
        markets=markets,
        policy=PolicyVersion(policy=policy, version=1, algorithm=algorithm),
        config=EnvConfig(episode_steps=episode_steps),
        episode_steps=episode_steps,
        kill_switch=KillSwitch(risk),
    )


@pytest.mark.parametrize("algorithm", ["PPO", "MaskablePPO"])
def test_the_actor_sees_and_does_what_the_env_does_on_the_same_history(algorithm) -> None:
    history = synthetic_history(markets=3, ticks=400, untrusted_share=0.05, seed=4)
    steps = 120
    model = policy_model(3, algorithm=algorithm, seed=2)
    env = KalshiTradingEnv(history, config=EnvConfig(episode_steps=steps))
    actor = actor_for(history.markets, model, algorithm=algorithm, episode_steps=steps)
    obs, _ = env.reset(options={"start_tick": 0})
    traded = 0
    for t in range(steps + 1):
        outcome = actor.decide(samples_of(history, t))
        assert outcome.observation.tobytes() == obs.tobytes(), t
        masks = env.action_masks()
        assert np.array_equal(outcome.masks.reshape(-1), masks), t
        if algorithm == "MaskablePPO":
            action, _ = model.predict(obs, deterministic=True, action_masks=masks)
        else:
            action, _ = model.predict(obs, deterministic=True)
        assert outcome.actions.tolist() == action.tolist(), t
        if t == steps:
            break
        obs, _, _, _, info = env.step(action)
        traded += traded_count(info)
        for j, market in enumerate(history.markets):
            row = outcome.rows[j]
            assert row.position_after_e2 == env.portfolio.position(market).net_e2, t
        assert outcome.rows[-1].cash_after_e4 == env.portfolio.cash_e6 // 100, t
        assert actor.portfolio.fees_paid_e4 == env.portfolio.fees_paid_e4
    assert traded > 0  # the comparison covered fills, not only holds


def test_the_actor_pays_the_fees_in_force_at_each_decision_as_the_env_does() -> None:
    """A fee change in the middle of the session (market 0's multiplier 1 → 0.5 at tick 12)
    and direct-member precision: the actor's fills, trade fees, rounding fees and cash equal
    the env's at every step, and market 0's fee for the same order drops at the change."""
    history = synthetic_history(markets=2, ticks=40, seed=6)
    change = FeeChange(int(history.times_ns[12]), FeeSchedule(multiplier=Fraction(1, 2)))
    config = EnvConfig(
        episode_steps=30,
        fees_by_market={history.markets[0]: FeeTimeline(changes=[change])},
        account_precision_e4=1,
    )
    buy_one = encode(ActionType.BUY_YES, 0)
    actor = PaperActor(
        markets=history.markets,
        policy=PolicyVersion(policy=Always(buy_one, 2), version=1, algorithm="PPO"),
        config=config,
        episode_steps=30,
        kill_switch=KillSwitch(LOOSE),
    )
    env = KalshiTradingEnv(history, config=config)
    env.reset(options={"start_tick": 0})
    fees_by_tick = {}
    for t in range(24):
        outcome = actor.decide(samples_of(history, t))
        _, _, _, _, info = env.step(outcome.actions)
        trades = trades_from_info(env.markets, info)
        assert [r.fee_e4 for r in outcome.rows] == [tr["fee_e4"] for tr in trades], t
        assert [r.quantity_filled_e2 for r in outcome.rows] == [tr["filled_e2"] for tr in trades]
        assert actor.portfolio.cash_e6 == env.portfolio.cash_e6, t
        assert actor.portfolio.rounding_fees_e6 == env.portfolio.rounding_fees_e6, t
        filled = outcome.rows[0].quantity_filled_e2
        if filled:
            legs, remaining = [], filled  # the NO bids the YES buy took, complemented
            for no_px, no_sz in zip(history.no_px[t, 0], history.no_sz[t, 0], strict=True):
                take = min(int(no_sz), remaining)
                legs.append((10_000 - int(no_px), take))
                remaining -= take
                if not remaining:
                    break
            fees_by_tick[t] = (legs, outcome.rows[0].fee_e4)
    before, after = FeeSchedule(), FeeSchedule(multiplier=Fraction(1, 2))
    assert any(t < 12 for t in fees_by_tick) and any(t >= 12 for t in fees_by_tick)
    for t, (legs, fee) in fees_by_tick.items():
        schedule = after if t >= 12 else before
        assert fee == sum(schedule.trade_fee_e4(p, s) for p, s in legs), t


def test_rewards_of_all_markets_sum_to_the_sessions_return() -> None:
    history = synthetic_history(markets=2, ticks=60, seed=1)
    actor = actor_for(history.markets, policy_model(2, seed=5))
    rewards = 0.0
    for t in range(60):
        rewards += sum(row.reward for row in actor.decide(samples_of(history, t)).rows)
    assert actor.stats.trades > 0
    expected = float(actor.equity_e6 / actor.initial_cash_e6) - 1.0
    assert rewards == pytest.approx(expected, abs=1e-12)
    assert actor.summary()["total_return"] == pytest.approx(expected, abs=1e-12)


def test_rows_say_what_was_asked_allowed_filled_and_refused() -> None:
    history = synthetic_history(markets=2, ticks=5, seed=2)
    history.trusted[:, 1] = False  # the second market's book is unknown
    buy_5 = encode(ActionType.BUY_YES, 1)
    actor = actor_for(history.markets, Always(buy_5, 2))
    rows = actor.decide(samples_of(history, 0)).rows
    traded, refused = rows
    assert (traded.action_type, traded.action_size, traded.quantity_filled_e2) == (
        "BUY_YES",
        5,
        500,
    )
    assert traded.refusal == "" and traded.fee_e4 > 0 and traded.position_after_e2 == 500
    assert traded.mask_bits >> buy_5 & 1 and traded.mask_bits & 0b11111 == 0b11111
    assert traded.price_e4 == 10_000 - history.no_px[0, 0, 0]  # the best NO bid, complemented
    assert (refused.refusal, refused.quantity_filled_e2, refused.price_e4) == ("untrusted", 0, None)
    assert refused.mask_bits == 0b11111  # only HOLD while the book is unknown


def test_the_kill_switch_turns_every_later_decision_into_a_hold_and_says_why() -> None:
    history = synthetic_history(markets=2, ticks=10, seed=3)
    policy = Always(encode(ActionType.BUY_YES, 1), 2)  # 5 contracts a time
    actor = actor_for(history.markets, policy, risk=RiskSettings(max_position_contracts=3))
    first = actor.decide(samples_of(history, 0))
    assert [r.quantity_filled_e2 for r in first.rows] == [500, 500]
    assert actor.kill_switch.engaged and not first.halted
    assert "5 contracts held > max 3" in actor.kill_switch.reason
    assert "RL_PAPER_MAX_POSITION_CONTRACTS" in actor.kill_switch.reason
    for t in range(1, 10):
        outcome = actor.decide(samples_of(history, t))
        assert outcome.halted
        assert outcome.actions.tolist() == policy.action.tolist()  # asked, logged, not done
        assert {r.refusal for r in outcome.rows} == {KILL_SWITCH}
        assert all(r.quantity_filled_e2 == 0 and r.position_after_e2 == 500 for r in outcome.rows)
    assert actor.kill_switch.as_dict()["engaged"] is True


def yes_bought(price_e4: int, size_e2: int) -> MarketPosition:
    """A position of ``size_e2`` YES bought at ``price_e4`` (no fee)."""
    return MarketPosition(yes_e2=size_e2, yes_cost_e6=price_e4 * size_e2)


def check_switch(
    read: str, switch: KillSwitch, portfolio: Portfolio, *, equity_e6x2: int, time_ns: int
) -> bool:
    """``switch.check`` on the view, or ``check_account`` on the arrays under it (the
    paper trader's hot path): the two must agree on every limit."""
    if read == "view":
        return switch.check(portfolio=portfolio, equity_e6x2=equity_e6x2, time_ns=time_ns)
    return switch.check_account(
        markets=portfolio.markets,
        pos=portfolio._pos,
        acct=portfolio._acct,
        equity_e6x2=equity_e6x2,
        time_ns=time_ns,
    )


@pytest.mark.parametrize("read", ["view", "arrays"])
def test_the_exposure_limit_engages_on_the_cost_of_open_contracts(read: str) -> None:
    switch = KillSwitch(RiskSettings(max_exposure_dollars=30))
    a = yes_bought(5_000, 5_000)  # 50 contracts at $0.50 = $25
    portfolio = Portfolio.of(cash_e6=975_000_000, positions={"A": a})
    assert not check_switch(read, switch, portfolio, equity_e6x2=2 * 10**9, time_ns=0)
    b = yes_bought(5_000, 2_000)  # + $10
    portfolio = Portfolio.of(cash_e6=965_000_000, positions={"A": a, "B": b})
    assert check_switch(read, switch, portfolio, equity_e6x2=2 * 10**9, time_ns=1)
    assert "exposure $35.00 > max $30.00" in switch.reason


@pytest.mark.parametrize("read", ["view", "arrays"])
def test_the_position_limit_names_the_market_over_it(read: str) -> None:
    switch = KillSwitch(RiskSettings(max_position_contracts=40))
    positions = {"A": yes_bought(5_000, 4_000), "B": MarketPosition(no_e2=4_001, no_cost_e6=1)}
    portfolio = Portfolio.of(cash_e6=10**9, positions=positions)
    assert check_switch(read, switch, portfolio, equity_e6x2=2 * 10**9, time_ns=0)
    assert switch.reason.startswith("B: 40.01 contracts held > max 40")


@pytest.mark.parametrize("read", ["view", "arrays"])
def test_the_daily_loss_counts_from_the_start_of_each_utc_day_and_latches(read: str) -> None:
    portfolio = Portfolio.of(cash_e6=1_000_000_000)
    switch = KillSwitch(RiskSettings(max_daily_loss_dollars=10))
    day = 86_400 * NS
    start = 20_000 * day + 3_600 * NS

    def check(equity_e6: int, time_ns: int) -> bool:
        return check_switch(read, switch, portfolio, equity_e6x2=2 * equity_e6, time_ns=time_ns)

    assert not check(1_000_000_000, start)
    assert not check(991_000_000, start + NS)
    # A new day: the $9 lost yesterday does not count; $9.99 today does not reach $10 ...
    next_day = start + day
    assert not check(991_000_000, next_day)
    assert not check(981_010_000, next_day + NS)
    # Half a micro-dollar short of $10 (equity is exact to $0.0000005) does not either ...
    assert not check_switch(
        read, switch, portfolio, equity_e6x2=2 * 981_000_000 + 1, time_ns=next_day + NS
    )
    # ... $10 does, and the switch stays on even if equity recovers.
    assert check(981_000_000, next_day + 2 * NS)
    assert "loss today $10.00 >= max $10.00" in switch.reason
    assert check(2_000_000_000, next_day + 3 * NS)


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_daily_loss_dollars must be > 0"):
        RiskSettings(max_daily_loss_dollars=0)
