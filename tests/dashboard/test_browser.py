"""The live page and the admin plots in a real browser: headless Chromium (Debian's package)
driven by Playwright against daphne serving the project on a free port.

The test database is shared with the daphne process (PostgreSQL, committed data) and so is
the channel layer (Redis): a book published here with :class:`BookPublisher` must show on
the page. Without Chromium the test is skipped with the reason, except in CI (CI=true), where
it fails (./run test installs Chromium when it is missing).
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings

from apps.marketdata.kalshi.book import OrderBook
from apps.marketdata.live import BookPublisher
from tests.conftest import REPO_ROOT, require_service
from tests.dashboard.conftest import STAFF_PASSWORD, World, make_world

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ASGI_APP = "kalshiflow_site.asgi:application"
pytestmark = [
    pytest.mark.postgres,
    pytest.mark.redis,
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def database_url() -> str:
    db = settings.DATABASES["default"]
    auth = db["USER"] + (f":{db['PASSWORD']}" if db.get("PASSWORD") else "")
    return f"postgres://{auth}@{db['HOST']}:{db['PORT']}/{db['NAME']}"


@pytest.fixture
def chromium() -> Path:
    require_service(f"Chromium ({CHROMIUM}, Debian's chromium package)", CHROMIUM.exists())
    return CHROMIUM


@pytest.fixture
def daphne(tmp_path: Path) -> Iterator[str]:
    """daphne serving kalshiflow_site.asgi on a free port, on the test database; its base URL."""
    port = free_port()
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "kalshiflow_site.settings",
        "DATABASE_URL": database_url(),
        "RL_VAR_DIR": str(tmp_path / "daphne-var"),
        "SECRET_KEY": "browser-test-secret-key-not-for-production",
    }
    log = (tmp_path / "daphne.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), ASGI_APP],
        cwd=REPO_ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert process.poll() is None, (tmp_path / "daphne.log").read_text()
            assert time.monotonic() < deadline, "daphne did not listen within 30 s"
            time.sleep(0.2)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def publish_in_thread(market: str, yes: list, no: list) -> None:
    """Publish a book the way the recorder does (own thread: Playwright's sync API keeps an
    event loop on this one)."""

    async def publish() -> int:
        book = OrderBook(market)
        book.apply_snapshot(yes, no)
        return await BookPublisher().publish_changed({market: book}, trusted=bool)

    sent: list[int] = []
    thread = threading.Thread(target=lambda: sent.append(asyncio.run(publish())))
    thread.start()
    thread.join(timeout=10)
    assert sent == [1]


def wait_for_images(page, selector: str) -> int:  # type: ignore[no-untyped-def]
    """Scroll each image into view (the admin's are lazy) and wait until it has decoded."""
    images = page.locator(selector)
    count = images.count()
    for i in range(count):
        images.nth(i).scroll_into_view_if_needed()
    page.wait_for_function(
        "sel => [...document.querySelectorAll(sel)].every(i => i.complete && i.naturalWidth > 0)",
        arg=selector,
        timeout=15_000,
    )
    return count


def test_the_live_page_shows_book_updates_and_the_admin_shows_plots(
    chromium: Path, daphne: str, django_user_model, tmp_path: Path
) -> None:
    from playwright.sync_api import expect, sync_playwright

    world: World = make_world(market="H8-BROWSER-MKT")
    django_user_model.objects.create_user(
        "browser", password=STAFF_PASSWORD, is_staff=True, is_superuser=True
    )
    requested: list[str] = []
    failed: list[str] = []
    console_errors: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1800})
            page.on("request", lambda request: requested.append(request.url))
            page.on(
                "response",
                lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 400 else None,
            )
            page.on(
                "console",
                lambda msg: console_errors.append(msg.text) if msg.type == "error" else None,
            )
            # Anonymous: the live page sends us to the admin login, and back after it.
            page.goto(f"{daphne}/rl/live")
            page.fill("#id_username", "browser")
            page.fill("#id_password", STAFF_PASSWORD)
            page.click("input[type=submit]")
            page.wait_for_url(f"{daphne}/rl/live")
            expect(page.locator("#connection")).to_have_attribute("data-state", "open")

            row = page.locator(f'#books tr[data-market="{world.market}"]')
            # First the latest book rebuilt from the tables (snapshot + delta: bid 0.45) ...
            expect(row.locator('[data-field="yes_bid"]')).to_have_text("$0.4500")
            # ... then what the recorder's publisher sends.
            publish_in_thread(world.market, [(4600, 300)], [(5100, 400)])
            expect(row.locator('[data-field="yes_bid"]')).to_have_text("$0.4600", timeout=10_000)
            expect(row.locator('[data-field="yes_ask"]')).to_have_text("$0.4900")

            expect(page.locator("#ingest tbody tr")).to_have_count(1)
            expect(page.locator("#ingest tbody")).to_contain_text("1234")
            expect(page.locator("#paper-workers")).to_contain_text("$0.42")
            expect(page.locator("#paper-workers")).to_contain_text("h8agent v2 (PPO)")
            expect(page.locator("#paper-episode")).to_contain_text(f"#{world.paper.pk}")
            expect(page.locator("#decisions tbody tr")).to_have_count(3)
            expect(page.locator("#positions tbody")).to_contain_text("2.00")
            wait_for_images(page, "#plot")
            page.screenshot(path=str(tmp_path / "live.png"), full_page=True)

            page.goto(f"{daphne}/admin/training/tradingepisode/{world.evaluation.pk}/change/")
            assert wait_for_images(page, "img.episode-plot") == 1
            page.screenshot(path=str(tmp_path / "admin-episode.png"), full_page=True)

            page.goto(f"{daphne}/admin/training/rlmodel/{world.model.pk}/change/")
            assert wait_for_images(page, "img.episode-plot") == 2
            page.screenshot(path=str(tmp_path / "admin-model.png"), full_page=True)

            # Swagger UI from the local sidecar files, reading /rl/schema with the session.
            page.goto(f"{daphne}/rl/docs")
            expect(page.locator(".opblock-summary-path").first).to_be_visible(timeout=15_000)
            expect(page.locator('.opblock-summary-path[data-path="/rl/books"]')).to_have_count(1)
            page.screenshot(path=str(tmp_path / "docs.png"))
        finally:
            browser.close()

    for name in ("live.png", "admin-episode.png", "admin-model.png", "docs.png"):
        assert (tmp_path / name).stat().st_size > 10_000
    # Everything the pages loaded came from our own server: no CDN, no internet.
    assert requested
    assert all(url.startswith((daphne, "ws://127.0.0.1")) for url in requested), requested
    # Nothing missing (but the favicon the browser asks every site for) and no script error.
    assert [f for f in failed if not f.endswith("/favicon.ico")] == []
    assert [e for e in console_errors if not e.startswith("Failed to load resource")] == []
