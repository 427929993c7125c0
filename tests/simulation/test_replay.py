"""The compiled replay (HistoryBuilder on price grids) against a plain OrderBook replay.

The oracle below is the rule book written the slow, obvious way: apply each event to an
``OrderBook`` in receive order and read every book at every tick. Random streams mix valid
deltas with out-of-sequence ones, other connections and sids, negative-going sizes, crossing
adds, bad snapshots and gap / resync markers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest

from apps.marketdata.kalshi.book import BookError, OrderBook
from apps.simulation.history import HistoryBuilder

NS = 1_000_000_000
LEVELS = 4


@dataclass
class RefMarket:
    book: OrderBook
    trusted: bool = False
    conn: object = None
    sid: int = -1
    seq: int = -1
    updates: int = 0
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("snapshots", "deltas_applied", "deltas_skipped_untrusted", "book_errors", "crossed",
         "gaps", "resets"), 0))  # fmt: skip

    def untrust(self) -> None:
        self.trusted = False
        self.book.clear()


def reference(markets, events, start, n_ticks):
    refs = [RefMarket(OrderBook(m)) for m in markets]
    shape = (n_ticks, len(markets), LEVELS)
    out = {
        "yes_px": np.zeros(shape, np.int64),
        "yes_sz": np.zeros(shape, np.int64),
        "no_px": np.zeros(shape, np.int64),
        "no_sz": np.zeros(shape, np.int64),
        "trusted": np.zeros(shape[:2], bool),
        "updates": np.zeros(shape[:2], np.int64),
    }
    i = 0
    for k in range(n_ticks):
        tick_ns = start + k * NS
        while i < len(events) and events[i][0] <= tick_ns:
            apply(refs, markets, events[i])
            i += 1
        for j, ref in enumerate(refs):
            out["updates"][k, j] = ref.updates
            ref.updates = 0
            out["trusted"][k, j] = ref.trusted
            if ref.trusted:
                for side in ("yes", "no"):
                    for n, (p, s) in enumerate(ref.book.depth(side, LEVELS)):
                        out[f"{side}_px"][k, j, n] = p
                        out[f"{side}_sz"][k, j, n] = s
    for event in events[i:]:  # after the last tick: only the counts see them
        apply(refs, markets, event)
    return out, refs


def apply(refs, markets, event):
    kind = event[1]
    if kind == "snapshot":
        _, _, j, conn, sid, seq, yes, no = event
        ref = refs[j]
        try:
            ref.book.apply_snapshot(yes, no)
        except BookError:
            ref.counts["book_errors"] += 1
            ref.untrust()
            return
        ref.counts["snapshots"] += 1
        ref.trusted, ref.conn, ref.sid, ref.seq = True, conn, sid, seq
        ref.updates += 1
    elif kind == "delta":
        _, _, j, conn, sid, seq, is_yes, price, delta = event
        ref = refs[j]
        if not ref.trusted or seq <= ref.seq or sid != ref.sid or conn != ref.conn:
            ref.counts["deltas_skipped_untrusted"] += 1
            return
        side = "yes" if is_yes else "no"
        try:
            ref.book.apply_delta(side, price, delta)
        except BookError:
            ref.counts["book_errors"] += 1
            ref.untrust()
            return
        ref.seq = seq
        ref.updates += 1
        ref.counts["deltas_applied"] += 1
        if delta > 0 and ref.book.is_crossed():
            ref.counts["crossed"] += 1
            ref.untrust()
    else:  # marker
        _, _, marker, conn, sid = event
        for ref in refs:
            if ref.conn != conn or not ref.trusted:
                continue
            if marker == "gap" and ref.sid != sid:
                continue
            ref.counts["gaps" if marker == "gap" else "resets"] += 1
            ref.untrust()


def random_stream(rng: np.random.Generator, n_markets: int, start: int, n_ticks: int):
    """Events in receive order; prices on a 1-cent or 0.1-cent grid, a few levels a side.

    A rough model of each book steers most deltas to existing levels (so they apply and
    move the best bid both ways); the rest are errors, stale frames and crossing adds.
    """
    events = []
    seqs: dict[int, int] = {}
    model: dict[tuple[int, int], dict[int, int]] = {}
    t = start - NS
    tick = [100, 10][int(rng.integers(2))]
    for _ in range(int(rng.integers(100, 500))):
        t += int(rng.integers(0, NS // 4))
        j = int(rng.integers(n_markets))
        conn = [b"a", b"b"][int(rng.random() < 0.05)]
        sid = 1 + int(rng.random() < 0.03)
        roll = rng.random()
        if roll < 0.05 or j not in seqs:
            mid = int(rng.integers(30, 70)) * 100
            yes = [(mid - tick * (1 + i), int(rng.integers(1, 500)) * 100) for i in range(5)]
            no = [(10_000 - mid - tick * (1 + i), int(rng.integers(1, 500))) for i in range(5)]
            model[j, 0], model[j, 1] = dict(yes), dict(no)
            if rng.random() < 0.1:
                yes.append(yes[0])  # a duplicate level: the snapshot is refused
            seqs[j] = int(rng.integers(0, 5))
            events.append((t, "snapshot", j, conn, sid, seqs[j], yes, no))
            continue
        if roll < 0.07:
            events.append((t, "marker", ["gap", "resync"][int(rng.integers(2))], conn, sid))
            continue
        seq = seqs[j] + (1 if rng.random() < 0.97 else -1)
        seqs[j] = seq
        side = int(rng.integers(2))
        levels = model[j, side]
        pick = rng.random()
        if pick < 0.45 and levels:  # reduce or remove an existing level
            price = list(levels)[int(rng.integers(len(levels)))]
            delta = -levels[price] if rng.random() < 0.4 else -int(rng.integers(0, levels[price]))
        elif pick < 0.97:  # add at or near the top (sometimes above the best: a new best)
            best = max(levels, default=4_000)
            price = best + tick * int(rng.integers(-4, 3))
            delta = int(rng.integers(1, 300)) * 10
        else:  # a size that would go negative, or an add that crosses the book
            price = int(rng.integers(1, 10_000 // tick)) * tick
            delta = int(rng.integers(-300, 300)) * 10
        if 0 < price < 10_000:
            levels[price] = levels.get(price, 0) + delta
            if levels[price] <= 0:
                del levels[price]
        events.append((t, "delta", j, b"a", 1, seq, side == 0, price, delta))
    return events


def feed(builder: HistoryBuilder, markets, events) -> None:
    for event in events:
        if event[1] == "snapshot":
            ts, _, j, conn, sid, seq, yes, no = event
            builder.snapshot(
                ts, markets[j], connection=conn, as_of_sid=sid, as_of_seq=seq, yes=yes, no=no
            )
        elif event[1] == "delta":
            ts, _, j, conn, sid, seq, is_yes, price, delta = event
            builder.deltas([ts], [j], [conn], [sid], [seq], [is_yes], [price], [delta])
        else:
            ts, _, marker, conn, sid = event
            builder.marker(ts, kind=marker, connection=conn, sid=sid)


@pytest.mark.parametrize("seed", range(40))
def test_the_compiled_replay_equals_an_order_book_replay(seed: int) -> None:
    rng = np.random.default_rng(seed)
    markets = ["A", "B", "C"][: int(rng.integers(1, 4))]
    start, n_ticks = 10 * NS, 60
    events = random_stream(rng, len(markets), start, n_ticks)
    expected, refs = reference(markets, events, start, n_ticks)
    builder = HistoryBuilder(
        markets, start_ns=start, end_ns=start + n_ticks * NS, step_ns=NS, levels=LEVELS
    )
    feed(builder, markets, events)
    history = builder.finish()
    for name, want in expected.items():
        got = getattr(history, name)
        assert np.array_equal(got, want), (name, np.argwhere(got != want)[:3])
    for ref, market in zip(refs, markets, strict=True):
        quality = history.quality[market]
        for name, count in ref.counts.items():
            assert getattr(quality, name) == count, (market, name)
    # The streams exercise every rule.
    assert expected["trusted"].any()
    assert any(ref.counts["deltas_applied"] for ref in refs)


def test_the_streams_reach_every_rule() -> None:
    totals: dict[str, int] = {}
    for seed in range(40):
        rng = np.random.default_rng(seed)
        markets = ["A", "B", "C"][: int(rng.integers(1, 4))]
        _, refs = reference(markets, random_stream(rng, len(markets), 10 * NS, 60), 10 * NS, 60)
        for ref in refs:
            for name, count in ref.counts.items():
                totals[name] = totals.get(name, 0) + count
    assert all(totals.values()), totals


def test_deltas_given_as_arrays_equal_deltas_given_as_lists() -> None:
    rng = np.random.default_rng(3)
    events = random_stream(rng, 2, 10 * NS, 30)
    deltas = [e for e in events if e[1] == "delta"]
    snap = next(e for e in events if e[1] == "snapshot")
    results = []
    for as_arrays in (False, True):
        builder = HistoryBuilder(["A", "B"], start_ns=10 * NS, end_ns=40 * NS, step_ns=NS)
        for j in range(2):
            builder.snapshot(
                snap[0], "AB"[j], connection=b"a", as_of_sid=1, as_of_seq=0, yes=snap[6], no=[]
            )
        cols = list(zip(*(e[:1] + e[2:] for e in deltas), strict=True))
        if as_arrays:
            conn = [builder.connection_id(c) for c in cols[2]]
            builder.deltas_arrays(*(np.array(c) for c in ([*cols[:2], conn, *cols[3:]])))
        else:
            builder.deltas(*cols)
        results.append(builder.finish())
    for name in ("yes_px", "yes_sz", "no_px", "no_sz", "trusted", "updates"):
        assert np.array_equal(getattr(results[0], name), getattr(results[1], name))
    assert results[0].updates.sum() > 2
