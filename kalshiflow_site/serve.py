"""``./run serve``: daphne (admin, API, live page) and, when ``RL_EMBEDDED_WORKER`` is on
(the default without Redis), a Celery worker beside it.

Without Redis, Celery's queue is a folder (kombu's filesystem transport, see settings): the
web process only writes a message there, and this worker — a real ``celery worker`` process
on the same settings — takes it, so a training, walk-forward or study run never executes
inside a request. The worker is restarted if it dies; both stop with this process
(Ctrl-C, SIGTERM).

    python -m kalshiflow_site.serve [--host 127.0.0.1] [--port 8000]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from types import FrameType

RESTART_BACKOFF_S = (1, 2, 5, 10, 30)


def worker_command(*, concurrency: int) -> list[str]:
    """The embedded worker: prefork, so that it answers pings while a run trains, one fresh
    child per task (memory held by torch goes back with the child)."""
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "kalshiflow_site",
        "worker",
        "--pool",
        "prefork",
        "--concurrency",
        str(concurrency),
        "--max-tasks-per-child",
        "1",
        "--loglevel",
        "INFO",
        "--without-gossip",
        "--without-mingle",
        "--hostname",
        f"embedded@{os.uname().nodename}",
    ]


def daphne_command(*, host: str, port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "daphne",
        "-b",
        host,
        "-p",
        str(port),
        "kalshiflow_site.asgi:application",
    ]


def say(message: str) -> None:
    print(f"[serve] {message}", file=sys.stderr, flush=True)


def _stop(process: subprocess.Popen | None, *, timeout_s: float = 20) -> None:
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    args = parser.parse_args(argv)

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "kalshiflow_site.settings")
    import django
    from django.conf import settings

    django.setup()
    embedded = settings.RL_EMBEDDED_WORKER
    concurrency = settings.RL_TRAINING_MAX_CONCURRENT

    stopping = False

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    worker: subprocess.Popen | None = None
    restarts = 0
    if embedded:
        say(f"starting the embedded Celery worker ({concurrency} process(es))")
        worker = subprocess.Popen(worker_command(concurrency=concurrency))  # noqa: S603
    else:
        say("RL_EMBEDDED_WORKER is off: runs wait for `celery -A kalshiflow_site worker`")
    # Fixed argument lists of this interpreter's modules: no shell, no user input.
    web = subprocess.Popen(daphne_command(host=args.host, port=args.port))  # noqa: S603
    say(f"serving on http://{args.host}:{args.port} (Ctrl-C stops)")
    try:
        while not stopping and web.poll() is None:
            if worker is not None and worker.poll() is not None:
                wait = RESTART_BACKOFF_S[min(restarts, len(RESTART_BACKOFF_S) - 1)]
                say(f"the embedded worker exited ({worker.returncode}): restarting in {wait} s")
                deadline = time.monotonic() + wait
                while not stopping and time.monotonic() < deadline:
                    time.sleep(0.2)
                if stopping:
                    break
                restarts += 1
                worker = subprocess.Popen(worker_command(concurrency=concurrency))  # noqa: S603
            time.sleep(0.5)
    finally:
        # The worker first: a run it holds goes back to the queue (acks late) for next time.
        _stop(worker)
        _stop(web)
    return 0 if stopping else (web.returncode or 0)


if __name__ == "__main__":
    sys.exit(main())
