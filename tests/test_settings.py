"""Settings come from the environment; live trading stops start-up."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from kalshiflow_site.modes import LiveTradingRefused, validate_mode
from tests.conftest import REPO_ROOT


def run_check(**env: str) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **env}
    full_env.pop("DATABASE_URL", None)
    return subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=REPO_ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("mode", ["live", "LIVE", "real", ""])
def test_validate_mode_refuses_anything_but_the_three_modes(mode: str) -> None:
    with pytest.raises(LiveTradingRefused):
        validate_mode(mode)


def test_validate_mode_accepts_the_three_modes() -> None:
    assert [validate_mode(m) for m in ("training", "Evaluation", " paper ")] == [
        "training",
        "evaluation",
        "paper",
    ]


def test_rl_mode_live_stops_start_up_with_a_clear_error() -> None:
    result = run_check(RL_MODE="live")
    assert result.returncode != 0
    assert "RL_MODE='live' is refused" in result.stderr


def test_the_project_starts_with_zero_configuration(tmp_path) -> None:
    result = run_check(RL_VAR_DIR=str(tmp_path), RL_MODE="paper")
    assert result.returncode == 0, result.stderr
    assert "no issues" in result.stdout


def test_check_deploy_is_clean_with_production_like_settings(tmp_path) -> None:
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=REPO_ROOT,
        env={
            **os.environ,
            "RL_VAR_DIR": str(tmp_path),
            "DEBUG": "false",
            "SECRET_KEY": "x" * 30 + "-production-like-secret-key-0123456789abcdef",
            "SECURE_SSL_REDIRECT": "true",
            "SECURE_COOKIES": "true",
            "SECURE_HSTS_SECONDS": "31536000",
            "SECURE_HSTS_INCLUDE_SUBDOMAINS": "true",
            "SECURE_HSTS_PRELOAD": "true",
            "ALLOWED_HOSTS": "rl.example.com",
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"RL_HEARTBEAT_STALE_S": "60", "RL_WORKER_DEAD_AFTER_S": "30"},
            "RL_WORKER_DEAD_AFTER_S=30 must be >= RL_HEARTBEAT_STALE_S=60",
        ),
        ({"RL_HEALTH_EXPECT": "ingest,Paper Trader"}, "RL_HEALTH_EXPECT entry 'Paper Trader'"),
        ({"RL_AUTH_FAILURE_RATE": "10 per minute"}, "RL_AUTH_FAILURE_RATE='10 per minute'"),
        ({"RL_AUTH_FAILURE_RATE": "0/min"}, "RL_AUTH_FAILURE_RATE='0/min'"),
        ({"RL_API_BASIC_AUTH": "maybe"}, "RL_API_BASIC_AUTH='maybe' is not a boolean"),
    ],
)
def test_health_and_auth_settings_are_checked_at_start_up(tmp_path, env, message) -> None:
    result = run_check(RL_VAR_DIR=str(tmp_path), **env)
    assert result.returncode != 0
    assert message in result.stderr
