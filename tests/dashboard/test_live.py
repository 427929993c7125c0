"""The live page's consumer over the real ASGI app (auth, origin check, routing): a staff
socket gets the latest books, summaries, and each book.update the recorder publishes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.db import connections

from apps.dashboard.consumers import LIVE_WS_PATH, LiveConsumer
from apps.marketdata.kalshi.book import OrderBook
from apps.marketdata.live import BookPublisher
from kalshiflow_site.asgi import application
from tests.dashboard.conftest import KEY_ID, PRIVATE_KEY, SECRET_MARKERS, make_world

pytestmark = pytest.mark.django_db(transaction=True)
ORIGIN = (b"origin", b"http://127.0.0.1")
HOST = (b"host", b"127.0.0.1")  # the page's own address, as a browser sends it


@pytest.fixture(autouse=True)
def _close_worker_thread_connections() -> Iterator[None]:
    """The ASGI app reads the database from asgiref's worker thread; close that thread's
    connection after each test so the test database can be dropped."""
    yield
    asyncio.run(sync_to_async(connections.close_all)())


def session_headers(client: Any, user: Any) -> list[tuple[bytes, bytes]]:
    client.force_login(user)
    cookie = f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}"
    return [ORIGIN, HOST, (b"cookie", cookie.encode())]


async def receive_until(
    communicator: WebsocketCommunicator,
    wanted: Any,
    timeout_s: float = 5.0,
    sink: list[dict] | None = None,
) -> dict:
    """The first message for which ``wanted(message)`` is true (others are skipped)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        left = deadline - asyncio.get_running_loop().time()
        assert left > 0, "the expected message did not arrive in time"
        message = await communicator.receive_json_from(timeout=left)
        if sink is not None:
            sink.append(message)
        if wanted(message):
            return message


def test_a_staff_socket_gets_books_summaries_and_published_updates(
    client, staff_user, monkeypatch, settings
) -> None:
    world = make_world()
    headers = session_headers(client, staff_user)
    monkeypatch.setattr(LiveConsumer, "summary_interval_s", 0.2)
    settings.KALSHI_API_KEY_ID = KEY_ID
    settings.KALSHI_PRIVATE_KEY_PEM = PRIVATE_KEY
    received: list[dict] = []

    async def scenario() -> None:
        communicator = WebsocketCommunicator(application, LIVE_WS_PATH, headers=headers)
        connected, _ = await communicator.connect(timeout=5)
        assert connected
        first = await receive_until(communicator, lambda m: m["type"] == "book", sink=received)
        assert first["book"]["market_ticker"] == world.market
        assert first["book"]["yes_bid_e4"] == 4500  # rebuilt from the tables
        summary = await receive_until(communicator, lambda m: m["type"] == "summary", sink=received)
        assert summary["markets"][0]["recording"] is True
        assert summary["ingest"][0]["counters"]["client"]["messages"] == 1234
        assert summary["paper"]["episode"]["positions_e2"] == {world.market: 200}
        assert summary["plot_episode_id"] == world.paper.pk

        book = OrderBook(world.market)
        book.apply_snapshot([(4600, 300)], [(5100, 400)])
        assert await BookPublisher().publish_changed({world.market: book}, trusted=bool) == 1
        update = await receive_until(
            communicator,
            lambda m: m["type"] == "book" and m["book"]["yes_bid_e4"] == 4600,
            sink=received,
        )
        assert update["book"]["yes_ask_e4"] == 4900
        assert update["book"]["yes_depth"] == [[4600, 300]]
        # Summaries keep coming on their own.
        await receive_until(communicator, lambda m: m["type"] == "summary", sink=received)
        await communicator.disconnect()

    asyncio.run(scenario())
    # Nothing the socket sent carries the Kalshi credentials.
    sent = json.dumps(received)
    assert all(marker not in sent for marker in SECRET_MARKERS)


def test_an_anonymous_socket_is_refused(db) -> None:
    async def scenario() -> None:
        communicator = WebsocketCommunicator(application, LIVE_WS_PATH, headers=[ORIGIN, HOST])
        connected, _ = await communicator.connect(timeout=5)
        assert not connected

    asyncio.run(scenario())


def test_a_socket_of_a_user_who_is_not_staff_is_refused(client, django_user_model) -> None:
    visitor = django_user_model.objects.create_user("visitor", password="v" * 12)
    headers = session_headers(client, visitor)

    async def scenario() -> None:
        communicator = WebsocketCommunicator(application, LIVE_WS_PATH, headers=headers)
        connected, _ = await communicator.connect(timeout=5)
        assert not connected

    asyncio.run(scenario())


def test_a_socket_from_a_foreign_origin_is_refused(client, staff_user) -> None:
    headers = [(b"origin", b"http://evil.example"), *session_headers(client, staff_user)[1:]]

    async def scenario() -> None:
        communicator = WebsocketCommunicator(application, LIVE_WS_PATH, headers=headers)
        connected, _ = await communicator.connect(timeout=5)
        assert not connected

    asyncio.run(scenario())


def test_the_live_page_needs_staff_and_loads_only_local_assets(client, staff_user) -> None:
    anonymous = client.get("/rl/live")
    assert anonymous.status_code == 302
    assert anonymous["Location"].startswith("/admin/login/")
    client.force_login(staff_user)
    html = client.get("/rl/live").content.decode()
    assert 'src="/static/dashboard/live.js"' in html
    assert f'data-ws-path="{LIVE_WS_PATH}"' in html
    assert "http://" not in html and "https://" not in html


def origin_headers(client: Any, user: Any, origin: str, host: str) -> list:
    cookie = session_headers(client, user)[-1]
    return [(b"origin", origin.encode()), (b"host", host.encode()), cookie]


async def connects(headers: list) -> bool:
    communicator = WebsocketCommunicator(application, LIVE_WS_PATH, headers=headers)
    connected, _ = await communicator.connect(timeout=5)
    if connected:
        await communicator.disconnect()
    return connected


def test_a_staff_socket_from_another_port_of_an_allowed_host_is_refused(
    client, staff_user, settings
) -> None:
    """Any page another program serves on localhost:9999 could otherwise open the staff socket
    with the staff's cookie (cookies do not depend on the port)."""
    settings.ALLOWED_HOSTS = ["localhost", "127.0.0.1"]
    own = origin_headers(client, staff_user, "http://localhost:8000", "localhost:8000")
    other = origin_headers(client, staff_user, "http://localhost:9999", "localhost:8000")
    assert asyncio.run(connects(own)) is True
    assert asyncio.run(connects(other)) is False
    # Behind a proxy that rewrites Host, the public origin is declared in CSRF_TRUSTED_ORIGINS.
    proxied = origin_headers(client, staff_user, "https://rl.example.com", "127.0.0.1:8000")
    assert asyncio.run(connects(proxied)) is False
    settings.CSRF_TRUSTED_ORIGINS = ["https://rl.example.com"]
    assert asyncio.run(connects(proxied)) is True
