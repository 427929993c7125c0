"""The registry's admin pages in a real browser: headless Chromium (Debian's package) driven by
Playwright against daphne on the test database (see tests/dashboard/test_browser.py for the
set-up). The model page, the comparison, the promotion and rollback confirmation pages (and
the forced path when the gate refuses), the decisions list's time filter and a snapshot's
ladder, each saved as a screenshot under var/test-artifacts/admin/ (gitignored)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from django.db import connection
from django.utils import timezone

from apps.marketdata.models import OrderbookSnapshot, RecordingConnection
from apps.trading.models import TradingAction
from apps.training.models import ModelStatus, RLModel, TradingEpisode
from apps.training.selectors import active_model_for
from tests.conftest import REPO_ROOT
from tests.dashboard import test_browser as browser
from tests.dashboard.conftest import STAFF_PASSWORD
from tests.training.admin_support import version, write_learning_curve

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
]
ARTIFACTS = REPO_ROOT / "var" / "test-artifacts" / "admin"
chromium = browser.chromium  # the same fixtures as the live page's browser test
daphne = browser.daphne


@pytest.fixture
def shared_var(settings, tmp_path: Path) -> Path:
    """The test process writes artifacts and TensorBoard runs where daphne reads them."""
    settings.VAR_DIR = tmp_path / "daphne-var"
    settings.MODEL_DIR = settings.VAR_DIR / "models"
    settings.RL_PROMOTION_REQUIRE_EDGE = True
    settings.RL_PROMOTION_MIN_SHARPE = None
    return settings.VAR_DIR


def shot(page, name: str) -> Path:  # type: ignore[no-untyped-def]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000
    return path


def query(call):  # type: ignore[no-untyped-def]
    """Run a database read in its own thread: Playwright's sync API keeps an event loop
    running on this one, where Django refuses synchronous queries."""
    out: list = []

    def target() -> None:
        try:
            out.append(call())
        finally:
            connection.close()

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(timeout=30)
    return out[0]


def status(pk: int) -> str:
    return query(lambda: RLModel.objects.get(pk=pk).status)


def active_version(name: str) -> int | None:
    return query(lambda: getattr(active_model_for(name), "version", None))


def run_action(page, base: str, action: str, pks: list[int]) -> None:  # type: ignore[no-untyped-def]
    page.goto(f"{base}/admin/training/rlmodel/")
    for pk in pks:
        page.check(f'input.action-select[value="{pk}"]')
    page.select_option("select[name=action]", action)
    page.click("button[name=index]")


def test_model_page_comparison_and_confirmations_in_a_browser(
    chromium: Path, daphne: str, shared_var: Path, django_user_model
) -> None:
    from playwright.sync_api import expect, sync_playwright

    user = django_user_model.objects.create_user(
        "operator", password=STAFF_PASSWORD, is_staff=True, is_superuser=True
    )
    now = timezone.now()
    v1 = version("desk", 1, ModelStatus.RETIRED, agent_pnl=0.5, promoted_at=now - timedelta(2))
    v2 = version(
        "desk",
        2,
        ModelStatus.ACTIVE,
        parent=v1,
        promoted_at=now - timedelta(1),
        promoted_by=user,
        curves=[[1.0, 1.01, 1.03, 0.99, 1.02, 1.05, 1.01, 1.06], [1.0, 0.99, 1.0, 1.02]],
    )
    v3 = version("desk", 3, ModelStatus.READY, agent_pnl=2.5, edge=(1.1, 3.9), parent=v2)
    weak = version("desk", 4, ModelStatus.READY, agent_pnl=0.1, edge=(-0.9, 1.3))
    write_learning_curve(v2, [(256 * i, -0.5 + 0.1 * i) for i in range(1, 12)])
    errors: list[str] = []
    with sync_playwright() as playwright:
        engine = playwright.chromium.launch(
            executable_path=str(chromium), args=browser.CHROMIUM_ARGS
        )
        try:
            page = engine.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.goto(f"{daphne}/admin/login/?next=/admin/")
            page.fill("#id_username", "operator")
            page.fill("#id_password", STAFF_PASSWORD)
            page.click("input[type=submit]")
            page.wait_for_url(f"{daphne}/admin/")

            # The model page: a read-only report with intervals, charts and lineage.
            page.goto(f"{daphne}/admin/training/rlmodel/{v2.pk}/change/")
            agent_pnl = page.locator('td[data-policy="agent"][data-metric="pnl_per_hour_dollars"]')
            expect(agent_pnl).to_contain_text("+$1.20/h")
            expect(agent_pnl).to_contain_text("95% CI [$0.00/h, +$2.20/h]")
            expect(page.locator("table.kf-metrics thead")).to_contain_text("momentum (baseline)")
            expect(page.locator("#lineage")).to_contain_text("desk v1")
            expect(page.locator("#lineage")).to_contain_text("by operator")
            expect(page.locator("#held-out-period")).to_contain_text("2026-11-03 16:00:00 UTC")
            expect(page.locator("#artifact")).to_contain_text("KB")
            assert browser.wait_for_images(page, "img.kf-chart") == 2
            expect(page.locator("input[name=_save]")).to_have_count(0)
            expect(page.locator("a.deletelink")).to_have_count(0)
            # The report fits the window: no horizontal scrolling at 1,280 px.
            wide = page.evaluate(
                "[...document.querySelectorAll('body *')].filter(e => e.getBoundingClientRect()"
                ".right > 1281).slice(0, 8).map(e => e.tagName + '.' + e.className + '#' + e.id"
                " + ' ' + Math.round(e.getBoundingClientRect().right))"
            )
            assert page.evaluate("document.documentElement.scrollWidth") <= 1280, wide
            shot(page, "model-page.png")

            # Compare three versions: table and overlaid curves.
            run_action(page, daphne, "compare", [v1.pk, v2.pk, v3.pk])
            page.wait_for_url("**/admin/training/rlmodel/compare/**")
            heads = page.locator("#compare-table thead th a")
            expect(heads).to_have_text(["desk v1", "desk v2", "desk v3"])
            expect(page.locator("#compare-table")).to_contain_text("+$2.50/h")
            assert browser.wait_for_images(page, "#compare-chart") == 1
            shot(page, "compare.png")

            # Promote v3: a confirmation page first; nothing changes until it is confirmed.
            run_action(page, daphne, "promote", [v3.pk])
            expect(page.locator("#confirm-promote .kf-gate")).to_contain_text("promotable")
            expect(page.locator("#confirm-promote .kf-replaces")).to_contain_text("desk v2")
            assert status(v3.pk) == ModelStatus.READY
            shot(page, "confirm-promote.png")
            page.click("#confirm-promotion")
            expect(page.locator("ul.messagelist")).to_contain_text("Promoted: desk v3")
            assert active_version("desk") == 3

            # Roll back: the page shows both versions; confirming re-activates v2.
            run_action(page, daphne, "rollback", [v3.pk])
            expect(page.locator("#confirm-rollback")).to_contain_text("Back to v2")
            assert active_version("desk") == 3
            shot(page, "confirm-rollback.png")
            page.click("#confirm-rollback-button")
            expect(page.locator("ul.messagelist")).to_contain_text("Rolled back: desk v2")
            assert active_version("desk") == 2

            # A version the gate refuses: the page says why and offers only the forced path.
            run_action(page, daphne, "promote", [weak.pk])
            expect(page.locator("#confirm-promote .kf-gate")).to_contain_text(
                "lower bound is not above zero"
            )
            expect(page.locator("#confirm-promotion")).to_have_count(0)
            shot(page, "confirm-promote-refused.png")
            page.click("#force-promotion")
            expect(page.locator("label[for=id_override_reason]")).to_contain_text("Reason")
            assert status(weak.pk) == ModelStatus.READY
        finally:
            engine.close()
    assert [e for e in errors if not e.startswith("Failed to load resource")] == []


def test_decision_time_filter_and_book_ladder_in_a_browser(
    chromium: Path, daphne: str, django_user_model
) -> None:
    from playwright.sync_api import expect, sync_playwright

    django_user_model.objects.create_user(
        "trader", password=STAFF_PASSWORD, is_staff=True, is_superuser=True
    )
    t0 = datetime(2026, 11, 3, 14, 0, 0, tzinfo=UTC)
    model = RLModel.objects.create(
        name="desk", version=1, algorithm="PPO", status="active", markets=["KXA-1"]
    )
    episode = TradingEpisode.objects.create(
        model=model, mode="paper", markets=["KXA-1"], started_at=t0
    )
    for step in range(20):
        TradingAction.objects.create(
            episode=episode,
            step=step,
            time=t0 + timedelta(milliseconds=100 * step),
            market_ticker="KXA-1",
            action_id=1,
            action_type="buy_yes",
            action_size=1,
            price_e4=4600,
            quantity_filled_e2=100,
            fee_e4=70,
            position_after_e2=100 * step,
            cash_after_e4=1_000_000 - 4670 * step,
            model_version=1,
        )
    recording = RecordingConnection.objects.create(
        exchange="local", ws_url="ws://127.0.0.1:1/ws", opened_at=t0
    )
    snapshot = OrderbookSnapshot.objects.create(
        connection=recording,
        market_ticker="KXA-1",
        sid=1,
        seq=1,
        yes_levels=[[4000, 500], [4400, 1000]],
        no_levels=[[5000, 300], [5300, 700]],
        received_at=t0,
        source="ws",
        as_of_sid=1,
        as_of_seq=1,
    )
    with sync_playwright() as playwright:
        engine = playwright.chromium.launch(
            executable_path=str(chromium), args=browser.CHROMIUM_ARGS
        )
        try:
            page = engine.new_page(viewport={"width": 1280, "height": 900})
            page.goto(f"{daphne}/admin/login/?next=/admin/trading/tradingaction/")
            page.fill("#id_username", "trader")
            page.fill("#id_password", STAFF_PASSWORD)
            page.click("input[type=submit]")
            page.wait_for_url("**/admin/trading/tradingaction/")
            # Type a 300 ms window into the filter's inputs, as a user would.
            page.fill('input[name="time__gte"]', "2026-11-03T14:00:01.200")
            page.fill('input[name="time__lt"]', "2026-11-03T14:00:01.500")
            page.click("input.time-range-apply")
            page.wait_for_url("**time__gte=*")
            expect(page.locator("td.field-price")).to_have_count(3)
            expect(page.locator("#result_list")).to_contain_text("2026-11-03 14:00:01.400 UTC")
            expect(page.locator("#result_list")).to_contain_text("$0.4600")
            shot(page, "decisions-time-filter.png")

            page.goto(f"{daphne}/admin/marketdata/orderbooksnapshot/{snapshot.pk}/change/")
            expect(page.locator(".book-ladder tr.level")).to_have_count(4)
            expect(page.locator(".book-ladder tr.best-ask")).to_contain_text("7.00")
            expect(page.locator(".book-summary")).to_contain_text("spread $0.0300")
            shot(page, "snapshot-ladder.png")
        finally:
            engine.close()
