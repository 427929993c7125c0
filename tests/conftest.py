"""Shared test set-up.

Tests marked ``postgres`` or ``redis`` use the real servers on 127.0.0.1. Outside CI a missing
server skips them with the reason; with ``CI=true`` a missing server is a failure, never a skip.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

IN_CI = os.environ.get("CI", "").lower() == "true"
REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def require_service(name: str, available: bool) -> None:
    if available:
        return
    if IN_CI:
        pytest.fail(f"{name} is required in CI (CI=true) but is not reachable", pytrace=False)
    pytest.skip(f"{name} is not reachable on 127.0.0.1")


@pytest.fixture(autouse=True)
def _service_markers(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("postgres"):
        from django.conf import settings

        engine = settings.DATABASES["default"]["ENGINE"]
        require_service("PostgreSQL", "postgresql" in engine and _port_open(5432))
    if request.node.get_closest_marker("redis"):
        require_service("Redis", bool(os.environ.get("REDIS_URL")) and _port_open(6379))


@pytest.fixture
def shared_data() -> Path:
    """The folder of real captured Kalshi frames (../shared/data)."""
    if not SHARED_DATA.is_dir():
        require_service(f"the shared data folder {SHARED_DATA}", False)
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _isolated_var(tmp_path: Path, settings) -> None:  # type: ignore[no-untyped-def]
    """Keep keys, spill files and artifacts of each test in its own folder."""
    settings.LOCAL_EXCHANGE_KEY_DIR = tmp_path / "keys"
    settings.MODEL_DIR = tmp_path / "models"
    settings.RL_WRITER_SPILL_DIR = tmp_path / "spill"
    settings.VAR_DIR = tmp_path
