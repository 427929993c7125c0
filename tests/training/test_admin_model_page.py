"""The admin's model page, comparison and promotion/rollback confirmation pages (Django's test
client on the real database): formatted figures with their intervals, lineage, artifact and
TensorBoard, no raw JSON and no Save button; nothing is promoted or rolled back before the
confirmation page's own post."""

from __future__ import annotations

import html as html_lib
import re
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from apps.training import selectors
from apps.training.models import ModelStatus, RLModel
from tests.training.admin_support import HELD_OUT, version, write_learning_curve

pytestmark = pytest.mark.django_db
CHANGELIST = "/admin/training/rlmodel/"


@pytest.fixture
def gate_on(settings):  # type: ignore[no-untyped-def]
    settings.RL_PROMOTION_REQUIRE_EDGE = True
    settings.RL_PROMOTION_MIN_SHARPE = None
    return settings


@pytest.fixture
def lineage(admin_user):  # type: ignore[no-untyped-def]
    """v1 promoted first, then v2 (fine-tuned from v1) promoted over it; v3 ready."""
    now = timezone.now()
    v1 = version("desk", 1, ModelStatus.RETIRED, agent_pnl=0.5, promoted_at=now - timedelta(days=2))
    v2 = version(
        "desk",
        2,
        ModelStatus.ACTIVE,
        parent=v1,
        promoted_at=now - timedelta(days=1),
        promoted_by=admin_user,
    )
    v3 = version("desk", 3, ModelStatus.READY, agent_pnl=2.5, edge=(1.1, 3.9), parent=v2)
    return v1, v2, v3


def text(response) -> str:  # type: ignore[no-untyped-def]
    """The page's text with tags removed and whitespace collapsed."""
    html = response.content.decode()
    html = re.sub(r"<(script|style)[^>]*>.*?</\1>", " ", html, flags=re.S)
    return re.sub(r"\s+", " ", html_lib.unescape(re.sub(r"<[^>]+>", " ", html))).strip()


def test_the_model_page_is_a_read_only_report(admin_client, lineage) -> None:
    v1, v2, _ = lineage
    write_learning_curve(v2, [(256, -0.5), (512, -0.1), (768, 0.35)])
    response = admin_client.get(f"{CHANGELIST}{v2.pk}/change/")
    assert response.status_code == 200
    page = text(response)
    html = response.content.decode()
    # Agent vs the three baselines, each figure formatted with its 95 % interval.
    for label in ("agent", "no trading (baseline)", "hold the favourite", "momentum (baseline)"):
        assert label in page, label
    assert "P&L per hour" in page and "+$1.20/h" in page
    assert "95% CI [$0.00/h, +$2.20/h]" in page  # 1.2 - 1.0 * 1.2, 1.2 + 1.0
    assert "−$0.60/h" in page  # hold the favourite loses
    assert "max drawdown" in page and "3.88%" in page
    assert "win rate (round trips)" in page and "51.2%" in page
    assert "Agent minus no trading" in page and "95% CI [+$0.40/h, +$2.80/h]" in page
    # Held-out period, lineage, artifact and TensorBoard.
    assert "held-out period 2026-11-03 16:00:00 UTC → 2026-11-03 17:00:07 UTC" in page
    assert f'href="/admin/training/rlmodel/{v1.pk}/change/">desk v1</a>' in html
    assert "promoted " in page and " by admin" in page
    assert re.search(r"active before it v1 \(promoted 20\d\d-", page)
    assert "active now this version" in page
    size = selectors.artifact_size(v2)
    assert size and re.search(r"size \d+\.\d KB", page)
    assert v2.artifact_path in page
    assert "--logdir" in page and "tensorboard" in page
    # The learning curve (from the TensorBoard events) and the held-out equity are drawn.
    curve = selectors.model_report(v2).learning_curve
    assert [step for step, _ in curve] == [256, 512, 768]
    assert [value for _, value in curve] == pytest.approx([-0.5, -0.1, 0.35])
    for chart in ("learning-curve", "equity-chart"):
        assert re.search(
            rf'id="{chart}" src="data:image/svg\+xml;base64,[A-Za-z0-9+/=]{{500,}}"', html
        )
    # No raw JSON, no long floats, no Save button, and no Delete link on the active version.
    assert '"evaluation"' not in page and "_spec" not in page and '{"' not in page
    assert not re.search(r"\d\.\d{6,}", page)
    assert 'name="_save"' not in html and 'name="_continue"' not in html
    assert "deletelink" not in html
    assert admin_client.post(f"{CHANGELIST}{v2.pk}/change/", {"name": "x"}).status_code == 403


def test_the_changelist_shows_formatted_held_out_figures(admin_client, lineage) -> None:
    page = text(admin_client.get(CHANGELIST))
    assert "+$2.50/h" in page and "+0.250%" in page  # v3's P&L per hour and return
    assert "Held-out Sharpe" in page


def test_comparing_versions_shows_a_table_and_overlaid_curves(admin_client, lineage) -> None:
    v1, v2, v3 = lineage
    response = admin_client.post(
        CHANGELIST, {"action": "compare", "_selected_action": [v3.pk, v1.pk, v2.pk]}
    )
    assert response.status_code == 302
    page = admin_client.get(response["Location"])
    assert page.status_code == 200
    html = page.content.decode()
    body = text(page)
    heads = re.findall(r'<th scope="col" class="num"><a [^>]+>(desk v\d)</a>', html)
    assert heads == ["desk v1", "desk v2", "desk v3"]
    assert "+$0.50/h" in body and "+$1.20/h" in body and "+$2.50/h" in body
    assert "95% CI [+$1.10/h, +$3.90/h]" in body  # v3's edge over no trading
    assert "different held-out periods" not in body
    assert re.search(r'id="compare-chart" src="data:image/svg\+xml;base64,', html)
    # One version alone is not a comparison.
    alone = admin_client.post(
        CHANGELIST, {"action": "compare", "_selected_action": [v1.pk]}, follow=True
    )
    assert "Select two or more versions" in text(alone)


def test_comparing_versions_of_different_held_out_periods_warns(admin_client, lineage) -> None:
    v1, _, _ = lineage
    other = version("desk", 4, ModelStatus.READY, eval_end=HELD_OUT[1] + timedelta(hours=1))
    page = admin_client.get(
        reverse("admin:training_rlmodel_compare"), {"ids": f"{v1.pk},{other.pk}"}
    )
    assert "different held-out periods" in text(page)


def test_promotion_asks_for_confirmation_showing_gate_and_replaced_model(
    admin_client, lineage, gate_on
) -> None:
    _, v2, v3 = lineage
    page = admin_client.post(CHANGELIST, {"action": "promote", "_selected_action": [v3.pk]})
    assert page.status_code == 200
    body = text(page)
    # Nothing happened yet.
    assert RLModel.objects.get(pk=v3.pk).status == ModelStatus.READY
    assert selectors.active_model_for("desk").pk == v2.pk
    assert "Promotion gate: promotable" in body
    assert "+$2.50/h" in body and "95% CI [+$1.10/h, +$3.90/h]" in body
    assert "Replaces desk v2" in body and "it will be retired" in body
    assert "+$1.20/h" in body  # the replaced version's own figures
    assert 'name="confirm" value="promote"' in page.content.decode()
    done = admin_client.post(
        CHANGELIST,
        {"action": "promote", "_selected_action": [v3.pk], "confirm": "promote"},
        follow=True,
    )
    assert "Promoted: desk v3 (active)" in text(done)
    assert selectors.active_model_for("desk").pk == v3.pk
    assert RLModel.objects.get(pk=v2.pk).status == ModelStatus.RETIRED
    assert RLModel.objects.get(pk=v3.pk).promoted_by.username == "admin"


def test_a_refused_promotion_offers_only_the_forced_path(admin_client, lineage, gate_on) -> None:
    weak = version("desk", 5, ModelStatus.READY, agent_pnl=0.2, edge=(-0.9, 1.3))
    page = admin_client.post(CHANGELIST, {"action": "promote", "_selected_action": [weak.pk]})
    body = text(page)
    html = page.content.decode()
    assert "not promotable" in body and "lower bound is not above zero" in body
    assert "[-0.90, +1.30] $/h" in body
    assert 'value="promote"' not in html
    assert 'name="action" value="force_promote"' in html and 'value="Force promotion' in html
    # Posting the confirmation anyway is refused by the service, with the reason.
    refused = admin_client.post(
        CHANGELIST,
        {"action": "promote", "_selected_action": [weak.pk], "confirm": "promote"},
        follow=True,
    )
    assert "is not promotable" in text(refused)
    assert RLModel.objects.get(pk=weak.pk).status == ModelStatus.READY
    # The force page is the existing one: it asks for a reason.
    force = admin_client.post(
        CHANGELIST, {"action": "force_promote", "_selected_action": [weak.pk]}
    )
    assert b"Reason (required)" in force.content


def test_rollback_asks_for_confirmation_showing_both_versions(admin_client, lineage) -> None:
    v1, v2, _ = lineage
    page = admin_client.post(CHANGELIST, {"action": "rollback", "_selected_action": [v2.pk]})
    assert page.status_code == 200
    body = text(page)
    assert selectors.active_model_for("desk").pk == v2.pk  # nothing happened yet
    assert "Back to v1" in body and "Promotion gate on v1 today" in body
    assert "Replaces v2" in body and "it will be retired" in body
    assert "+$0.50/h" in body and "+$1.20/h" in body
    done = admin_client.post(
        CHANGELIST,
        {"action": "rollback", "_selected_action": [v2.pk], "confirm": "rollback"},
        follow=True,
    )
    assert "Rolled back: desk v1 (active) is active" in text(done)
    assert selectors.active_model_for("desk").pk == v1.pk
    # Now v1 has nothing earlier: the page says so and offers no confirmation.
    again = admin_client.post(CHANGELIST, {"action": "rollback", "_selected_action": [v1.pk]})
    assert "has no earlier promoted version" in text(again)
    assert 'value="rollback" class="default"' not in again.content.decode()


def test_only_users_with_change_permission_get_the_registry_actions(client, lineage) -> None:
    from django.contrib.auth.models import Permission, User

    viewer = User.objects.create_user("viewer", password="pw-viewer-123", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_rlmodel"))
    client.force_login(viewer)
    html = client.get(CHANGELIST).content.decode()
    assert 'value="compare"' in html
    for action in ("promote", "rollback", "force_promote", "retire", "cancel"):
        assert f'value="{action}"' not in html, action
