"""The recorded-data tables on the real PostgreSQL: migrations apply, identity is enforced."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from django.db import IntegrityError, connection, transaction

from apps.marketdata.models import OrderbookDelta, OrderbookSnapshot, RecordingConnection

pytestmark = [pytest.mark.django_db, pytest.mark.postgres]

NOW = datetime(2026, 10, 8, 2, 47, 3, tzinfo=UTC)


@pytest.fixture
def conn() -> RecordingConnection:
    return RecordingConnection.objects.create(
        exchange="local", ws_url="ws://127.0.0.1/trade-api/ws/v2", opened_at=NOW
    )


def delta(conn: RecordingConnection, seq: int, **overrides) -> OrderbookDelta:
    fields = dict(
        connection=conn,
        market_ticker="KXMLBGAME-26OCT072000TBNYY-NYY",
        sid=1,
        seq=seq,
        side="yes",
        price_e4=1700,
        delta_e2=-13900,
        received_at=NOW,
    )
    fields.update(overrides)
    return OrderbookDelta(**fields)


def test_migrations_created_the_fixed_table_names_on_postgres() -> None:
    assert connection.vendor == "postgresql"
    tables = set(connection.introspection.table_names())
    expected = {
        "rl_orderbook_snapshots",
        "rl_orderbook_deltas",
        "rl_models",
        "rl_trading_episodes",
        "rl_trading_actions",
    }
    assert expected <= tables


def test_a_duplicate_connection_sid_seq_delta_is_rejected(conn) -> None:
    delta(conn, 7).save()
    with pytest.raises(IntegrityError), transaction.atomic():
        delta(conn, 7, price_e4=1800).save()
    assert OrderbookDelta.objects.count() == 1


def test_a_duplicate_snapshot_identity_is_rejected(conn) -> None:
    fields = dict(connection=conn, market_ticker="M", sid=1, seq=1, received_at=NOW, source="ws")
    OrderbookSnapshot.objects.create(**fields)
    with pytest.raises(IntegrityError), transaction.atomic():
        OrderbookSnapshot.objects.create(**fields)


def test_the_same_sid_seq_on_another_connection_is_a_different_message(conn) -> None:
    other = RecordingConnection.objects.create(exchange="local", ws_url="x", opened_at=NOW)
    delta(conn, 7).save()
    delta(other, 7).save()
    assert OrderbookDelta.objects.filter(seq=7).count() == 2


def test_a_retried_batch_with_ignore_conflicts_stores_no_duplicate(conn) -> None:
    batch = [delta(conn, seq) for seq in range(1, 101)]
    OrderbookDelta.objects.bulk_create(batch, ignore_conflicts=True)
    retry = [delta(conn, seq) for seq in range(50, 151)]
    OrderbookDelta.objects.bulk_create(retry, ignore_conflicts=True)
    seqs = list(OrderbookDelta.objects.order_by("seq").values_list("seq", flat=True))
    assert seqs == list(range(1, 151))


def test_the_database_rejects_an_unknown_side_and_an_out_of_range_price(conn) -> None:
    with pytest.raises(IntegrityError), transaction.atomic():
        delta(conn, 1, side="n").save()
    with pytest.raises(IntegrityError), transaction.atomic():
        delta(conn, 2, price_e4=10_001).save()
