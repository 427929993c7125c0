"""End-to-end recording throughput and latency: local exchange -> recorder -> PostgreSQL.

Run by hand:  .venv/bin/python benchmarks/bench_ingest.py [--seconds 20] [--rate 60000]

The exchange runs in its own process (``manage.py run_local_exchange``) so that it does not
share the recorder's core. Measured in the same run:

1. sustained messages/s from the exchange into PostgreSQL with zero loss: the recorder is fed
   at ``--rate`` for ``--seconds``, then every accepted frame is checked to be in the tables;
2. the writer's rows/s (both write methods) against a raw psycopg ``COPY`` of the same rows,
   from ``benchmarks/bench_writer.py``;
3. p50/p99 latency from socket receive to book applied (and row enqueued) at 5k msg/s.

Ends with one JSON line of figures. Uses (and drops) its own database: ``BENCH_DB``,
default ``kalshiflow_bench_ingest``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.scratchdb import drop_scratch_database, setup_scratch_django  # noqa: E402

DB_NAME = os.environ.get("BENCH_DB", "kalshiflow_bench_ingest")


def setup_django(var_dir: Path) -> None:
    setup_scratch_django(DB_NAME, RL_VAR_DIR=str(var_dir))


def drop_database() -> None:
    drop_scratch_database(DB_NAME)


def start_exchange(var_dir: Path, *, rate: float, markets: int, port: int) -> subprocess.Popen:
    env = {
        **os.environ,
        "RL_VAR_DIR": str(var_dir),
        "LOCAL_EXCHANGE_KEY_DIR": str(var_dir / "keys"),
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "manage.py",
            "run_local_exchange",
            "--port",
            str(port),
            "--markets",
            str(markets),
            "--rate",
            str(rate),
            "--progress-interval",
            "3600",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 30
    import socket

    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return proc
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"the exchange did not start: {proc.stdout.read()}")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def record(url: str, seconds: float, *, latency_every: int = 0):
    from apps.marketdata.ingest import IngestOptions, run_ingest_async

    async def go():
        stop = asyncio.Event()
        task = asyncio.create_task(
            run_ingest_async(
                IngestOptions(
                    ws_url=url,
                    exchange="local",
                    progress_interval_s=3600,
                    snapshot_interval_s=0,
                    latency_sample_every=latency_every,
                ),
                stop_event=stop,
                install_signal_handlers=False,
            )
        )
        await asyncio.sleep(seconds)
        stop.set()
        return await task

    return asyncio.run(go())


def table_counts() -> dict[str, int]:
    from apps.marketdata.models import OrderbookDelta, OrderbookSnapshot, PublicTrade

    return {
        "deltas": OrderbookDelta.objects.count(),
        "snapshots": OrderbookSnapshot.objects.count(),
        "trades": PublicTrade.objects.count(),
    }


def clear_tables() -> None:
    from django.db import connection

    with connection.cursor() as cur:
        cur.execute(
            "TRUNCATE rl_orderbook_deltas, rl_orderbook_snapshots, rl_public_trades,"
            " rl_recording_events, rl_recording_connections"
        )


def throughput_phase(var_dir: Path, *, rate: float, seconds: float, markets: int) -> dict:
    port = free_port()
    proc = start_exchange(var_dir, rate=rate, markets=markets, port=port)
    try:
        clear_tables()
        result = record(f"ws://127.0.0.1:{port}/trade-api/ws/v2", seconds)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    client = result.client
    counts = table_counts()
    data_frames = client["deltas"] + client["snapshots"] + client["trades"]
    stored = counts["deltas"] + counts["snapshots"] + counts["trades"]
    return {
        "seconds": result.elapsed_s,
        "frames": data_frames,
        "stored": stored,
        "lost": data_frames - stored,
        "msgs_per_s": client["messages"] / result.elapsed_s,
        "sub_errors": client["sub_errors"],
        "gaps": client["gaps"],
    }


def latency_phase(var_dir: Path, *, seconds: float, markets: int) -> dict:
    import numpy as np

    port = free_port()
    proc = start_exchange(var_dir, rate=5000, markets=markets, port=port)
    try:
        clear_tables()
        from apps.marketdata.ingest import IngestOptions  # noqa: F401 (Django is set up)

        result = record(f"ws://127.0.0.1:{port}/trade-api/ws/v2", seconds, latency_every=1)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    samples = np.asarray(result.client_latency_ns, dtype=np.float64) / 1e6
    return {
        "samples": int(samples.size),
        "p50_ms": float(np.percentile(samples, 50)),
        "p99_ms": float(np.percentile(samples, 99)),
        "max_ms": float(samples.max()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rate", type=float, default=60_000.0, help="exchange msgs/s offered")
    parser.add_argument("--markets", type=int, default=10)
    parser.add_argument("--writer-rows", type=int, default=200_000)
    args = parser.parse_args()
    var_dir = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    setup_django(var_dir)
    try:
        thr = throughput_phase(var_dir, rate=args.rate, seconds=args.seconds, markets=args.markets)
        lat = latency_phase(var_dir, seconds=min(args.seconds, 15), markets=args.markets)
        from benchmarks.bench_writer import measure_writer_vs_copy

        writer = measure_writer_vs_copy(rows=args.writer_rows)
    finally:
        drop_database()
    print(f"\nend to end, offered {args.rate:,.0f} msg/s for {thr['seconds']:.1f}s:")
    print(
        f"  recorded {thr['msgs_per_s']:,.0f} msg/s; {thr['frames']:,} data frames, "
        f"{thr['stored']:,} rows stored, lost {thr['lost']}; exchange overflow errors "
        f"{thr['sub_errors']}, gaps {thr['gaps']}"
    )
    print(
        f"latency socket receive -> book applied at 5k msg/s: p50 {lat['p50_ms']:.3f} ms, "
        f"p99 {lat['p99_ms']:.3f} ms, max {lat['max_ms']:.2f} ms ({lat['samples']:,} samples)"
    )
    print(
        f"writer: {writer['best_method']} {writer['writer_rows_per_s']:,.0f} rows/s vs raw COPY "
        f"{writer['raw_copy_rows_per_s']:,.0f} rows/s = {writer['ratio_vs_copy']:.2f}x"
    )
    figures = {
        "bench": "ingest",
        "offered_msgs_per_s": args.rate,
        "e2e_msgs_per_s": round(thr["msgs_per_s"], 1),
        "e2e_lost_rows": thr["lost"],
        "e2e_overflow_errors": thr["sub_errors"],
        "latency_p50_ms": round(lat["p50_ms"], 4),
        "latency_p99_ms": round(lat["p99_ms"], 4),
        "writer_rows_per_s": round(writer["writer_rows_per_s"], 1),
        "raw_copy_rows_per_s": round(writer["raw_copy_rows_per_s"], 1),
        "ratio_vs_copy": round(writer["ratio_vs_copy"], 3),
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
