"""The REST API's answers: books, markets, registry, episodes, actions, paper trader, errors."""

from __future__ import annotations

import base64
from datetime import timedelta

import pytest

from apps.training.models import RLModel
from tests.dashboard.conftest import STAFF_PASSWORD

pytestmark = pytest.mark.django_db


def test_markets_lists_the_recorded_market_as_recording_while_its_recorder_beats(
    staff_client, world
) -> None:
    [market] = staff_client.get("/rl/markets").json()
    assert market["market_ticker"] == world.market
    assert market["recording"] is True
    assert market["exchange"] == "local"
    assert market["last_received_at"] is not None


def test_a_closed_connection_is_not_recording(staff_client, world) -> None:
    world.connection.closed_at = world.start + timedelta(minutes=1)
    world.connection.save()
    [market] = staff_client.get("/rl/markets").json()
    assert market["recording"] is False


def test_books_rebuild_the_latest_book_from_snapshot_and_later_deltas(staff_client, world) -> None:
    body = staff_client.get("/rl/books", {"depth": 2}).json()
    assert body["depth"] == 2
    [book] = body["books"]
    assert book["market_ticker"] == world.market
    assert book["trusted"] is True
    assert book["deltas_replayed"] == 1
    # The delta added a YES bid at 0.45 on top of the snapshot's 0.44.
    assert book["yes_depth"] == [[4500, 200], [4400, 1000]]
    assert book["yes_bid_e4"] == 4500
    # The best NO bid 0.53 is a YES ask at 0.47.
    assert book["yes_ask_e4"] == 4700
    assert book["spread_e4"] == 200


def test_books_for_a_named_market_without_data_are_empty_and_untrusted(staff_client, world) -> None:
    [book] = staff_client.get("/rl/books", {"market": "NOPE"}).json()["books"]
    assert book["trusted"] is False
    assert book["untrusted_reason"] == "no snapshot recorded"
    assert book["yes_depth"] == []


def test_a_book_depth_out_of_range_is_a_400_naming_the_parameter(staff_client, world) -> None:
    response = staff_client.get("/rl/books", {"depth": 51})
    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "invalid"
    assert "depth" in body["fields"]
    assert "depth" in body["message"]


def test_models_show_metrics_and_parent(staff_client, world) -> None:
    body = staff_client.get("/rl/models", {"name": "h8agent"}).json()
    assert body["count"] == 2
    newest = body["results"][0]
    assert newest["version"] == 2
    assert newest["parent"] == world.parent.pk
    assert newest["parent_version"] == 1
    assert newest["metrics"]["evaluation"]["sharpe"] == 1.5
    # The gate's verdict travels with the model: evaluated before intervals existed, it has
    # no interval for agent minus no trading, and the API says so.
    gate = newest["promotion_gate"]
    assert gate["promotable"] is False
    assert "no confidence interval for agent minus no trading" in gate["reasons"][0]
    assert newest["promotion_override"] == {}


def test_a_model_shows_its_whole_lineage_and_children(staff_client, world) -> None:
    child = RLModel.objects.create(
        name="h8agent", version=3, algorithm="PPO", markets=[world.market], parent=world.model
    )
    body = staff_client.get(f"/rl/models/{child.pk}").json()
    assert [m["version"] for m in body["lineage"]] == [2, 1]
    middle = staff_client.get(f"/rl/models/{world.model.pk}").json()
    assert [m["version"] for m in middle["children"]] == [3]


def test_models_filter_by_status(staff_client, world) -> None:
    body = staff_client.get("/rl/models", {"status": "active"}).json()
    assert [m["version"] for m in body["results"]] == [2]
    assert staff_client.get("/rl/models", {"status": "live"}).status_code == 400


def test_episodes_show_metrics_with_a_non_finite_sharpe_as_null(staff_client, world) -> None:
    body = staff_client.get("/rl/episodes", {"mode": "evaluation"}).json()
    [episode] = body["results"]
    assert episode["sharpe"] is None
    assert episode["total_return"] == pytest.approx(0.06)
    assert episode["plot_url"] == f"/rl/episodes/{world.evaluation.pk}/plot.png"


def test_an_episode_has_its_equity_and_drawdown_curves(staff_client, world) -> None:
    body = staff_client.get(f"/rl/episodes/{world.evaluation.pk}").json()
    assert body["equity_curve"][:3] == [1.0, 1.01, 1.03]
    assert body["drawdown_curve"][3] == pytest.approx((1.03 - 0.99) / 1.03)
    assert max(body["drawdown_curve"]) == pytest.approx(world.evaluation.max_drawdown, abs=1e-3)


def test_actions_filter_by_episode_market_and_time(staff_client, world) -> None:
    every = staff_client.get("/rl/actions", {"episode": world.paper.pk}).json()
    assert every["count"] == 3
    assert [a["step"] for a in every["results"]] == [0, 1, 2]
    assert every["results"][0]["allowed_actions"] == [0, 1, 2]
    since = (world.start + timedelta(minutes=2, seconds=1)).isoformat()
    later = staff_client.get("/rl/actions", {"market": world.market, "since": since}).json()
    assert [a["step"] for a in later["results"]] == [1, 2]
    none = staff_client.get("/rl/actions", {"market": "OTHER"}).json()
    assert none["count"] == 0


def test_actions_are_paginated(staff_client, world) -> None:
    first = staff_client.get("/rl/actions", {"page_size": 2}).json()
    assert len(first["results"]) == 2
    assert first["next"] is not None
    second = staff_client.get("/rl/actions", {"page_size": 2, "page": 2}).json()
    assert [a["step"] for a in second["results"]] == [2]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"since": "yesterday"}, "since"),
        ({"episode": "x"}, "episode"),
        ({"page_size": "0"}, "page_size"),
        ({"until": ""}, "until"),
        ({"page": ""}, "page"),
        ({"market": "bad ticker"}, "market"),
    ],
)
def test_bad_action_filters_are_400_json(staff_client, world, query, field) -> None:
    response = staff_client.get("/rl/actions", query)
    assert response.status_code == 400
    assert field in response.json()["fields"]


def test_a_page_past_the_end_is_a_404_json(staff_client, world) -> None:
    response = staff_client.get("/rl/actions", {"page": 99})
    assert response.status_code == 404
    assert response.json() == {"status": 404, "error": "not_found", "message": "Invalid page."}


def test_an_unknown_object_or_route_is_a_404_json(staff_client, world) -> None:
    missing = staff_client.get("/rl/models/987654321")
    assert missing.status_code == 404
    assert missing.json()["message"] == "No RLModel matches the given query."
    huge = staff_client.get("/rl/episodes/99999999999999999999999/plot.png")
    assert huge.status_code == 404
    assert huge["Content-Type"] == "application/json"
    route = staff_client.get("/rl/no-such-thing")
    assert route.status_code == 404
    assert route.json()["error"] == "not_found"


def test_the_paper_trader_shows_pnl_positions_and_last_decisions(staff_client, world) -> None:
    body = staff_client.get("/rl/paper").json()
    assert body["workers"][0]["counters"]["pnl_dollars"] == 0.42
    episode = body["episode"]
    assert episode["id"] == world.paper.pk
    assert episode["decisions"] == 3
    assert episode["positions_e2"] == {world.market: 200}
    assert episode["fees_paid_e4"] == 140
    assert episode["return_from_rewards"] == pytest.approx(0.0)
    assert [d["step"] for d in episode["last_decisions"]] == [2, 1, 0]


def test_basic_auth_works_for_staff_when_enabled(client, staff_user, world, settings) -> None:
    settings.RL_API_BASIC_AUTH = True
    token = base64.b64encode(f"{staff_user.username}:{STAFF_PASSWORD}".encode()).decode()
    response = client.get("/rl/models", HTTP_AUTHORIZATION=f"Basic {token}")
    assert response.status_code == 200


def test_a_wrong_basic_password_is_a_401_json(client, staff_user, world, settings) -> None:
    settings.RL_API_BASIC_AUTH = True
    token = base64.b64encode(f"{staff_user.username}:wrong".encode()).decode()
    response = client.get("/rl/models", HTTP_AUTHORIZATION=f"Basic {token}")
    assert response.status_code == 401
    assert response.json()["error"] == "authentication_failed"


def test_a_logged_in_user_who_is_not_staff_gets_403_json(client, django_user_model) -> None:
    client.force_login(django_user_model.objects.create_user("visitor", password="v" * 12))
    response = client.get("/rl/models")
    assert response.status_code == 403
    assert response.json()["error"] == "permission_denied"


def test_the_schema_is_served_to_staff_as_json(staff_client) -> None:
    response = staff_client.get("/rl/schema", {"format": "json"})
    assert response.status_code == 200
    assert "/rl/actions" in response.json()["paths"]


def test_the_swagger_page_uses_local_static_files_only(staff_client) -> None:
    html = staff_client.get("/rl/docs").content.decode()
    assert "/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js" in html
    assert "cdn" not in html.lower()
