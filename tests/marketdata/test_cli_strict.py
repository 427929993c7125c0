"""A strict CLI: selections that match nothing, unknown markets, nonsense values and busy
ports are one clear error, never "all markets", a silent run or a traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from apps.marketdata.exchange import ExchangeThread
from tests.conftest import REPO_ROOT
from tests.marketdata.recorder_support import database_url
from tests.marketdata.test_ingest import dev_key_exchange

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def _manage(settings, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "DATABASE_URL": database_url(),
        "LOCAL_EXCHANGE_KEY_DIR": str(settings.LOCAL_EXCHANGE_KEY_DIR),
        "RL_VAR_DIR": str(settings.VAR_DIR),
    }
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--series", "NOPE", "--series NOPE matches no open market"),
        ("--event", "NOPE-26DEC31", "--event NOPE-26DEC31 matches no open market"),
        ("--markets", "NOPE-1", "not open on the exchange"),
    ],
)
def test_a_selection_that_matches_nothing_stops_the_recorder(settings, flag, value, message):
    with ExchangeThread(dev_key_exchange(settings, markets=3, rate=100)) as url:
        proc = _manage(
            settings, "ingest_orderbook", "--ws-url", url, flag, value, "--duration", "20"
        )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output
    assert message in output and value in output
    assert "Traceback" not in output
    assert "recording" not in proc.stdout  # nothing was subscribed


def test_known_markets_still_record(settings) -> None:
    exchange = dev_key_exchange(settings, markets=3, rate=200)
    with ExchangeThread(exchange) as url:
        ticker = exchange.tickers()[0]
        proc = _manage(
            settings, "ingest_orderbook", "--ws-url", url, "--markets", ticker, "--duration", "2"
        )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "recording 1 markets" in proc.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("ingest_orderbook", "--duration", "-3"), "--duration: must be a number >= 0, got '-3'"),
        (("ingest_orderbook", "--batch-rows", "0"), "--batch-rows: must be a whole number >= 1"),
        (("ingest_orderbook", "--flush-interval", "inf"), "--flush-interval: must be a number > 0"),
    ],
)
def test_nonsense_values_are_refused_by_argparse(settings, args, message) -> None:
    proc = _manage(settings, *args)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_busy_port_is_one_line_not_a_traceback(settings) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = _manage(settings, "run_local_exchange", "--port", str(port), "--duration", "1")
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output
    assert f"cannot listen on 127.0.0.1:{port}" in output and "--port 0" in output
    assert "Traceback" not in output
