"""The live socket's origin check: a WebSocket is accepted only from a page of this very site.

Channels' ``AllowedHostsOriginValidator`` compares only the Origin's host name with
``ALLOWED_HOSTS``, so with ``localhost`` allowed, a page served by *any* program on
``http://localhost:9999`` could open the staff socket with the staff's session cookie (cookies
do not depend on the port). Here, as Django's CSRF check does for a form post, the Origin must
name the same host *and port* as the request's ``Host`` header (the address the browser
connected to), that host must be in ``ALLOWED_HOSTS`` (as Django requires of every HTTP
request: this also stops DNS rebinding), or the Origin must be listed in
``CSRF_TRUSTED_ORIGINS`` (a reverse proxy that rewrites ``Host``). Over ``wss`` the page must
be ``https`` too. A request with no Origin, several, or ``Origin: null`` is refused.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.http.request import is_same_domain, split_domain_port, validate_host

DEFAULT_PORTS = {"http": 80, "https": 443}


def _headers(scope: dict[str, Any], name: bytes) -> list[str]:
    return [value.decode("latin-1") for key, value in scope.get("headers", []) if key == name]


def allowed_hosts() -> list[str]:
    hosts = list(settings.ALLOWED_HOSTS)
    if settings.DEBUG and not hosts:  # what Django allows for HTTP in this case
        hosts = [".localhost", "127.0.0.1", "[::1]"]
    return hosts


def trusted_origin(origin: str) -> bool:
    """``origin`` is in CSRF_TRUSTED_ORIGINS (exactly, or under a ``scheme://*.domain`` entry)."""
    scheme, netloc = urlsplit(origin)[:2]
    for trusted in settings.CSRF_TRUSTED_ORIGINS:
        if trusted.lower() == origin:
            return True
        t_scheme, t_netloc = urlsplit(trusted.lower())[:2]
        if (
            t_scheme == scheme
            and t_netloc.startswith("*.")
            and is_same_domain(netloc, t_netloc[1:])
        ):
            return True
    return False


def same_origin(scope: dict[str, Any]) -> bool:
    """Whether the socket's Origin is this site as the browser addressed it (see module doc)."""
    origins, hosts = _headers(scope, b"origin"), _headers(scope, b"host")
    if len(origins) != 1 or len(hosts) != 1:
        return False
    origin = origins[0].strip().lower()
    try:
        parts = urlsplit(origin)
        origin_port = parts.port
    except ValueError:  # a port that is not a number or out of range
        return False
    if (
        parts.scheme not in DEFAULT_PORTS
        or not parts.hostname
        or parts.username is not None
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
    ):
        return False
    if scope.get("scheme") == "wss" and parts.scheme != "https":
        return False
    domain, port = split_domain_port(hosts[0])
    if not domain or not validate_host(domain, allowed_hosts()):
        return False
    if trusted_origin(origin):
        return True
    default = DEFAULT_PORTS[parts.scheme]
    return parts.hostname == domain.strip("[]") and (origin_port or default) == (
        int(port) if port else default
    )


class SameOriginValidator:
    """ASGI middleware for WebSocket routes: refuse the handshake (403) unless
    :func:`same_origin`."""

    def __init__(self, application: Any) -> None:
        self.application = application

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if scope["type"] != "websocket":
            raise ValueError("SameOriginValidator only guards WebSocket connections")
        if same_origin(scope):
            return await self.application(scope, receive, send)
        return await WebsocketDenier()(scope, receive, send)
