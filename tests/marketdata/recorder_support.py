"""``manage.py ingest_orderbook`` in a subprocess, as an operator runs it, for tests that kill,
restart or starve it (its output lines are kept with the time each one arrived)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from django.db import connection

from tests.conftest import REPO_ROOT


def database_url(port: int | None = None) -> str:
    """The test database, optionally through another port (a proxy)."""
    db = connection.settings_dict
    port = port or int(db["PORT"] or 5432)
    return f"postgres://{db['USER'] or 'postgres'}@127.0.0.1:{port}/{db['NAME']}"


class Recorder:
    """One recorder process against ``ws_url``; ``lines`` = [(monotonic time, line)]."""

    def __init__(self, var_dir: Path, ws_url: str, db_url: str, *args: str) -> None:
        env = {
            **os.environ,
            "DATABASE_URL": db_url,
            "LOCAL_EXCHANGE_KEY_DIR": str(var_dir / "keys"),
            "RL_VAR_DIR": str(var_dir),
        }
        self.proc = subprocess.Popen(
            [sys.executable, "manage.py", "ingest_orderbook", "--ws-url", ws_url, *args],
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.pid = self.proc.pid
        self.lines: list[tuple[float, str]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append((time.monotonic(), line.rstrip("\n")))

    @property
    def output(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def wait_for(self, predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate():
            if self.proc.poll() is not None:
                raise AssertionError(f"the recorder exited before {what}:\n{self.output[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {what} within {timeout_s}s:\n{self.output[-3000:]}")
            time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL, and reap it (a zombie's pid still exists)."""
        self.proc.kill()
        self.proc.wait(30)
        self._reader.join(5)

    def stop(self, timeout_s: float = 60) -> int:
        """SIGTERM and wait; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(30)
            raise AssertionError(f"the recorder did not stop:\n{self.output[-3000:]}") from None
        self._reader.join(5)
        return self.proc.returncode

    def ensure_dead(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
