"""Audit trails are immutable in the admin: trading decisions and episodes cannot be added,
edited or deleted, and a model that is active or has paper episodes cannot be deleted."""

from __future__ import annotations

import pytest
from django.utils import timezone

from apps.trading.models import TradingAction
from apps.training import services
from apps.training.models import EpisodeMode, ModelStatus, RLModel, TradingEpisode

pytestmark = pytest.mark.django_db


def _model(version: int, status: str) -> RLModel:
    return RLModel.objects.create(
        name="audit", version=version, algorithm="PPO", status=status, markets=["KX-A"]
    )


def _episode(model: RLModel, mode: str) -> TradingEpisode:
    now = timezone.now()
    return TradingEpisode.objects.create(
        model=model, mode=mode, started_at=now, ended_at=now, steps=1, markets=["KX-A"]
    )


def test_decisions_and_episodes_cannot_be_added_changed_or_deleted(admin_client) -> None:
    model = _model(1, ModelStatus.RETIRED)
    episode = _episode(model, EpisodeMode.PAPER)
    action = TradingAction.objects.create(
        episode=episode,
        step=0,
        time=timezone.now(),
        market_ticker="KX-A",
        action_id=0,
        action_type="HOLD",
        model_version=1,
    )
    assert admin_client.get("/admin/trading/tradingaction/add/").status_code == 403
    for url in (
        f"/admin/trading/tradingaction/{action.pk}/delete/",
        f"/admin/training/tradingepisode/{episode.pk}/delete/",
    ):
        assert admin_client.post(url, {"post": "yes"}).status_code == 403, url
    page = admin_client.get(f"/admin/trading/tradingaction/{action.pk}/change/")
    assert page.status_code == 200 and b'name="_save"' not in page.content
    changed = admin_client.post(
        f"/admin/training/tradingepisode/{episode.pk}/change/", {"steps": 99}
    )
    assert changed.status_code == 403
    assert TradingAction.objects.filter(pk=action.pk).exists()
    assert TradingEpisode.objects.get(pk=episode.pk).steps == 1


def test_an_active_model_or_one_with_paper_episodes_is_retired_not_deleted(admin_client) -> None:
    active = _model(1, ModelStatus.ACTIVE)
    traded = _model(2, ModelStatus.RETIRED)
    _episode(traded, EpisodeMode.PAPER)
    plain = _model(3, ModelStatus.READY)
    _episode(plain, EpisodeMode.EVALUATION)
    for model in (active, traded):
        url = f"/admin/training/rlmodel/{model.pk}/delete/"
        assert admin_client.post(url, {"post": "yes"}).status_code == 403
        assert services.deletion_refused(model)
    # The list offers no bulk deletion that would skip those checks.
    assert b"delete_selected" not in admin_client.get("/admin/training/rlmodel/").content
    # A ready model with only evaluation episodes may go (its evaluation goes with it).
    response = admin_client.post(f"/admin/training/rlmodel/{plain.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    assert not RLModel.objects.filter(pk=plain.pk).exists()
    assert set(RLModel.objects.values_list("pk", flat=True)) == {active.pk, traded.pk}
    # The registry's own cleanup keeps them too.
    assert services.cleanup_models(name="audit", keep_last=0) == []
