"""The promotion gate: promotable only with a held-out edge over no trading (the lower bound of
its 95 % interval above zero); otherwise refused with the reason, or forced by a named user
with a reason that is recorded."""

from __future__ import annotations

import io

import pytest
from django.contrib.auth import get_user_model
from django.urls import reverse

from apps.training import selectors, services
from apps.training.models import ModelStatus, RLModel
from tests.training.test_registry import trained

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


@pytest.fixture
def gate_on(settings):  # type: ignore[no-untyped-def]
    settings.RL_PROMOTION_REQUIRE_EDGE = True
    settings.RL_PROMOTION_MIN_SHARPE = None
    return settings


def _with_edge(model: RLModel, low: float, high: float) -> RLModel:
    """The model's recorded comparison with no trading, as the trainer writes it."""
    model.metrics = {
        **model.metrics,
        "versus_no_trading": {
            "metric": "pnl_per_hour_dollars",
            "difference": (low + high) / 2,
            "ci": [low, high],
        },
    }
    model.save(update_fields=["metrics"])
    return model


def test_a_model_without_a_held_out_edge_is_refused_with_the_reason(
    recorded_markets, gate_on
) -> None:
    model = trained(recorded_markets)
    versus = model.metrics["versus_no_trading"]
    assert model.metrics["beats_no_trading"] == (versus["ci"][0] > 0)
    _with_edge(model, -3.0, 5.0)
    check = selectors.promotion_check(model)
    assert not check.promotable
    assert "lower bound is not above zero" in str(check)
    with pytest.raises(services.PromotionRefused, match=r"interval \[-3.00, \+5.00\]"):
        services.promote_model(model=model)
    assert RLModel.objects.get(pk=model.pk).status == ModelStatus.READY
    # Turning the edge requirement off is a setting, not a code change.
    gate_on.RL_PROMOTION_REQUIRE_EDGE = False
    assert selectors.promotion_check(model).promotable


def test_a_model_whose_interval_is_above_zero_is_promoted(recorded_markets, gate_on) -> None:
    model = _with_edge(trained(recorded_markets), 0.5, 4.0)
    assert selectors.promotion_check(model).promotable
    promoted = services.promote_model(model=model)
    assert promoted.status == ModelStatus.ACTIVE
    assert promoted.promotion_override == {}


def test_forcing_past_the_gate_needs_a_user_and_a_reason_and_is_recorded(
    recorded_markets, gate_on, admin_user
) -> None:
    model = _with_edge(trained(recorded_markets), -1.0, 0.5)
    with pytest.raises(services.RegistryError, match="needs the user"):
        services.promote_model(model=model, override_reason="trust me")
    with pytest.raises(services.PromotionRefused):
        services.promote_model(model=model, promoted_by=admin_user, override_reason="  ")
    promoted = services.promote_model(
        model=model, promoted_by=admin_user, override_reason="shadow run for a week"
    )
    assert promoted.status == ModelStatus.ACTIVE
    override = RLModel.objects.get(pk=model.pk).promotion_override
    assert override["by"] == admin_user.get_username()
    assert override["reason"] == "shadow run for a week"
    assert any("lower bound is not above zero" in r for r in override["gate"])


def test_the_admin_shows_why_and_forces_only_with_a_reason(
    recorded_markets, gate_on, client
) -> None:
    model = _with_edge(trained(recorded_markets), -2.0, 1.0)
    staff = get_user_model().objects.create_superuser("ops", "ops@example.com", "pw-12345-x")
    client.force_login(staff)
    changelist = reverse("admin:training_rlmodel_changelist")
    page = client.get(changelist).content.decode()
    assert "lower bound is not above zero" in page
    # Plain promotion: the confirmation page shows the gate's refusal and offers only the
    # forced path; confirming anyway is refused with the reason as an error message.
    confirm = client.post(changelist, {"action": "promote", "_selected_action": [model.pk]})
    assert b"lower bound is not above zero" in confirm.content
    assert b'name="confirm" value="promote"' not in confirm.content
    refused = client.post(
        changelist,
        {"action": "promote", "_selected_action": [model.pk], "confirm": "promote"},
        follow=True,
    ).content.decode()
    assert "is not promotable" in refused
    assert RLModel.objects.get(pk=model.pk).status == ModelStatus.READY
    # Forcing asks for a reason first, and refuses without one.
    form = client.post(changelist, {"action": "force_promote", "_selected_action": [model.pk]})
    assert form.status_code == 200 and b"Reason (required)" in form.content
    empty = client.post(
        changelist,
        {"action": "force_promote", "_selected_action": [model.pk], "confirm": "1"},
    )
    assert b"a reason is required" in empty.content
    assert RLModel.objects.get(pk=model.pk).status == ModelStatus.READY
    client.post(
        changelist,
        {
            "action": "force_promote",
            "_selected_action": [model.pk],
            "confirm": "1",
            "override_reason": "paper trading only",
        },
    )
    model.refresh_from_db()
    assert model.status == ModelStatus.ACTIVE
    assert model.promotion_override["by"] == "ops"
    assert "forced by ops: paper trading only" in client.get(changelist).content.decode()


def test_manage_py_train_reports_intervals_baselines_and_the_gate(recorded_markets, gate_on):
    from apps.training.management.commands.train import Command

    model = trained(recorded_markets)
    out = io.StringIO()
    Command(stdout=out).report(model)
    text = out.getvalue()
    for label in ("agent", "no_trading", "hold_favourite", "momentum"):
        assert f"  {label:14s} P&L " in text, text
    assert "$/h [" in text and "Sharpe/sqrt(h)" in text
    assert f"promotion gate: {selectors.promotion_check(model)}" in text
