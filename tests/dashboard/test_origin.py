"""The live socket's origin check (apps/dashboard/origin.py), case by case; test_live.py proves
it guards the real ASGI application."""

from __future__ import annotations

import pytest

from apps.dashboard.origin import same_origin


def scope(origin: str | None, host: str | None, scheme: str = "ws") -> dict:
    headers = [(b"origin", origin.encode())] if origin is not None else []
    headers += [(b"host", host.encode())] if host is not None else []
    return {"type": "websocket", "scheme": scheme, "headers": headers}


@pytest.mark.parametrize(
    ("origin", "host", "scheme", "accepted"),
    [
        # The page's own origin: the same host and port as the Host header.
        ("http://localhost:8000", "localhost:8000", "ws", True),
        ("http://LOCALHOST:8000", "localhost:8000", "ws", True),
        ("http://127.0.0.1", "127.0.0.1:80", "ws", True),
        ("http://127.0.0.1:80", "127.0.0.1", "ws", True),
        ("https://localhost", "localhost", "wss", True),
        ("https://localhost", "localhost:443", "ws", True),  # TLS ended by a proxy
        ("http://[::1]:8000", "[::1]:8000", "ws", True),
        # Another port of an allowed host: another program's page. Refused.
        ("http://localhost:9999", "localhost:8000", "ws", False),
        ("http://localhost", "localhost:8000", "ws", False),
        ("https://localhost", "localhost:80", "ws", False),
        # Another allowed host name than the one the browser connected to.
        ("http://127.0.0.1:8000", "localhost:8000", "ws", False),
        # DNS rebinding: same origin, but a host name the site does not serve.
        ("http://evil.example:8000", "evil.example:8000", "ws", False),
        # A plain-http page may not use a socket over TLS.
        ("http://localhost", "localhost", "wss", False),
        # No Origin, Origin null, no Host, junk.
        (None, "localhost:8000", "ws", False),
        ("null", "localhost:8000", "ws", False),
        ("http://localhost:8000", None, "ws", False),
        ("http://localhost:99999", "localhost:99999", "ws", False),
        ("http://localhost:80x", "localhost:80", "ws", False),
        ("http://user:pw@localhost:8000", "localhost:8000", "ws", False),
        ("http://localhost:8000/path", "localhost:8000", "ws", False),
        ("ftp://localhost:8000", "localhost:8000", "ws", False),
        ("http://localhost:8000", "localhost:8000:1", "ws", False),
    ],
)
def test_only_the_origin_of_the_page_host_and_port_is_accepted(
    settings, origin, host, scheme, accepted
) -> None:
    settings.ALLOWED_HOSTS = ["localhost", "127.0.0.1", "[::1]"]
    settings.CSRF_TRUSTED_ORIGINS = []
    assert same_origin(scope(origin, host, scheme)) is accepted


def test_two_origin_or_host_headers_are_refused(settings) -> None:
    settings.ALLOWED_HOSTS = ["localhost"]
    twice = scope("http://localhost:8000", "localhost:8000")
    assert same_origin(twice)
    twice["headers"].append((b"origin", b"http://localhost:8000"))
    assert not same_origin(twice)


@pytest.mark.parametrize(
    ("trusted", "origin", "accepted"),
    [
        ("https://rl.example.com", "https://rl.example.com", True),
        ("https://rl.example.com", "http://rl.example.com", False),
        ("https://rl.example.com", "https://rl.example.com:8443", False),
        ("https://*.example.com", "https://rl.example.com", True),
        ("https://*.example.com", "https://example.org", False),
    ],
)
def test_csrf_trusted_origins_admit_a_proxy_public_origin(
    settings, trusted, origin, accepted
) -> None:
    settings.ALLOWED_HOSTS = ["127.0.0.1"]
    settings.CSRF_TRUSTED_ORIGINS = [trusted]
    assert same_origin(scope(origin, "127.0.0.1:8000")) is accepted
    # The Host must still be one the site serves.
    settings.ALLOWED_HOSTS = ["other.example"]
    assert not same_origin(scope(origin, "127.0.0.1:8000"))


def test_debug_without_allowed_hosts_allows_localhost_like_django(settings) -> None:
    settings.DEBUG, settings.ALLOWED_HOSTS = True, []
    assert same_origin(scope("http://localhost:8000", "localhost:8000"))
    assert not same_origin(scope("http://example.com:8000", "example.com:8000"))
