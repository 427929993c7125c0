"""API authentication: HTTP Basic is off unless RL_API_BASIC_AUTH is on, staff sessions always
work, and failed passwords (Basic and the admin login form alike) are throttled per client
address: past RL_AUTH_FAILURE_RATE the next attempt is a 429 without its password checked."""

from __future__ import annotations

import base64
import logging
import socket
import time

import pytest
from django.contrib.auth import signals

from apps.dashboard import throttling
from apps.dashboard.throttling import FailedLoginThrottle
from tests.dashboard.conftest import STAFF_PASSWORD

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fast_password_hashes(settings) -> None:  # type: ignore[no-untyped-def]
    # Before staff_user hashes its password: these tests check many passwords.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def basic(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


def test_basic_auth_is_off_by_default_and_the_session_still_works(
    client, staff_user, settings
) -> None:
    assert settings.RL_API_BASIC_AUTH is False
    right = basic(staff_user.username, STAFF_PASSWORD)
    response = client.get("/rl/models", HTTP_AUTHORIZATION=right)
    assert response.status_code == 401  # the header is ignored: an anonymous caller
    assert response.json()["error"] == "not_authenticated"
    challenge = response["WWW-Authenticate"]
    assert challenge.startswith("Cookie ") and 'form-action="/admin/login/"' in challenge
    assert "Basic" not in challenge
    client.force_login(staff_user)
    assert client.get("/rl/models").status_code == 200


def test_basic_auth_works_when_enabled(client, staff_user, settings) -> None:
    settings.RL_API_BASIC_AUTH = True
    response = client.get("/rl/models", HTTP_AUTHORIZATION=basic(staff_user.username, "nope"))
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Basic ")
    right = basic(staff_user.username, STAFF_PASSWORD)
    assert client.get("/rl/models", HTTP_AUTHORIZATION=right).status_code == 200


def test_the_schema_offers_basic_auth_only_when_enabled(staff_client, settings) -> None:
    schemes = staff_client.get("/rl/schema", {"format": "json"}).json()["components"]
    assert set(schemes["securitySchemes"]) == {"cookieAuth"}
    settings.RL_API_BASIC_AUTH = True
    schemes = staff_client.get("/rl/schema", {"format": "json"}).json()["components"]
    assert set(schemes["securitySchemes"]) == {"cookieAuth", "basicAuth"}


def test_the_attempt_after_n_failed_basic_passwords_is_a_429_unchecked(
    client, staff_user, settings, monkeypatch
) -> None:
    settings.RL_API_BASIC_AUTH = True
    settings.RL_AUTH_FAILURE_RATE = "3/min"
    checked = []
    monkeypatch.setattr(
        "django.contrib.auth.backends.ModelBackend.user_can_authenticate",
        lambda self, user: checked.append(user) or True,
    )
    wrong = basic(staff_user.username, "guess")
    for _ in range(3):
        assert client.get("/rl/models", HTTP_AUTHORIZATION=wrong).status_code == 401
    right = basic(staff_user.username, STAFF_PASSWORD)
    for header in (wrong, right):  # the 4th, and even the right password, is refused unchecked
        response = client.get("/rl/models", HTTP_AUTHORIZATION=header)
        assert response.status_code == 429
        assert response.json()["status"] == 429
        assert response.json()["error"] == "throttled"
        assert "failed authentication attempts" in response.json()["message"]
        assert 1 <= int(response["Retry-After"]) <= 60
    assert checked == []  # the right password was not checked either
    # A forged X-Forwarded-For does not make a new client (no trusted proxy by default)...
    spoofed = client.get("/rl/models", HTTP_AUTHORIZATION=right, HTTP_X_FORWARDED_FOR="10.9.9.9")
    assert spoofed.status_code == 429
    # ... another address is a new client, and a staff session is never throttled.
    other = client.get("/rl/models", HTTP_AUTHORIZATION=right, REMOTE_ADDR="10.0.0.2")
    assert other.status_code == 200
    client.force_login(staff_user)
    assert client.get("/rl/models").status_code == 200


def test_behind_trusted_proxies_the_forwarded_address_is_the_client(
    client, staff_user, settings
) -> None:
    settings.RL_API_BASIC_AUTH = True
    settings.RL_AUTH_FAILURE_RATE = "2/min"
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "NUM_PROXIES": 1}
    wrong = basic(staff_user.username, "guess")
    for _ in range(2):
        client.get("/rl/models", HTTP_AUTHORIZATION=wrong, HTTP_X_FORWARDED_FOR="10.0.0.2")
    blocked = client.get("/rl/models", HTTP_AUTHORIZATION=wrong, HTTP_X_FORWARDED_FOR="10.0.0.2")
    assert blocked.status_code == 429
    other = client.get("/rl/models", HTTP_AUTHORIZATION=wrong, HTTP_X_FORWARDED_FOR="10.0.0.3")
    assert other.status_code == 401


def test_the_window_moves_on(client, staff_user, settings, monkeypatch) -> None:
    settings.RL_API_BASIC_AUTH = True
    settings.RL_AUTH_FAILURE_RATE = "2/min"
    now = [1_000_000.0]
    monkeypatch.setattr(FailedLoginThrottle, "timer", lambda self: now[0])
    wrong = basic(staff_user.username, "guess")
    for _ in range(2):
        assert client.get("/rl/models", HTTP_AUTHORIZATION=wrong).status_code == 401
    now[0] += 30
    response = client.get("/rl/models", HTTP_AUTHORIZATION=wrong)
    assert response.status_code == 429
    assert response["Retry-After"] == "30"
    now[0] += 31
    right = basic(staff_user.username, STAFF_PASSWORD)
    assert client.get("/rl/models", HTTP_AUTHORIZATION=right).status_code == 200


def admin_login(client, username: str, password: str, **extra):  # type: ignore[no-untyped-def]
    return client.post(
        "/admin/login/?next=/admin/", {"username": username, "password": password}, **extra
    )


def test_failed_admin_logins_are_throttled_too(client, staff_user, settings) -> None:
    settings.RL_AUTH_FAILURE_RATE = "3/min"
    for _ in range(3):
        response = admin_login(client, staff_user.username, "guess")
        assert response.status_code == 200  # the form again, with its error
        assert b"Please enter the correct username and password" in response.content
    response = admin_login(client, staff_user.username, STAFF_PASSWORD)
    assert response.status_code == 429
    assert response["Retry-After"]
    assert b"Too many failed login attempts" in response.content
    assert "_auth_user_id" not in client.session
    # Another address logs in normally.
    response = admin_login(client, staff_user.username, STAFF_PASSWORD, REMOTE_ADDR="10.0.0.2")
    assert response.status_code == 302
    assert response["Location"] == "/admin/"


def test_basic_and_admin_failures_count_together(client, staff_user, settings) -> None:
    settings.RL_API_BASIC_AUTH = True
    settings.RL_AUTH_FAILURE_RATE = "2/min"
    admin_login(client, staff_user.username, "guess")
    client.get("/rl/models", HTTP_AUTHORIZATION=basic(staff_user.username, "guess"))
    assert admin_login(client, staff_user.username, STAFF_PASSWORD).status_code == 429
    right = basic(staff_user.username, STAFF_PASSWORD)
    assert client.get("/rl/models", HTTP_AUTHORIZATION=right).status_code == 429


def test_a_failure_outside_a_request_is_not_counted(staff_user, settings) -> None:
    settings.RL_AUTH_FAILURE_RATE = "1/min"
    signals.user_login_failed.send(sender=__name__, credentials={"username": "x"})
    from django.test import Client

    assert admin_login(Client(), staff_user.username, STAFF_PASSWORD).status_code == 302


def test_a_broken_throttle_cache_lets_logins_through_with_a_warning(
    client, staff_user, settings, caplog, monkeypatch
) -> None:
    settings.RL_API_BASIC_AUTH = True
    settings.RL_AUTH_FAILURE_RATE = "1/min"
    settings.CACHES = {
        **settings.CACHES,
        "auth-throttle": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": "redis://127.0.0.1:1/0",  # nothing listens there
        },
    }
    monkeypatch.setattr(throttling, "_last_warning", float("-inf"))  # rate-limited: 1/min
    caplog.set_level(logging.WARNING, logger="apps.dashboard.throttling")
    wrong = basic(staff_user.username, "guess")
    for _ in range(2):
        assert client.get("/rl/models", HTTP_AUTHORIZATION=wrong).status_code == 401
    right = basic(staff_user.username, STAFF_PASSWORD)
    assert client.get("/rl/models", HTTP_AUTHORIZATION=right).status_code == 200
    assert "failed-login throttle unavailable" in caplog.text


def test_a_hung_throttle_cache_delays_a_login_only_by_its_timeout(
    client, staff_user, settings, caplog, monkeypatch
) -> None:
    settings.RL_API_BASIC_AUTH = True
    with socket.socket() as hung:  # accepts connections (backlog), never answers
        hung.bind(("127.0.0.1", 0))
        hung.listen(8)
        settings.CACHES = {
            **settings.CACHES,
            "auth-throttle": {
                "BACKEND": "django.core.cache.backends.redis.RedisCache",
                "LOCATION": f"redis://127.0.0.1:{hung.getsockname()[1]}/0",
                "OPTIONS": {"socket_connect_timeout": 0.3, "socket_timeout": 0.3},
            },
        }
        monkeypatch.setattr(throttling, "_last_warning", float("-inf"))  # rate-limited: 1/min
        caplog.set_level(logging.WARNING, logger="apps.dashboard.throttling")
        started = time.monotonic()
        right = basic(staff_user.username, STAFF_PASSWORD)
        assert client.get("/rl/models", HTTP_AUTHORIZATION=right).status_code == 200
        assert time.monotonic() - started < 5
    assert "failed-login throttle unavailable" in caplog.text
