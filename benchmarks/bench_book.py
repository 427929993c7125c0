"""Benchmark: parse + validate + apply Kalshi orderbook frames, against stdlib json.loads.

Run from anywhere: ``.venv/bin/python benchmarks/bench_book.py [--frames N] [--repeat R]``.

The frames are recorded-shaped current-format messages (kalshi-protocol.md §4): one sid shared
by several markets, seq rising by one per frame, sub-cent prices on a tapered grid, fractional
sizes, ``ts``/``ts_ms``/``sending_ts_ms`` like the real feed, and a fresh snapshot every few
thousand deltas. Deltas are generated against a model book so every one applies cleanly, and
the final books are checked against that model, so a fast but wrong decoder cannot pass.

Measured in the same process, best of ``--repeat`` runs:
  (a) ``json.loads`` of every frame (the baseline: no validation, no units, no book);
  (b) ``FrameDecoder.decode`` only;
  (c) decode + ``OrderBook.apply_delta`` / ``apply_snapshot``;
  (d) as (c) plus the per-sid ``SeqTracker`` check the recorder also does.
The last line printed is one JSON object with the figures (units in the key names).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import gc
import json
import random
import time
import uuid
from collections.abc import Callable

from apps.marketdata.kalshi.book import OrderBook
from apps.marketdata.kalshi.messages import (
    FrameDecoder,
    OrderbookDelta,
    OrderbookSnapshot,
)
from apps.marketdata.kalshi.seq import SeqTracker
from apps.marketdata.kalshi.units import e2_to_count, e4_to_dollars

TARGET_DECODE_APPLY_MSGS_PER_S = 200_000
TARGET_RATIO_VS_JSON_LOADS = 1.5
SID = 1

# Tapered deci-cent grid: $0.001 ticks below $0.10 and above $0.90, $0.01 in between.
PRICE_GRID_E4 = [*range(10, 1000, 10), *range(1000, 9000, 100), *range(9000, 10_000, 10)]


def _ts(ms: int) -> str:
    """RFC 3339 with milliseconds, like the feed's deprecated ``ts``."""
    seconds, millis = divmod(ms, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


def _snapshot_frame(seq: int, ticker: str, market_id: str, book: dict, now_ms: int) -> bytes:
    msg: dict[str, object] = {"market_ticker": ticker, "market_id": market_id}
    for side in ("yes", "no"):
        if book[side]:  # an empty side's key is absent, as on the wire
            msg[f"{side}_dollars_fp"] = [
                [e4_to_dollars(p), e2_to_count(s)] for p, s in sorted(book[side].items())
            ]
    frame = {"type": "orderbook_snapshot", "sid": SID, "seq": seq, "msg": msg}
    frame["sending_ts_ms"] = now_ms
    return json.dumps(frame, separators=(",", ":")).encode()


def _delta_frame(
    seq: int, ticker: str, market_id: str, side: str, price_e4: int, delta_e2: int, now_ms: int
) -> bytes:
    # Same key order and spelling as the real frame quoted in kalshi-protocol.md §4.
    return (
        f'{{"type":"orderbook_delta","sid":{SID},"seq":{seq},"msg":{{"market_ticker":"{ticker}",'
        f'"market_id":"{market_id}","price_dollars":"{e4_to_dollars(price_e4)}",'
        f'"delta_fp":"{e2_to_count(delta_e2)}","side":"{side}","ts":"{_ts(now_ms)}",'
        f'"ts_ms":{now_ms}}},"sending_ts_ms":{now_ms + 3}}}'
    ).encode()


def build_frames(
    n_frames: int, n_markets: int, snapshot_every: int, seed: int
) -> tuple[list[bytes], dict[str, dict]]:
    """``n_frames`` frames and the model books they should leave behind."""
    rng = random.Random(seed)
    markets = []
    books: dict[str, dict] = {}
    for i in range(n_markets):
        ticker = f"KXMLBGAME-26OCT{7 + i:02d}2000TBNYY-{'NYY' if i % 2 else 'TB'}{i}"
        market_id = str(uuid.UUID(int=rng.getrandbits(128)))
        mid = rng.randrange(2000, 8000)
        # YES bids sit below the mid, NO bids below 1 - mid (they are YES asks above it).
        grids = {
            "yes": [p for p in PRICE_GRID_E4 if p < mid],
            "no": [p for p in PRICE_GRID_E4 if p < 10_000 - mid],
        }
        book = {
            side: {p: rng.randrange(1, 500_000) for p in rng.sample(grid, min(40, len(grid)))}
            for side, grid in grids.items()
        }
        markets.append((ticker, market_id, grids))
        books[ticker] = book

    frames: list[bytes] = []
    now_ms = 1_791_427_623_341
    seq = 0
    for ticker, market_id, _ in markets:
        seq += 1
        frames.append(_snapshot_frame(seq, ticker, market_id, books[ticker], now_ms))
    while len(frames) < n_frames:
        seq += 1
        now_ms += rng.randrange(0, 4)
        ticker, market_id, grids = markets[rng.randrange(n_markets)]
        if seq % snapshot_every == 0:
            frames.append(_snapshot_frame(seq, ticker, market_id, books[ticker], now_ms))
            continue
        side = "yes" if rng.random() < 0.5 else "no"
        ladder = books[ticker][side]
        if ladder and rng.random() < 0.75:
            price = rng.choice(list(ladder))
            size = ladder[price]
            # Mostly partial cancels/fills, sometimes the whole level, sometimes an add.
            roll = rng.random()
            if roll < 0.2:
                delta = -size
            elif roll < 0.6:
                delta = -rng.randrange(1, size + 1)
            else:
                delta = rng.randrange(1, 100_000)
        else:
            price = rng.choice(grids[side])
            delta = rng.randrange(1, 100_000)
        new = ladder.get(price, 0) + delta
        if new:
            ladder[price] = new
        else:
            del ladder[price]
        frames.append(_delta_frame(seq, ticker, market_id, side, price, delta, now_ms))
    return frames, books


def _best_of(repeat: int, run: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(repeat):
        gc.collect()
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=200_000, help="frames to generate")
    parser.add_argument("--markets", type=int, default=8, help="markets sharing the sid")
    parser.add_argument("--snapshot-every", type=int, default=5_000, help="frames per snapshot")
    parser.add_argument("--repeat", type=int, default=5, help="runs per measurement (best kept)")
    parser.add_argument("--seed", type=int, default=20261008)
    parser.add_argument(
        "--check", action="store_true", help="exit 1 when a target is missed (for CI)"
    )
    args = parser.parse_args(argv)

    frames, model = build_frames(args.frames, args.markets, args.snapshot_every, args.seed)
    n = len(frames)
    n_snapshots = sum(1 for f in frames if f.startswith(b'{"type":"orderbook_snapshot"'))
    decoder = FrameDecoder()
    loads = json.loads
    decode = decoder.decode
    books = {ticker: OrderBook(ticker) for ticker in model}

    def run_json_loads() -> None:
        for frame in frames:
            loads(frame)

    def run_decode() -> None:
        for frame in frames:
            decode(frame)

    def run_decode_apply() -> None:
        for frame in frames:
            message = decode(frame)
            if type(message) is OrderbookDelta:
                books[message.market_ticker].apply_delta(
                    message.side, message.price_e4, message.delta_e2
                )
            elif type(message) is OrderbookSnapshot:
                books[message.market_ticker].apply_snapshot(message.yes, message.no)

    def run_decode_seq_apply() -> None:
        tracker = SeqTracker()
        observe = tracker.observe
        for frame in frames:
            message = decode(frame)
            if not observe(message.sid, message.seq).ok:
                raise AssertionError(f"unexpected seq break at {message.seq}")
            if type(message) is OrderbookDelta:
                books[message.market_ticker].apply_delta(
                    message.side, message.price_e4, message.delta_e2
                )
            elif type(message) is OrderbookSnapshot:
                books[message.market_ticker].apply_snapshot(message.yes, message.no)

    # Correctness first: one full pass must leave exactly the model's books.
    run_decode_seq_apply()
    for ticker, book in books.items():
        yes, no = book.snapshot_levels()
        if dict(yes) != model[ticker]["yes"] or dict(no) != model[ticker]["no"]:
            raise AssertionError(f"book {ticker} differs from the generator's model")

    t_json = _best_of(args.repeat, run_json_loads)
    t_decode = _best_of(args.repeat, run_decode)
    t_apply = _best_of(args.repeat, run_decode_apply)
    t_seq_apply = _best_of(args.repeat, run_decode_seq_apply)

    avg_bytes = sum(map(len, frames)) / n
    print(
        f"{n:,} frames ({n - n_snapshots:,} deltas, {n_snapshots:,} snapshots), "
        f"{args.markets} markets on one sid, {avg_bytes:.0f} B/frame, best of {args.repeat}"
    )
    print(f"{'measurement':<32}{'msgs/s':>14}{'us/msg':>10}{'vs json.loads':>16}")
    rows = [
        ("(a) json.loads (baseline)", t_json),
        ("(b) FrameDecoder.decode", t_decode),
        ("(c) decode + OrderBook.apply", t_apply),
        ("(d) decode + seq check + apply", t_seq_apply),
    ]
    for label, seconds in rows:
        print(
            f"{label:<32}{n / seconds:>14,.0f}{seconds / n * 1e6:>10.3f}{seconds / t_json:>15.2f}x"
        )

    ratio = t_decode / t_json
    decode_apply_rate = n / t_apply
    targets_met = (
        decode_apply_rate >= TARGET_DECODE_APPLY_MSGS_PER_S and ratio <= TARGET_RATIO_VS_JSON_LOADS
    )
    print(
        f"targets: decode+apply >= {TARGET_DECODE_APPLY_MSGS_PER_S:,} msgs/s, decode time <= "
        f"{TARGET_RATIO_VS_JSON_LOADS}x json.loads -> {'met' if targets_met else 'MISSED'}"
    )
    print(
        json.dumps(
            {
                "bench": "book",
                "frames": n,
                "snapshot_frames": n_snapshots,
                "bytes_per_frame": round(avg_bytes, 1),
                "json_loads_msgs_per_s": round(n / t_json),
                "decode_msgs_per_s": round(n / t_decode),
                "decode_apply_msgs_per_s": round(decode_apply_rate),
                "decode_seq_apply_msgs_per_s": round(n / t_seq_apply),
                "json_loads_us_per_msg": round(t_json / n * 1e6, 3),
                "decode_us_per_msg": round(t_decode / n * 1e6, 3),
                "decode_apply_us_per_msg": round(t_apply / n * 1e6, 3),
                "ratio_vs_json_loads": round(ratio, 3),
                "decode_apply_ratio_vs_json_loads": round(t_apply / t_json, 3),
                "targets_met": targets_met,
            }
        )
    )
    return 1 if args.check and not targets_met else 0


if __name__ == "__main__":
    sys.exit(main())
