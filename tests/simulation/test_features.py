"""The one observation builder: layout, names, bounds, padding, and identical vectors on both
paths (a live OrderBook and the env's arrays)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apps.simulation import features
from apps.simulation.books import BOOK_LEVELS, book_to_arrays
from apps.simulation.features import (
    FEATURES_PER_MARKET,
    HISTORY_CAPACITY,
    MARKET_FEATURE_NAMES,
    N_FEATURES,
    N_HISTORY,
    N_MARKETS,
    OBSERVATION_SPEC_VERSION,
    MarketBatch,
    MarketHistory,
    MarketState,
    PortfolioState,
    book_features,
    book_stats,
    build_observation,
    build_observation_batch,
    feature_names,
    history_summaries,
    static_features,
)
from apps.simulation.portfolio import MarketPosition
from apps.simulation.tick_features import tick_static_features
from tests.simulation import book_from, ladders

NAMES = feature_names()
INDEX = {name: i for i, name in enumerate(NAMES)}
CASH = PortfolioState(cash_e6=1_000_000_000, initial_cash_e6=1_000_000_000)
# The §4 snapshot's top: YES bids 0.29/0.30, NO bids 0.68/0.69 (YES ask 0.31, NO ask 0.70).
YES = {2_900: 7_910_183, 3_000: 10_970_666}
NO = {6_800: 11_198_651, 6_900: 13_650_849}


def quiet_history() -> np.ndarray:
    return np.zeros(N_HISTORY)


def state(book, **kw) -> MarketState:
    kw.setdefault("history", quiet_history())
    kw.setdefault("seconds_to_close", 3_600.0)
    return MarketState.from_book(book, **kw)


def arrays_from(ladder: dict[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Top-K arrays built straight from a ladder dict (not through book_to_arrays)."""
    best = sorted(ladder.items(), reverse=True)[:BOOK_LEVELS]
    px = np.zeros(BOOK_LEVELS, np.int64)
    sz = np.zeros(BOOK_LEVELS, np.int64)
    for i, (p, s) in enumerate(best):
        px[i], sz[i] = p, s
    return px, sz


def market(obs: np.ndarray, slot: int = 0) -> dict[str, float]:
    block = obs[slot * FEATURES_PER_MARKET : (slot + 1) * FEATURES_PER_MARKET]
    return dict(zip(MARKET_FEATURE_NAMES, block.tolist(), strict=True))


# -- layout ---------------------------------------------------------------------------------


def test_the_layout_is_10_markets_of_54_plus_5_portfolio_features() -> None:
    assert OBSERVATION_SPEC_VERSION == 1
    assert N_FEATURES == 545 == N_MARKETS * FEATURES_PER_MARKET + 5
    assert len(MARKET_FEATURE_NAMES) == FEATURES_PER_MARKET == 54
    assert len(NAMES) == 545 and len(set(NAMES)) == 545
    assert NAMES[0] == "m0.present" and NAMES[54] == "m1.present"
    assert NAMES[540:] == [
        "portfolio.cash",
        "portfolio.exposure",
        "portfolio.fees_paid",
        "portfolio.drawdown",
        "portfolio.progress",
    ]
    assert features.book_features(
        np.zeros((2, BOOK_LEVELS), np.int64),
        np.zeros((2, BOOK_LEVELS), np.int64),
        np.zeros(N_HISTORY),
        np.bool_(True),
    ).shape == (features.N_BOOK_FEATURES,)


def test_the_module_docstring_documents_every_feature() -> None:
    doc = features.__doc__
    for name in (*MARKET_FEATURE_NAMES, *features.PORTFOLIO_FEATURE_NAMES):
        stem = name.rstrip("0123456789").rstrip("_")
        assert f"``{name}``" in doc or stem in doc, name


# -- values ---------------------------------------------------------------------------------


def test_top_of_book_features_of_the_protocol_example() -> None:
    obs = build_observation([state(book_from(YES, NO))], CASH)
    m = market(obs)
    assert (m["present"], m["trusted"], m["open"], m["has_yes_bid"], m["has_no_bid"]) == (1,) * 5
    assert m["mid"] == pytest.approx(2 * 0.305 - 1)
    assert m["spread"] == pytest.approx(0.01 / 0.10)
    assert m["yes_bid"] == pytest.approx(2 * 0.30 - 1)
    assert m["yes_ask"] == pytest.approx(2 * 0.31 - 1)
    assert m["no_bid"] == pytest.approx(2 * 0.69 - 1)
    assert m["no_ask"] == pytest.approx(2 * 0.70 - 1)
    yes_size, no_size = 109_706.66, 136_508.49
    imbalance = (yes_size - no_size) / (yes_size + no_size)
    assert m["imbalance_1"] == pytest.approx(imbalance, rel=1e-6)
    micro = (0.30 * no_size + 0.31 * yes_size) / (yes_size + no_size)
    assert m["microprice_offset"] == pytest.approx((micro - 0.305) / 0.05, rel=1e-5)
    assert m["yes_size_1"] == pytest.approx(np.log1p(yes_size) / np.log1p(1e6))
    assert m["yes_gap_2"] == pytest.approx(0.01 / 0.10)
    assert m["yes_gap_3"] == 1.0  # no third level
    assert m["time_to_close_1h"] == 1.0
    assert m["time_to_close_log"] == pytest.approx(np.log1p(3_600) / np.log1p(30 * 86_400))
    assert obs[540:].tolist() == [0.0] * 5


def test_a_one_sided_book_has_no_mid_spread_or_implied_ask() -> None:
    m = market(build_observation([state(book_from(YES, {}))], CASH))
    assert (m["has_yes_bid"], m["has_no_bid"]) == (1.0, 0.0)
    assert m["mid"] == m["spread"] == m["yes_ask"] == m["no_bid"] == 0.0
    assert m["no_ask"] == pytest.approx(2 * 0.70 - 1)
    assert m["imbalance_1"] == 1.0


def test_position_features_mark_yes_at_mid_and_no_at_one_minus_mid() -> None:
    book = book_from(YES, NO)  # mid 0.305
    long_yes = MarketPosition(yes_e2=1_000, yes_cost_e6=10 * 400_000)  # 10 @ 0.40
    long_no = MarketPosition(no_e2=1_000, no_cost_e6=10 * 600_000)  # 10 NO @ 0.60
    pf = PortfolioState(cash_e6=100_000_000, initial_cash_e6=100_000_000, max_position_e2=2_000)
    obs = build_observation([state(book, position=long_yes), state(book, position=long_no)], pf)
    yes, no = market(obs, 0), market(obs, 1)
    assert yes["net_position"] == pytest.approx(0.5) and no["net_position"] == pytest.approx(-0.5)
    assert yes["avg_entry"] == pytest.approx(2 * 0.40 - 1)
    assert yes["unrealized_per_contract"] == pytest.approx(0.305 - 0.40)
    assert no["unrealized_per_contract"] == pytest.approx(0.695 - 0.60)
    # −$0.95 on $100 starting cash, scaled by 10 % of it.
    assert yes["unrealized"] == pytest.approx(-0.95 / 10)
    assert yes["exposure"] == pytest.approx(4 / 100)


def test_portfolio_features_scale_by_the_starting_cash() -> None:
    pf = PortfolioState(
        cash_e6=60_000_000,
        initial_cash_e6=100_000_000,
        exposure_e6=30_000_000,
        fees_paid_e4=5_000,  # $0.50 of a $1 scale
        drawdown=0.25,
        progress=0.5,
    )
    assert build_observation([], pf)[540:].tolist() == pytest.approx([-0.4, 0.3, 0.5, 0.25, 0.5])


def test_absent_slots_are_all_zeros_even_over_stale_data() -> None:
    book = book_from(YES, NO)
    batch = MarketBatch.from_states([state(book)] * N_MARKETS)
    batch.set(1, None)
    obs = build_observation_batch(batch, CASH)
    assert not obs[54:108].any()
    padded = build_observation([state(book), None, state(book)], CASH)
    assert market(padded, 0)["present"] == market(padded, 2)["present"] == 1.0
    assert not padded[54:108].any() and not padded[3 * 54 : 540].any()
    assert np.array_equal(obs[:54], padded[:54])


def test_an_untrusted_book_shows_only_status_time_and_position() -> None:
    pos = MarketPosition(yes_e2=500, yes_cost_e6=2_000_000)
    history = np.full(N_HISTORY, 0.01)
    m = market(
        build_observation(
            [state(book_from(YES, NO), trusted=False, position=pos, history=history)], CASH
        )
    )
    book_and_history = MARKET_FEATURE_NAMES[3:47]
    assert all(m[name] == 0.0 for name in book_and_history)
    assert (m["present"], m["trusted"], m["open"]) == (1.0, 0.0, 1.0)
    assert m["net_position"] > 0 and m["avg_entry"] != 0 and m["exposure"] > 0
    assert m["unrealized_per_contract"] == 0.0  # no trusted mark


def test_each_call_returns_a_fresh_array() -> None:
    batch = MarketBatch.from_states([state(book_from(YES, NO))])
    first = build_observation_batch(batch, CASH)
    first[:] = 7.0
    second = build_observation_batch(batch, CASH)
    assert second.dtype == np.float32 and second.shape == (545,)
    assert second[0] == 1.0
    for field in ("px", "sz", "history", "seconds_to_close", "cost_e6"):
        assert not np.shares_memory(second, getattr(batch, field))


def test_bad_inputs_get_clear_errors() -> None:
    px, sz = arrays_from(YES)
    with pytest.raises(ValueError, match="shape"):
        MarketState.from_arrays(px[:5], sz[:5], px, sz, history=quiet_history(), seconds_to_close=1)
    with pytest.raises(ValueError, match="finite"):
        MarketState.from_arrays(
            px, sz, px, sz, history=np.full(N_HISTORY, np.nan), seconds_to_close=1
        )
    swapped = px.copy()
    swapped[:2] = swapped[1::-1]  # 0.29 before 0.30
    with pytest.raises(ValueError, match="descending"):
        MarketState.from_arrays(swapped, sz, px, sz, history=quiet_history(), seconds_to_close=1)
    with pytest.raises(ValueError, match="positive"):
        PortfolioState(cash_e6=0, initial_cash_e6=0)
    batch = MarketBatch.from_states([state(book_from(YES, NO))])
    batch.history[0, 0] = np.nan
    with pytest.raises(ValueError, match=r"m0\.mid_change_1"):
        build_observation_batch(batch, CASH)
    with pytest.raises(ValueError, match="at most"):
        MarketBatch.from_states([None] * 11)


# -- bounds and identity on random and extreme books -----------------------------------------

extreme_ladders = st.one_of(
    ladders,
    st.dictionaries(
        st.sampled_from([0, 1, 9_999, 10_000]), st.sampled_from([1, 10**12, 10**15]), max_size=4
    ),
)


def with_counts_non_negative(values: list[float]) -> np.ndarray:
    """Raw history values; the update counts (entries 4..7) are never negative."""
    history = np.array(values)
    history[4:8] = np.abs(history[4:8])
    return history


histories = st.lists(
    st.floats(min_value=-1e12, max_value=1e12, allow_nan=False),
    min_size=N_HISTORY,
    max_size=N_HISTORY,
).map(with_counts_non_negative)
positions = st.builds(
    lambda held, cost, side: MarketPosition(
        yes_e2=held if side else 0,
        no_e2=0 if side else held,
        yes_cost_e6=cost if side else 0,
        no_cost_e6=0 if side else cost,
    ),
    st.integers(0, 10**12),
    st.integers(0, 10**16),
    st.booleans(),
)
market_states = st.tuples(
    extreme_ladders,
    extreme_ladders,
    histories,
    st.floats(min_value=-1e10, max_value=1e10, allow_nan=False),  # seconds to close
    st.booleans(),  # trusted
    st.booleans(),  # open
    positions,
)
portfolios = st.builds(
    PortfolioState,
    cash_e6=st.integers(0, 10**16),
    initial_cash_e6=st.integers(1, 10**16),
    exposure_e6=st.integers(0, 10**16),
    fees_paid_e4=st.integers(0, 10**12),
    drawdown=st.floats(0, 1),
    progress=st.floats(0, 1),
    max_position_e2=st.integers(1, 10**9),
)


@settings(max_examples=250, deadline=None)
@given(st.lists(st.one_of(st.none(), market_states), max_size=N_MARKETS), portfolios)
def test_observations_stay_in_bounds_and_match_on_both_paths(markets, portfolio) -> None:
    from_books, from_arrays = [], []
    for spec in markets:
        if spec is None:
            from_books.append(None)
            from_arrays.append(None)
            continue
        yes, no, history, seconds, trusted, is_open, pos = spec
        kw = {
            "history": history,
            "seconds_to_close": seconds,
            "trusted": trusted,
            "is_open": is_open,
            "position": pos,
        }
        from_books.append(MarketState.from_book(book_from(yes, no), **kw))
        from_arrays.append(MarketState.from_arrays(*arrays_from(yes), *arrays_from(no), **kw))
    obs = build_observation(from_books, portfolio)
    assert obs.shape == (545,) and obs.dtype == np.float32
    assert np.isfinite(obs).all()
    assert obs.min() >= -1.0 and obs.max() <= 1.0
    assert np.array_equal(obs, build_observation(from_arrays, portfolio))
    # The env's path: static_features over a leading time axis (its per-tick precompute)
    # gives the same bits as the per-call static part of the observation.
    batch = MarketBatch.from_states(from_arrays)
    assert obs.tobytes() == build_observation_batch(batch, portfolio).tobytes()
    fields = ("px", "sz", "history", "trusted", "present", "is_open", "seconds_to_close")
    rows = static_features(*(np.stack([getattr(batch, f)] * 3) for f in fields))
    static_part = obs[:540].reshape(N_MARKETS, 54).copy()
    static_part[:, 49:54] = 0.0  # the account's part, written by the kernel
    assert rows[2].tobytes() == static_part.tobytes()
    for slot in range(len(markets), N_MARKETS):
        assert not obs[slot * 54 : (slot + 1) * 54].any()


def test_static_features_give_the_same_bits_per_tick_and_per_history_for_signed_zeros() -> None:
    # −0.0 seconds to close (and NaN, and the past) must come out as the same +0.0 whether
    # the row is computed alone (paper trader) or inside a long history (env precompute).
    batch = MarketBatch.empty()
    batch.present[:] = True
    batch.trusted[:] = True
    batch.seconds_to_close[:] = [-0.0, 0.0, -0.0, np.nan, -5.0, -0.0, 3.0, -0.0, -0.0, 1e-9]
    fields = ("px", "sz", "history", "trusted", "present", "is_open", "seconds_to_close")
    alone = static_features(*(getattr(batch, f) for f in fields))
    for ticks in (1, 3, 7, 64):
        rows = static_features(*(np.stack([getattr(batch, f)] * ticks) for f in fields))
        for row in rows:
            assert row.tobytes() == alone.tobytes(), ticks
    time_log = alone[:, features._C_TIME]
    assert not np.signbit(time_log[[0, 1, 2, 3, 4, 5, 7, 8]]).any()


def test_the_compiled_tick_features_equal_static_features_bit_for_bit() -> None:
    """``tick_static_features`` (the paper trader's per-decision path) against the env's numpy
    ``static_features`` on random ladders (thin, deep, fractional, at the $0/$1 edges, empty
    sides), untrusted and absent slots, signed-zero and NaN times, random history values."""
    rng = np.random.default_rng(11)
    fields = ("px", "sz", "history", "trusted", "present", "is_open", "seconds_to_close")
    checked = 0
    for _ in range(300):
        batch = MarketBatch.empty()
        for m in range(N_MARKETS):
            for side in range(2):
                n = int(rng.integers(0, BOOK_LEVELS + 1))
                top = 10_000 if rng.random() < 0.1 else int(rng.integers(0, 10_001))
                prices = np.sort(rng.choice(top + 1, size=min(n, top + 1), replace=False))[::-1]
                batch.px[m, side, : len(prices)] = prices
                high = 10 ** int(rng.integers(1, 10))
                batch.sz[m, side, : len(prices)] = rng.integers(1, high, size=len(prices))
        batch.history[:] = rng.normal(scale=0.3, size=(N_MARKETS, N_HISTORY))
        batch.history[:, 4:8] = rng.integers(0, 10**5, size=(N_MARKETS, 4))
        batch.present[:] = rng.random(N_MARKETS) < 0.8
        batch.trusted[:] = rng.random(N_MARKETS) < 0.8
        batch.is_open[:] = rng.random(N_MARKETS) < 0.9
        batch.seconds_to_close[:] = rng.choice(
            [-0.0, 0.0, np.nan, -5.0, 1e-9, 59.5, 3_600.0, 4e6, 1e12], size=N_MARKETS
        )
        args = [getattr(batch, f) for f in fields]
        expected = static_features(*args)
        got = np.empty_like(expected)
        assert not tick_static_features(*args, features._TICK_SCALES, got)
        assert got.tobytes() == expected.tobytes()
        checked += int(batch.present.sum())
    assert checked > 2_000


def test_book_features_over_a_whole_history_equal_per_step_rows() -> None:
    rng = np.random.default_rng(7)
    steps = 40
    px = np.zeros((steps, N_MARKETS, 2, BOOK_LEVELS), np.int64)
    sz = np.zeros_like(px)
    for t in range(steps):
        for m in range(N_MARKETS):
            for side in range(2):
                n = rng.integers(0, BOOK_LEVELS + 1)
                prices = np.sort(rng.choice(10_001, size=n, replace=False))[::-1]
                px[t, m, side, :n] = prices
                sz[t, m, side, :n] = rng.integers(1, 10**8, size=n)
    history = rng.normal(size=(steps, N_MARKETS, N_HISTORY))
    history[..., 4:8] = rng.integers(0, 500, size=(steps, N_MARKETS, 4))
    trusted = rng.random((steps, N_MARKETS)) < 0.8
    whole = book_features(px, sz, history, trusted)
    for t in range(steps):
        assert np.array_equal(whole[t], book_features(px[t], sz[t], history[t], trusted[t]))


# -- rolling history ------------------------------------------------------------------------


def test_history_changes_counts_and_volatility_on_a_known_series() -> None:
    mid = np.array([0.50, 0.52, 0.50, 0.52, 0.50, 0.52, 0.55])
    spread = np.array([0.02, 0.02, 0.02, 0.02, 0.02, 0.03, 0.01])
    updates = np.array([1, 2, 3, 4, 5, 6, 7])
    depth = np.array([9.0, 9, 9, 9, 9, 9, 99])
    rows = history_summaries(mid, spread, updates, depth, depth * 2)
    last = dict(zip(features.HISTORY_NAMES, rows[-1], strict=True))
    assert last["mid_change_1"] == pytest.approx(0.03)
    assert last["mid_change_5"] == pytest.approx(0.55 - 0.52)
    assert last["mid_change_30"] == 0.0  # not enough history
    assert last["updates_1"] == 7 and last["updates_5"] == 3 + 4 + 5 + 6 + 7
    assert last["updates_30"] == last["updates_300"] == 28
    diffs = np.diff(mid)
    assert last["mid_vol_30"] == pytest.approx(diffs.std())
    assert last["spread_change_5"] == pytest.approx(0.01 - 0.02)
    assert last["yes_depth_change_5"] == pytest.approx(np.log1p(99) - np.log1p(9))
    assert rows[0].tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0]


def test_unknown_mids_contribute_no_change() -> None:
    mid = np.array([0.5, np.nan, 0.6, 0.7])
    rows = history_summaries(mid, mid, np.zeros(4, int), mid, mid)
    assert rows[1, 0] == 0.0 and rows[2, 0] == 0.0 and rows[3, 0] == pytest.approx(0.1)
    assert np.isfinite(rows).all()


def random_series(rng: np.random.Generator, n: int) -> tuple[np.ndarray, ...]:
    mid = rng.random(n)
    mid[rng.random(n) < 0.1] = np.nan  # untrusted or one-sided steps
    spread = rng.random(n) * 0.1
    spread[np.isnan(mid)] = np.nan
    updates = rng.integers(0, 50, n)
    yes_depth = rng.random(n) * 1e4
    no_depth = rng.random(n) * 1e4
    return mid, spread, updates, yes_depth, no_depth


def test_the_ring_buffer_gives_the_batch_numbers_before_and_after_it_wraps() -> None:
    rng = np.random.default_rng(11)
    n = HISTORY_CAPACITY + 120
    series = random_series(rng, n)
    rows = history_summaries(*series)
    ring = MarketHistory()
    assert np.array_equal(ring.summary(), np.zeros(N_HISTORY))
    for t in range(n):
        ring.push(
            mid=series[0][t],
            spread=series[1][t],
            updates=int(series[2][t]),
            yes_depth=series[3][t],
            no_depth=series[4][t],
        )
        if t % 7 == 0 or t > n - 5:
            assert np.array_equal(ring.summary(), rows[t]), t
    assert len(ring) == HISTORY_CAPACITY


def test_history_at_t_never_reads_later_samples() -> None:
    rng = np.random.default_rng(3)
    series = random_series(rng, 400)
    before = history_summaries(*series)
    changed = tuple(s.copy() for s in series)
    for s in changed:
        s[250:] = s[250:][::-1] + 1
    after = history_summaries(*changed)
    assert np.array_equal(before[:250], after[:250])
    assert not np.array_equal(before[250:], after[250:])


def test_push_book_reads_the_book_like_book_stats() -> None:
    book = book_from(YES, NO)
    ring = MarketHistory()
    ring.push_book(book, updates=3)
    ring.push_book(book, updates=1, trusted=False)
    mid, spread, yes_depth, no_depth = book_stats(*book_to_arrays(book))
    assert mid == pytest.approx(0.305) and spread == pytest.approx(0.01)
    assert yes_depth == pytest.approx((7_910_183 + 10_970_666) / 100)
    expected = history_summaries(
        np.array([mid, np.nan]),
        np.array([spread, np.nan]),
        np.array([3, 1]),
        np.array([yes_depth, np.nan]),
        np.array([no_depth, np.nan]),
    )
    assert np.array_equal(ring.summary(), expected[-1])
