"""Live samples and their history features are the env's, bit for bit."""

from __future__ import annotations

import numpy as np

from apps.marketdata.kalshi.book import OrderBook
from apps.simulation.env import EnvConfig, KalshiTradingEnv
from apps.simulation.features import HISTORY_CAPACITY, history_block
from apps.simulation.synthetic import synthetic_history
from apps.trading.sampling import BookSample, BookSampler, LiveHistory


def samples_of(history, t: int) -> BookSample:
    px = np.stack([history.yes_px[t], history.no_px[t]], axis=1).astype(np.int64)
    sz = np.stack([history.yes_sz[t], history.no_sz[t]], axis=1).astype(np.int64)
    return BookSample(
        time_ns=int(history.times_ns[t]),
        px=px,
        sz=sz,
        trusted=history.trusted[t].copy(),
        updates=history.updates[t].astype(np.int64),
    )


def test_live_history_equals_the_envs_precomputed_rows_at_every_tick() -> None:
    # Longer than the ring, with untrusted stretches (NaN mids) and varying update counts.
    history = synthetic_history(markets=3, ticks=2 * HISTORY_CAPACITY + 50, untrusted_share=0.1)
    rng = np.random.default_rng(7)
    for sizes in (history.yes_sz, history.no_sz):  # fractional contracts, as Kalshi has
        sizes[sizes > 0] -= rng.integers(0, 100, size=int((sizes > 0).sum()))
    env = KalshiTradingEnv(history, config=EnvConfig(episode_steps=10))
    # What the env's precompute feeds its observation rows (history_block of its arrays).
    env_rows = history_block(env._px[:, :3], env._sz[:, :3], env._trusted[:, :3], history.updates)
    live = LiveHistory(3)
    for t in range(history.n_ticks):
        rows = live.push(samples_of(history, t))
        assert rows.tobytes() == env_rows[t].tobytes(), t
    assert np.abs(env_rows[:, :, :4]).max() > 0  # mid changes were exercised


def test_the_sampler_reads_the_top_ten_levels_best_first_and_counts_updates() -> None:
    book = OrderBook("M")
    book.apply_snapshot(
        [(100 * p, 100 + p) for p in range(1, 15)], [(100 * p, 200 + p) for p in range(1, 13)]
    )
    other = OrderBook("N")
    sampler = BookSampler(2)
    first = sampler.sample([book, other], [True, False], time_ns=5)
    assert first.px[0, 0].tolist() == [100 * p for p in range(14, 4, -1)]
    assert first.sz[0, 0].tolist() == [100 + p for p in range(14, 4, -1)]
    assert first.px[0, 1].tolist() == [100 * p for p in range(12, 2, -1)]
    assert first.updates.tolist() == [1, 0]
    # An untrusted book samples as zeros whatever it holds.
    other.apply_snapshot([(4000, 100)], [(5000, 100)])
    book.apply_delta("yes", 1400, -114)
    book.apply_delta("no", 1300, 5)
    second = sampler.sample([book, other], [True, False], time_ns=6)
    assert second.px[0, 0, 0] == 1300 and second.px[0, 1, 0] == 1300
    assert second.updates.tolist() == [2, 1]
    assert not second.px[1].any() and not second.sz[1].any()
    assert second.trusted.tolist() == [True, False]


def test_the_sampler_rereads_exactly_the_books_that_changed_since_its_last_sample() -> None:
    # The sampler keeps its rows and re-reads a book only when its update count, its object
    # or its trust changed: every sample must still equal a fresh sampler's full reading.
    rng = np.random.default_rng(3)
    books = [OrderBook(f"M{j}") for j in range(4)]
    for book in books:
        book.apply_snapshot([(4000, 100), (3900, 50)], [(5000, 100)])
    trusted = [True] * 4
    sampler = BookSampler(4)
    for step in range(300):
        j = int(rng.integers(0, 4))
        event = int(rng.integers(0, 6))
        if event == 0:
            trusted[j] = not trusted[j]  # trust flips, the levels do not
        elif event == 1:
            books[j] = OrderBook(books[j].market_ticker)  # a new book object, count 0 again
            books[j].apply_snapshot([(int(rng.integers(1, 49)) * 100, 10)], [])
        elif event == 2:
            books[j].clear()
        else:
            side = "yes" if event == 3 else "no"
            price = int(rng.integers(1, 50)) * 100
            resting = books[j].yes_levels if side == "yes" else books[j].no_levels
            books[j].apply_delta(side, price, -resting[price] if price in resting else 7)
        sample = sampler.sample(books, trusted, time_ns=step)
        fresh = BookSampler(4).sample(books, trusted, time_ns=step)
        assert sample.px.tolist() == fresh.px.tolist(), step
        assert sample.sz.tolist() == fresh.sz.tolist(), step
        assert sample.trusted.tolist() == trusted, step
    # Samples are fresh arrays: a later sample does not rewrite an earlier one.
    kept = sampler.sample(books, trusted, time_ns=1_000)
    before = kept.px.copy()
    books[0].apply_snapshot([(1234, 5)], [(4321, 6)])
    sampler.sample(books, [True] * 4, time_ns=1_001)
    assert kept.px.tolist() == before.tolist()
