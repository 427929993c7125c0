"""Access and secrets over every route, found by walking the URL resolver and the OpenAPI
schema, so that a new endpoint cannot be forgotten.

Only /rl/health is public. JSON endpoints answer anonymous callers 401 (with a Cookie
challenge naming the login form; Basic when RL_API_BASIC_AUTH is on) and logged-in non-staff
users 403; pages for people (the live page, Swagger UI) redirect to the admin login. No
response, log line or template carries the Kalshi key id or private key.
"""

from __future__ import annotations

import logging
import re

import pytest
from django.contrib import admin
from django.urls import URLPattern, URLResolver, get_resolver, reverse
from drf_spectacular.generators import SchemaGenerator

from apps.dashboard.routing import websocket_urlpatterns
from tests.conftest import REPO_ROOT
from tests.dashboard.conftest import KEY_ID, PRIVATE_KEY, SECRET_MARKERS

pytestmark = pytest.mark.django_db
PUBLIC = {"/rl/health"}
PAGES = {"/rl/live", "/rl/docs"}  # HTML for people: a login redirect, not a 401


def walk(patterns: list, prefix: str = "") -> list[str]:
    """Every route below ``patterns`` as a pattern string, e.g. ``rl/models/<int:pk>``."""
    routes = []
    for entry in patterns:
        if isinstance(entry, URLResolver):
            routes += walk(entry.url_patterns, prefix + str(entry.pattern))
        elif isinstance(entry, URLPattern):
            routes.append(prefix + str(entry.pattern))
    return routes


def rl_routes() -> list[str]:
    return sorted("/" + r for r in walk(get_resolver().url_patterns) if r.startswith("rl/"))


def example_path(route: str, ids: dict[str, int] | None = None) -> str:
    """Fill each ``<converter:name>`` with an id from ``ids`` (by the route's first word), or 1."""
    ids = ids or {}
    word = route.strip("/").split("/")[1] if route.count("/") > 1 else ""
    return re.sub(r"<(?:\w+:)?\w+>", str(ids.get(word, 1)), route)


def shape(path: str) -> str:
    """A route or an OpenAPI path with its parameters blanked: /rl/models/<int:pk> and
    /rl/models/{id} both become /rl/models/{}."""
    return re.sub(r"<[^>]+>|\{[^}]+\}", "{}", path)


def test_the_resolver_walk_sees_every_operation_of_the_schema() -> None:
    schema = SchemaGenerator().get_schema(request=None, public=True)
    routes = {shape(r) for r in rl_routes()}
    assert {shape(p) for p in schema["paths"]} <= routes
    assert {"/rl/schema", "/rl/live", "/rl/docs", "/rl/books", "/rl/actions"} <= routes


@pytest.mark.parametrize("route", rl_routes())
def test_every_route_but_health_refuses_anonymous_callers(client, route) -> None:
    response = client.get(example_path(route))
    if route in PUBLIC:
        assert response.status_code in (200, 503)
    elif route in PAGES:
        assert response.status_code == 302
        assert response["Location"].startswith(reverse("admin:login"))
    else:
        assert response.status_code == 401, response.content
        # Basic auth is off by default: the challenge names the login form instead.
        assert response["WWW-Authenticate"].startswith("Cookie realm=")
        body = response.json()
        assert body["error"] == "not_authenticated"
        assert body["message"]


@pytest.mark.parametrize("route", sorted(set(rl_routes()) - PUBLIC - PAGES))
def test_every_api_route_refuses_a_user_who_is_not_staff(client, django_user_model, route) -> None:
    client.force_login(django_user_model.objects.create_user("visitor", password="v" * 12))
    response = client.get(example_path(route))
    assert response.status_code == 403
    assert response.json()["error"] == "permission_denied"


def test_every_websocket_route_is_known_to_the_live_tests() -> None:
    # test_live.py proves anonymous and non-staff sockets are refused on these.
    assert [str(p.pattern) for p in websocket_urlpatterns] == ["rl/ws/live"]


def admin_pages(world) -> list[str]:  # type: ignore[no-untyped-def]
    pages = [reverse("admin:index")]
    for model in admin.site._registry:
        info = (model._meta.app_label, model._meta.model_name)
        pages.append(reverse("admin:{}_{}_changelist".format(*info)))
        first = model.objects.order_by("pk").first()
        if first is not None:
            pages.append(reverse("admin:{}_{}_change".format(*info), args=[first.pk]))
    return pages


def test_no_response_log_or_template_shows_the_kalshi_key(
    staff_client, world, settings, monkeypatch, caplog
) -> None:
    monkeypatch.setenv("KALSHI_API_KEY_ID", KEY_ID)
    monkeypatch.setenv("KALSHI_PRIVATE_KEY_PEM", PRIVATE_KEY)
    settings.KALSHI_API_KEY_ID = KEY_ID
    settings.KALSHI_PRIVATE_KEY_PEM = PRIVATE_KEY
    ids = {"models": world.model.pk, "episodes": world.evaluation.pk}
    urls = [example_path(route, ids) for route in rl_routes()]
    urls += ["/rl/schema?format=json", "/rl/books?depth=50", "/rl/no-such-route"]
    urls += admin_pages(world)
    caplog.set_level(logging.DEBUG)
    checked = 0
    for url in urls:
        response = staff_client.get(url)
        assert response.status_code in (200, 404), (url, response.status_code)
        body = response.content.decode("utf-8", errors="replace")
        for marker in SECRET_MARKERS:
            assert marker not in body, f"{url} shows {marker!r}"
            assert marker not in str(response.headers), f"{url} headers show {marker!r}"
        checked += 1
    assert checked >= 30
    for marker in SECRET_MARKERS:
        assert marker not in caplog.text
    # No template even names the settings that hold them.
    template_dirs = [*(REPO_ROOT / "apps").glob("*/templates"), REPO_ROOT / "templates"]
    for template in (p for d in template_dirs for p in d.rglob("*.html")):
        assert not re.search(r"KALSHI_(API_KEY|PRIVATE_KEY)", template.read_text()), template
