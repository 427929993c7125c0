"""Real Celery worker processes on the test database and Redis (for walk-forward and study
tests that show tasks spread over several workers)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from django.conf import settings as django_settings
from django.db import connection

from tests.conftest import REPO_ROOT


def worker_env(tmp_path: Path) -> dict[str, str]:
    db = connection.settings_dict
    host, port = db["HOST"] or "127.0.0.1", db["PORT"] or 5432
    return {
        **os.environ,
        "DATABASE_URL": f"postgres://{db['USER']}@{host}:{port}/{db['NAME']}",
        "REDIS_URL": django_settings.REDIS_URL,
        "MODEL_DIR": str(django_settings.MODEL_DIR),
        "RL_VAR_DIR": str(tmp_path),
        "RL_TRAINING_MAX_CONCURRENT": "8",
    }


@contextmanager
def celery_workers(
    tmp_path: Path, count: int, *, ready_timeout_s: float = 120
) -> Iterator[list[str]]:
    """``count`` solo-pool workers named ``w1@..``, ``w2@..``; yields their names once every
    one has said it is ready (so tasks queued next are shared between them)."""
    env = worker_env(tmp_path)
    # Start from an empty queue: nothing queued by an earlier run may reach these workers.
    subprocess.run(
        [sys.executable, "-m", "celery", "-A", "kalshiflow_site", "purge", "-f"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        timeout=60,
    )
    procs, logs = [], []
    try:
        for i in range(1, count + 1):
            log = tmp_path / f"worker{i}.log"
            logs.append(log)
            with log.open("w") as out:
                procs.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            "-m",
                            "celery",
                            "-A",
                            "kalshiflow_site",
                            "worker",
                            "-n",
                            f"w{i}@%h",
                            "--pool",
                            "solo",
                            "--concurrency",
                            "1",
                            "--loglevel",
                            "INFO",
                            "--without-gossip",
                            "--without-mingle",
                            "--without-heartbeat",
                        ],
                        cwd=REPO_ROOT,
                        env=env,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                    )
                )
        deadline = time.monotonic() + ready_timeout_s
        while not all(" ready." in log.read_text() for log in logs):
            dead = [p.args for p in procs if p.poll() is not None]
            assert not dead, f"a worker exited: {logs[0].read_text()[-2000:]}"
            assert time.monotonic() < deadline, "the workers did not start"
            time.sleep(0.5)
        yield [f"w{i}@" for i in range(1, count + 1)]
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
