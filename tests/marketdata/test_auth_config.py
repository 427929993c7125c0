"""Which key signs where, what a refused handshake does, and credentials that never leak.

The recorder runs as ``manage.py ingest_orderbook`` in a subprocess against the local exchange,
configured only through the environment, exactly as a user would run it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from django.db import connection
from django.utils import timezone

from apps.marketdata.exchange import (
    ApiKey,
    ExchangeConfig,
    ExchangeThread,
    LocalExchange,
    SyntheticConfig,
    SyntheticSource,
)
from apps.marketdata.kalshi.signer import KalshiSigner, SignerError, check_key_id, generate_key_pair
from apps.marketdata.kalshi.urls import redact_url, scrub
from apps.marketdata.models import OrderbookDelta, RecordingConnection
from tests.conftest import REPO_ROOT
from tests.marketdata.recorder_support import database_url

PRIVATE_PEM, PUBLIC_PEM = generate_key_pair()
OTHER_PRIVATE_PEM, _ = generate_key_pair()
KEY_ID = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"


def test_urls_lose_their_credentials_wherever_they_are_shown() -> None:
    assert (
        redact_url("ws://alice:hunter2@host:9/trade-api/ws/v2") == "ws://***@host:9/trade-api/ws/v2"
    )
    assert redact_url("wss://host/trade-api/ws/v2") == "wss://host/trade-api/ws/v2"
    assert "tok3n" not in redact_url("wss://host/ws?token=tok3n")
    assert redact_url("ws://[::1:80/x") == "***"  # unparseable: nothing of it is shown
    message = "InvalidURI: ws://alice:hunter2@host:9/x isn't valid; alice:hunter2 again"
    cleaned = scrub(message, "ws://alice:hunter2@host:9/x")
    assert "hunter2" not in cleaned and "ws://***@host:9/x" in cleaned


@pytest.mark.parametrize(
    "key_id", ["abc\r\nX-Injected: 1", "abc\n", "with space", "tab\there", "x" * 201, ""]
)
def test_a_key_id_that_is_not_one_header_token_is_refused(key_id: str) -> None:
    with pytest.raises(SignerError) as err:
        KalshiSigner.from_pem(key_id=key_id, pem=PRIVATE_PEM)
    if key_id:
        assert key_id.strip() not in str(err.value)  # the message never echoes the value
    check_key_id(KEY_ID)  # a UUID is fine


def test_a_key_id_with_a_line_break_stops_start_up_with_one_clear_line(tmp_path) -> None:
    env = {
        **os.environ,
        "KALSHI_API_KEY_ID": "abc\r\nX-Injected: 1",
        "RL_VAR_DIR": str(tmp_path),
        "DJANGO_SETTINGS_MODULE": "kalshiflow_site.settings",
    }
    env.pop("KALSHI_API_KEY_ID_FILE", None)
    proc = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    assert "KALSHI_API_KEY_ID: the Kalshi API key id may hold only visible ASCII" in output
    assert "X-Injected" not in output


def _exchange() -> LocalExchange:
    """An exchange that knows one key: the user's, with its key id (not the development key)."""
    return LocalExchange(
        ExchangeConfig(keys=(ApiKey(public_key=PUBLIC_PEM, key_id=KEY_ID),)),
        source=SyntheticSource(SyntheticConfig(markets=2, rate=500, seed=5)),
    )


def _recorder_env(settings, private_pem: bytes) -> dict[str, str]:
    env = {
        **os.environ,
        "DATABASE_URL": database_url(),
        "LOCAL_EXCHANGE_KEY_DIR": str(settings.LOCAL_EXCHANGE_KEY_DIR),
        "RL_VAR_DIR": str(settings.VAR_DIR),
        "KALSHI_API_KEY_ID": KEY_ID,
        "KALSHI_PRIVATE_KEY_PEM": private_pem.decode(),
    }
    for name in ("KALSHI_API_KEY_ID_FILE", "KALSHI_PRIVATE_KEY_PATH"):
        env.pop(name, None)
    return env


def _ingest(url: str, env: dict[str, str], *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", "ingest_orderbook", "--ws-url", url, *extra],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_the_configured_key_signs_for_a_url_and_credentials_in_it_are_never_shown(
    settings,
) -> None:
    with ExchangeThread(_exchange()) as url:
        with_credentials = url.replace("ws://", "ws://alice:hunter2@", 1)
        proc = _ingest(
            with_credentials,
            _recorder_env(settings, PRIVATE_PEM),
            "--duration",
            "3",
            "--progress-interval",
            "1",
        )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    # Recorded with the user's key (the exchange does not know the development key).
    assert OrderbookDelta.objects.exists(), output
    assert "hunter2" not in output
    assert "***@127.0.0.1" in output
    stored = list(RecordingConnection.objects.values_list("ws_url", flat=True))
    assert stored and all("hunter2" not in u and "alice" not in u for u in stored)
    assert PRIVATE_PEM.decode().splitlines()[1] not in output


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_refused_handshake_stops_the_recorder_with_one_clear_error(settings) -> None:
    started = time.monotonic()
    with ExchangeThread(_exchange()) as url:
        # The right key id with the wrong private key: the exchange answers 401 every time.
        proc = _ingest(url, _recorder_env(settings, OTHER_PRIVATE_PEM), "--duration", "60")
    elapsed = time.monotonic() - started
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output
    assert elapsed < 30, f"took {elapsed:.0f}s: retried instead of stopping"
    assert "HTTP 401 3 times in a row" in output
    assert "the key id comes from KALSHI_API_KEY_ID" in output
    assert "Traceback" not in output
    assert OTHER_PRIVATE_PEM.decode().splitlines()[1] not in output


@pytest.mark.django_db(transaction=True)
def test_the_migration_redacts_urls_stored_by_older_versions() -> None:
    from django.db.migrations.executor import MigrationExecutor

    executor = MigrationExecutor(connection)
    before = [("marketdata", "0005_bigint_sids")]
    executor.migrate(before)
    old_apps = executor.loader.project_state(before).apps
    model = old_apps.get_model("marketdata", "RecordingConnection")
    leaky = model.objects.create(
        exchange="local",
        ws_url="ws://alice:hunter2@127.0.0.1:9/trade-api/ws/v2",
        markets=[],
        opened_at=timezone.now(),
    )
    plain = model.objects.create(
        exchange="local", ws_url="ws://127.0.0.1:9/x", markets=[], opened_at=timezone.now()
    )
    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes())
    assert RecordingConnection.objects.get(pk=leaky.pk).ws_url == (
        "ws://***@127.0.0.1:9/trade-api/ws/v2"
    )
    assert RecordingConnection.objects.get(pk=plain.pk).ws_url == "ws://127.0.0.1:9/x"
