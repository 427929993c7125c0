"""Soak: record at a steady rate for a long time and show that lag and memory do not drift.

Run by hand:  .venv/bin/python benchmarks/soak_ingest.py [--minutes 10] [--rate 5000]

Every ``--sample-s`` seconds it prints the recorder's resident memory, the writer's commit lag
(receive -> commit of the last batch) and queue depth, read from the recorder's own heartbeat
row; it ends with the start and end figures and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("BENCH_DB", "kalshiflow_soak")

from benchmarks.bench_ingest import (
    drop_database,
    free_port,
    record,
    setup_django,
    start_exchange,
    table_counts,
)


def rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=5000.0)
    parser.add_argument("--markets", type=int, default=10)
    parser.add_argument("--sample-s", type=float, default=30.0)
    args = parser.parse_args()
    var_dir = Path(tempfile.mkdtemp(prefix="soak-ingest-"))
    setup_django(var_dir)
    samples: list[dict] = []
    done = threading.Event()

    def sampler() -> None:
        from django.db import connections

        from apps.workers.models import WorkerStatus

        started = time.monotonic()
        while not done.wait(args.sample_s):
            row = WorkerStatus.objects.filter(kind="ingest").order_by("-updated_at").first()
            writer = (row.counters if row else {}).get("writer", {})
            sample = {
                "t_s": round(time.monotonic() - started, 1),
                "rss_mb": round(rss_mb(), 1),
                "commit_lag_s": writer.get("last_commit_lag_s"),
                "queue_depth": writer.get("queue_depth"),
                "rows_written": writer.get("rows_written"),
            }
            samples.append(sample)
            print(json.dumps(sample), flush=True)
        connections.close_all()

    port = free_port()
    proc = start_exchange(var_dir, rate=args.rate, markets=args.markets, port=port)
    thread = threading.Thread(target=sampler, daemon=True)
    thread.start()
    try:
        result = record(f"ws://127.0.0.1:{port}/trade-api/ws/v2", args.minutes * 60)
        done.set()
        thread.join(5)
        counts = table_counts()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        drop_database()
    first, last = samples[0], samples[-1]
    frames = result.client["deltas"] + result.client["snapshots"] + result.client["trades"]
    stored = sum(counts.values())
    print(
        f"\nstart: rss {first['rss_mb']} MB, lag {first['commit_lag_s']} s | "
        f"end: rss {last['rss_mb']} MB, lag {last['commit_lag_s']} s | "
        f"{frames:,} frames, {stored:,} stored, lost {frames - stored}"
    )
    print(
        json.dumps(
            {
                "bench": "soak_ingest",
                "minutes": args.minutes,
                "rate_msgs_per_s": args.rate,
                "rss_start_mb": first["rss_mb"],
                "rss_end_mb": last["rss_mb"],
                "commit_lag_start_s": first["commit_lag_s"],
                "commit_lag_end_s": last["commit_lag_s"],
                "lost_rows": frames - stored,
            }
        )
    )


if __name__ == "__main__":
    main()
