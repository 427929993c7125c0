"""The admin's lists of trading decisions and recorded data, as a trader uses them (Django's
test client on the real database): ``?q=`` search filters rows, a from/to filter cuts time
to the second and the millisecond, prices read in dollars, sizes in contracts, times to the
millisecond, and a snapshot's page shows its book as a ladder, not JSON."""

from __future__ import annotations

import html as html_lib
import re
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from apps.marketdata.models import (
    OrderbookDelta,
    OrderbookSnapshot,
    PublicTrade,
    RecordingConnection,
)
from apps.trading.models import TradingAction
from apps.training.models import RLModel, TradingEpisode

pytestmark = pytest.mark.django_db
T0 = datetime(2026, 11, 3, 14, 0, 0, tzinfo=UTC)
ACTIONS = "/admin/trading/tradingaction/"
DELTAS = "/admin/marketdata/orderbookdelta/"


def text(response) -> str:  # type: ignore[no-untyped-def]
    page = re.sub(r"<(script|style)[^>]*>.*?</\1>", " ", response.content.decode(), flags=re.S)
    return re.sub(r"\s+", " ", html_lib.unescape(re.sub(r"<[^>]+>", " ", page))).strip()


def rows(response, column: str = "market_ticker") -> list[str]:  # type: ignore[no-untyped-def]
    """The values of one column of the change list, top to bottom."""
    cells = re.findall(
        rf'<t[dh] class="field-{column}[^"]*">(.*?)</t[dh]>', response.content.decode(), re.S
    )
    return [html_lib.unescape(re.sub(r"<[^>]+>", "", c)).strip() for c in cells]


@pytest.fixture
def decisions() -> list[TradingAction]:
    """A paper episode's decisions every 250 ms over 3 s, alternating two markets."""
    model = RLModel.objects.create(
        name="desk", version=1, algorithm="PPO", status="active", markets=["KXA-1", "KXB-2"]
    )
    episode = TradingEpisode.objects.create(
        model=model, mode="paper", markets=["KXA-1", "KXB-2"], started_at=T0
    )
    made = []
    for step in range(12):
        market = "KXA-1" if step % 2 == 0 else "KXB-2"
        made.append(
            TradingAction.objects.create(
                episode=episode,
                step=step,
                time=T0 + timedelta(milliseconds=250 * step),
                market_ticker=market,
                action_id=1,
                action_type="buy_yes" if step % 3 else "hold",
                action_size=2,
                price_e4=4600 + step,
                quantity_filled_e2=150,
                fee_e4=70,
                position_after_e2=-200 if market == "KXB-2" else 200,
                cash_after_e4=995_300,
                reward=0.00125,
                model_version=1,
                refusal="" if step != 5 else "no_liquidity",
            )
        )
    return made


def test_decisions_read_in_dollars_contracts_and_milliseconds(admin_client, decisions) -> None:
    response = admin_client.get(ACTIONS, {"q": "KXA-1"})
    assert response.status_code == 200
    page = text(response)
    assert "2026-11-03 14:00:00.500 UTC" in page  # step 2
    assert "$0.4602" in page  # price_e4 4602
    assert "1.50" in rows(response, "filled")
    assert "$0.0070" in page  # a fee of 70 e4
    assert "+2.00" in rows(response, "position_after")
    assert "$99.53" in page  # cash 995,300 e4
    assert "4602" not in rows(response, "price")


def test_search_filters_the_decisions(admin_client, decisions) -> None:
    everything = rows(admin_client.get(ACTIONS))
    assert sorted(set(everything)) == ["KXA-1", "KXB-2"] and len(everything) == 12
    only_b = rows(admin_client.get(ACTIONS, {"q": "KXB-2"}))
    assert only_b == ["KXB-2"] * 6
    refused = admin_client.get(ACTIONS, {"q": "no_liquidity"})
    assert rows(refused, "refusal") == ["no_liquidity"]
    assert rows(admin_client.get(ACTIONS, {"q": "desk"})) == everything  # the model's name
    assert rows(admin_client.get(ACTIONS, {"q": "NOPE"})) == []


def test_the_time_filter_cuts_to_the_second_and_the_millisecond(admin_client, decisions) -> None:
    # One second: 14:00:01 (inclusive) to 14:00:02 (exclusive) holds steps 4 to 7.
    second = admin_client.get(
        ACTIONS, {"time__gte": "2026-11-03T14:00:01", "time__lt": "2026-11-03 14:00:02"}
    )
    assert rows(second, "time_ms") == [
        f"2026-11-03 14:00:01.{ms:03d} UTC" for ms in (750, 500, 250, 0)
    ]
    # To the millisecond, combined with the search: steps 5 and 7 are KXB-2 in [1.25, 1.75].
    narrow = admin_client.get(
        ACTIONS,
        {"time__gte": "2026-11-03T14:00:01.250", "time__lt": "2026-11-03T14:00:01.751", "q": "KXB"},
    )
    assert rows(narrow, "time_ms") == [
        "2026-11-03 14:00:01.750 UTC",
        "2026-11-03 14:00:01.250 UTC",
    ]
    # The filter's form shows the bounds and keeps the search.
    html = narrow.content.decode()
    assert 'name="time__gte" value="2026-11-03T14:00:01.250"' in html
    assert '<input type="hidden" name="q" value="KXB">' in html
    # A moment that is not one: the list says the lookup was invalid instead of guessing.
    bad = admin_client.get(ACTIONS, {"time__gte": "yesterday-ish"})
    assert bad.status_code == 302 and bad["Location"].endswith("?e=1")


@pytest.fixture
def book() -> OrderbookSnapshot:
    connection = RecordingConnection.objects.create(
        id=uuid.uuid4(), exchange="local", ws_url="ws://127.0.0.1:1/ws", opened_at=T0
    )
    for seq in range(1, 6):
        OrderbookDelta.objects.create(
            connection=connection,
            market_ticker="KXA-1" if seq != 3 else "KXB-2",
            sid=1,
            seq=seq,
            side="yes",
            price_e4=4400 + seq,
            delta_e2=-250 if seq == 2 else 1000,
            received_at=T0 + timedelta(seconds=seq, milliseconds=7),
        )
    PublicTrade.objects.create(
        connection=connection,
        market_ticker="KXA-1",
        sid=2,
        seq=1,
        trade_id="t-1",
        yes_price_e4=4500,
        no_price_e4=5500,
        count_e2=1200,
        taker_side="yes",
        received_at=T0,
    )
    return OrderbookSnapshot.objects.create(
        connection=connection,
        market_ticker="KXA-1",
        sid=1,
        seq=0,
        yes_levels=[[4000, 500], [4400, 1000]],
        no_levels=[[5300, 700], [5000, 300]],
        received_at=T0,
        source="ws",
        as_of_sid=1,
        as_of_seq=0,
    )


def test_recorded_deltas_search_and_time_filter(admin_client, book) -> None:
    assert len(rows(admin_client.get(DELTAS))) == 5
    assert rows(admin_client.get(DELTAS, {"q": "KXB-2"})) == ["KXB-2"]
    second = admin_client.get(
        DELTAS, {"received_at__gte": "2026-11-03T14:00:02", "received_at__lt": "14:00:03"}
    )
    assert second.status_code == 302  # "14:00:03" alone is not a moment
    second = admin_client.get(
        DELTAS,
        {"received_at__gte": "2026-11-03T14:00:02", "received_at__lt": "2026-11-03T14:00:03"},
    )
    assert rows(second, "received_ms") == ["2026-11-03 14:00:02.007 UTC"]
    assert rows(second, "price") == ["$0.4402"]
    assert rows(second, "change") == ["−2.50"]
    trades = admin_client.get("/admin/marketdata/publictrade/", {"q": "KXA"})
    assert rows(trades, "yes_price") == ["$0.4500"] and rows(trades, "contracts") == ["12.00"]


def test_a_snapshot_shows_its_book_as_a_ladder(admin_client, book) -> None:
    listing = admin_client.get("/admin/marketdata/orderbooksnapshot/")
    assert rows(listing, "best_bid") == ["$0.4400 × 10.00"]
    assert rows(listing, "best_ask") == ["$0.4700 × 7.00"]  # NO bid $0.53 = YES ask $0.47
    response = admin_client.get(f"/admin/marketdata/orderbooksnapshot/{book.pk}/change/")
    assert response.status_code == 200
    html = response.content.decode()
    levels = re.findall(r'data-yes-price="(\d+)"', html)
    assert levels == ["5000", "4700", "4400", "4000"]  # asks above bids, highest first
    page = text(response)
    assert "best YES bid $0.4400, best YES ask $0.4700, spread $0.0300" in page
    assert "[[4000" not in page and "yes_levels" not in page
    assert 'name="_save"' not in html and "deletelink" not in html


def test_episodes_list_formats_and_filters_by_time(admin_client) -> None:
    model = RLModel.objects.create(
        name="desk", version=1, algorithm="PPO", status="ready", markets=["KXA-1"]
    )
    for minute in range(3):
        TradingEpisode.objects.create(
            model=model,
            mode="evaluation",
            markets=["KXA-1"],
            started_at=T0 + timedelta(minutes=minute, milliseconds=40),
            total_return=0.0125 * (minute - 1),
            max_drawdown=0.0388,
            fees_paid_e4=1200,
        )
    url = "/admin/training/tradingepisode/"
    window = admin_client.get(
        url, {"started_at__gte": "2026-11-03T14:01:00", "started_at__lt": "2026-11-03T14:02:00"}
    )
    assert rows(window, "started") == ["2026-11-03 14:01:00.040 UTC"]
    assert rows(window, "return_display") == ["0.000%"]
    everything = admin_client.get(url)
    assert rows(everything, "return_display") == ["+1.250%", "0.000%", "−1.250%"]
    assert set(rows(everything, "drawdown_display")) == {"3.88%"}
    assert set(rows(everything, "fees_display")) == {"$0.12"}
