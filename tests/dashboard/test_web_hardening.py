"""Hostile requests to the web side: absurd page numbers and ids are 400/404 JSON on every list,
and the static files the ASGI app serves never include anything outside the static
directories, however the path is encoded (a 404, never a 500)."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from channels.testing import HttpCommunicator
from django.urls import URLPattern, URLResolver, get_resolver
from rest_framework.mixins import ListModelMixin

from kalshiflow_site.asgi import application
from tests.conftest import REPO_ROOT

LIVE_JS = REPO_ROOT / "apps/dashboard/static/dashboard/live.js"


def list_routes(patterns: list | None = None, prefix: str = "") -> list[str]:
    """Every paginated list of the API (views with ListModelMixin), found by walking the URLs so
    that a new list cannot be forgotten."""
    routes = []
    for entry in get_resolver().url_patterns if patterns is None else patterns:
        if isinstance(entry, URLResolver):
            routes += list_routes(entry.url_patterns, prefix + str(entry.pattern))
        elif isinstance(entry, URLPattern):
            view = getattr(entry.callback, "cls", None)
            if view is not None and issubclass(view, ListModelMixin):
                routes.append("/" + prefix + str(entry.pattern))
    return sorted(routes)


def test_the_walk_finds_the_lists() -> None:
    assert {"/rl/models", "/rl/episodes", "/rl/actions"} <= set(list_routes())


@pytest.mark.django_db
@pytest.mark.parametrize("route", list_routes())
@pytest.mark.parametrize(
    ("query", "status"),
    [
        ({"page": "9" * 5000}, 404),  # int() of it raised ValueError: a 500
        ({"page": "1" + "0" * 18}, 404),
        ({"page": "1" * 19}, 404),
        ({"page": "²"}, 400),  # str.isdigit() is true, int() refuses it
        ({"page": "١"}, 400),  # an Arabic-Indic one: ASCII digits only
        ({"page": "0"}, 400),
        ({"page": "000"}, 400),
        ({"page": "-1"}, 400),
        ({"page": " 1"}, 400),
        ({"page": "1e3"}, 400),
        ({"page_size": "9" * 5000}, 400),
        ({"page_size": "²"}, 400),
        ({"page_size": "501"}, 400),
    ],
)
def test_absurd_page_numbers_are_400_or_404_json_on_every_list(
    staff_client, route, query, status
) -> None:
    response = staff_client.get(route, query)
    assert response.status_code == status, response.content[:300]
    body = response.json()
    assert body["status"] == status
    assert body["error"] == ("not_found" if status == 404 else "invalid")
    assert body["message"]
    assert len(response.content) < 1000  # the 5,000 digits are not echoed back


@pytest.mark.django_db
@pytest.mark.parametrize("route", list_routes())
def test_a_page_with_leading_zeros_is_that_page(staff_client, route) -> None:
    assert staff_client.get(route, {"page": "0001"}).status_code == 200


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("route", "field"), [("/rl/episodes", "model"), ("/rl/actions", "episode")]
)
@pytest.mark.parametrize("value", [str(2**63), "9" * 25])
def test_an_id_beyond_bigint_is_a_400(staff_client, route, field, value) -> None:
    # On SQLite the driver raised OverflowError for it (a 500); ids are bigint everywhere.
    response = staff_client.get(route, {field: value})
    assert response.status_code == 400
    assert field in response.json()["fields"]
    assert staff_client.get(route, {field: str(2**63 - 1)}).status_code == 200


# -- static files ------------------------------------------------------------------------------


async def http_get(path: str) -> tuple[int, bytes]:
    """GET ``path`` (already decoded, as a server hands it to the app) through the project's
    ASGI application: status and whole body."""
    communicator = HttpCommunicator(application, "GET", path)
    await communicator.send_input({"type": "http.request", "body": b""})
    start = await communicator.receive_output(timeout=10)
    assert start["type"] == "http.response.start"
    body = b""
    while True:
        message = await communicator.receive_output(timeout=10)
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    await communicator.wait()
    return start["status"], body


TRAVERSALS = [
    "/static/../../etc/passwd",  # what a server makes of /static/%2e%2e/%2e%2e/etc/passwd
    "/static/%2e%2e/%2e%2e/etc/passwd",  # double-encoded: the handler decodes once more
    "/static/..%2f..%2f..%2fetc/passwd",
    "/static/dashboard/../../../../../../etc/passwd",
    "/static/admin/../../settings.py",
    "/static/dashboard/../dashboard/live.js",  # inside, but not a plain path either
    "/static/./dashboard/live.js",
    "/static//etc/passwd",
    "/static/%2fetc/passwd",
    "/static/..\\..\\etc\\passwd",
    "/static/dashboard/live.js\x00.png",
    "/static/dashboard/live.js%00",
    "/static/dashboard/live.js/",
    "/static/dashboard/",
    "/static/",
]


@pytest.mark.django_db
@pytest.mark.parametrize("path", TRAVERSALS)
def test_a_static_path_that_climbs_out_or_plays_tricks_is_a_404(path) -> None:
    status, body = asyncio.run(http_get(path))
    assert status == 404, body[:300]
    assert b"root:" not in body


@pytest.mark.django_db
def test_a_plain_static_path_is_served() -> None:
    status, body = asyncio.run(http_get("/static/dashboard/live.js"))
    assert status == 200
    assert body == LIVE_JS.read_bytes()


@pytest.mark.django_db
def test_a_symlink_out_of_a_static_directory_is_not_followed(tmp_path, settings) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret")
    static_dir = tmp_path / "static-extra"
    static_dir.mkdir()
    (static_dir / "fine.txt").write_text("public")
    (static_dir / "leak.txt").symlink_to(secret)
    settings.STATICFILES_DIRS = [static_dir]
    assert asyncio.run(http_get("/static/fine.txt")) == (200, b"public")
    status, body = asyncio.run(http_get("/static/leak.txt"))
    assert status == 404
    assert b"top secret" not in body


# -- the same through daphne, percent-encoded on the wire -------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def daphne_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """``./run serve``'s server (daphne on the project's ASGI app), on its own SQLite."""
    var = tmp_path_factory.mktemp("daphne-var")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(DJANGO_SETTINGS_MODULE="kalshiflow_site.settings", RL_VAR_DIR=str(var))
    log_path = var / "daphne.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port),
             "kalshiflow_site.asgi:application"],
            cwd=REPO_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 30
            while True:
                with socket.socket() as sock:
                    if sock.connect_ex(("127.0.0.1", port)) == 0:
                        break
                assert process.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, "daphne did not listen within 30 s"
                time.sleep(0.2)
            yield port
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    assert "Traceback" not in log_path.read_text(), log_path.read_text()


def raw_get(port: int, target: str) -> tuple[int, bytes]:
    """Send ``target`` byte for byte (no client normalises the dots away) and read it all."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode()
        )
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


@pytest.mark.parametrize(
    "target",
    [
        "/static/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "/static/%2E%2E/%2E%2E/%2E%2E/%2E%2E/%2E%2E/etc/passwd",
        "/static/..%2f..%2f..%2f..%2f..%2fetc/passwd",
        "/static/%252e%252e/%252e%252e/etc/passwd",
        "/static/dashboard/..%5c..%5c..%5cetc%5cpasswd",
        "/static/dashboard/live.js%00",
        "/static/%c0%ae%c0%ae/%c0%ae%c0%ae/etc/passwd",
        "/static/%ff%fe",
    ],
)
def test_daphne_answers_encoded_traversals_with_404(daphne_port, target) -> None:
    status, body = raw_get(daphne_port, target)
    assert status == 404, body[:300]
    assert b"root:" not in body


def test_daphne_serves_a_plain_static_file(daphne_port) -> None:
    status, body = raw_get(daphne_port, "/static/dashboard/live.js")
    assert status == 200
    assert LIVE_JS.read_bytes() in body  # chunked or not
