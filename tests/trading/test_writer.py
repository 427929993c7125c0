"""The decision writer (the batch writer over the decisions' table spec) on the real database:
batches, outages, spill and replay, bad rows, counted loss, and the old spill files."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from django.db import connection
from django.utils import timezone

from apps.trading.actor import ActionRow
from apps.trading.models import TradingAction
from apps.trading.writer import ACTION_TABLE, ActionWriter
from apps.training.models import EpisodeMode, TradingEpisode
from tests.tcp_proxy import TcpProxy
from tests.trading.support import register

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def episode_id() -> int:
    model = register(["M-A", "M-B"])
    return TradingEpisode.objects.create(
        model=model, mode=EpisodeMode.PAPER, markets=["M-A", "M-B"], started_at=timezone.now()
    ).pk


@pytest.fixture
def proxy() -> Iterator[TcpProxy]:
    port = int(connection.settings_dict["PORT"] or 5432)
    with TcpProxy(target_port=port) as running:
        yield running


def rows(steps: range, market: str = "M-A") -> list[ActionRow]:
    when = datetime(2026, 11, 1, tzinfo=UTC)
    return [
        ActionRow(step, when, market, 0, "HOLD", 0, 31, None, 0, 0, 0, 10_000_000, 0.0, 1, "")
        for step in steps
    ]


def stored(episode_id: int) -> list[int]:
    return list(
        TradingAction.objects.filter(episode_id=episode_id)
        .order_by("step")
        .values_list("step", flat=True)
    )


def test_it_writes_every_row_in_batches_and_flush_waits_for_them(episode_id, tmp_path) -> None:
    writer = ActionWriter(
        episode_id=episode_id, spill_dir=tmp_path, flush_interval_s=5, batch_rows=100
    ).start()
    writer.enqueue(rows(range(250)))  # two full batches wake the thread; 50 wait for flush
    assert writer.flush(timeout_s=10)
    assert stored(episode_id) == list(range(250))
    writer.enqueue(rows(range(250, 260)))
    assert writer.close()
    stats = writer.stats()
    assert (stats.written, stats.queued, stats.spilled) == (260, 0, 0)
    assert stored(episode_id) == list(range(260))


def test_an_outage_keeps_the_rows_and_writes_them_when_the_database_is_back(
    episode_id, tmp_path, proxy
) -> None:
    writer = ActionWriter(
        episode_id=episode_id,
        spill_dir=tmp_path,
        flush_interval_s=0.05,
        retry_max_s=0.2,
        db_timeout_s=2,
        db_overrides={"HOST": "127.0.0.1", "PORT": proxy.port},
    ).start()
    writer.enqueue(rows(range(10)))
    assert writer.flush(timeout_s=10)
    proxy.stop()
    writer.enqueue(rows(range(10, 40)))
    assert not writer.flush(timeout_s=1.0)
    stats = writer.stats()
    assert stats.retries > 0 and "Error" in stats.last_error and not stats.db_up
    assert stats.spilled > 0  # on disk during the outage, not held in memory
    proxy.start()
    assert writer.flush(timeout_s=20)
    assert writer.close()
    assert stored(episode_id) == list(range(40))
    stats = writer.stats()
    assert (stats.spill_pending, stats.rows_lost, stats.written) == (0, 0, 40)


def test_a_close_during_an_outage_spills_and_the_next_writer_replays(
    episode_id, tmp_path, proxy
) -> None:
    proxy.stop()
    first = ActionWriter(
        episode_id=episode_id,
        spill_dir=tmp_path,
        retry_max_s=0.2,
        close_timeout_s=1.0,
        db_timeout_s=2,
        db_overrides={"HOST": "127.0.0.1", "PORT": proxy.port},
    ).start()
    first.enqueue(rows(range(30)))
    assert not first.close()
    assert first.stats().spilled == 30
    assert first.stats().spill_pending == 30
    spill_files = list((tmp_path / "paper").glob("w-*/*.action.jsonl"))
    assert len(spill_files) == 1 and stored(episode_id) == []
    second = ActionWriter(episode_id=episode_id, spill_dir=tmp_path).start()
    second.enqueue(rows(range(30, 35)))
    assert second.close()
    assert second.stats().replayed == 30
    assert stored(episode_id) == list(range(35))
    assert not list((tmp_path / "paper").glob("w-*/*.jsonl"))


def test_a_row_the_database_refuses_is_set_aside_alone(episode_id, tmp_path: Path) -> None:
    writer = ActionWriter(episode_id=episode_id, spill_dir=tmp_path, flush_interval_s=0.05).start()
    bad = rows(range(5, 6), market="X" * 200)  # longer than the column allows
    writer.enqueue(rows(range(5)) + bad + rows(range(6, 9)))
    writer.close()
    assert stored(episode_id) == [0, 1, 2, 3, 4, 6, 7, 8]
    assert writer.stats().rejected == 1
    (path,) = (tmp_path / "paper" / "rejected").glob("*.jsonl")
    rejected = [json.loads(line) for line in path.open()]
    assert len(rejected) == 1 and rejected[0]["table"] == ACTION_TABLE.key
    row = dict(zip(ACTION_TABLE.columns, rejected[0]["row"], strict=True))
    assert (row["episode_id"], row["step"]) == (episode_id, 5)
    assert "DataError" in rejected[0]["reason"]


def test_with_the_database_and_the_spill_full_rows_are_lost_only_counted(
    episode_id, tmp_path, proxy
) -> None:
    # The database is down, the spill takes nothing (a 1-byte cap) and the queue holds 4
    # rows: the writer keeps what it can, counts the rest lost, and never raises into the
    # decision loop; what it kept is written once the database is back.
    proxy.stop()
    writer = ActionWriter(
        episode_id=episode_id,
        spill_dir=tmp_path,
        flush_interval_s=0.05,
        batch_rows=2,
        queue_max_rows=4,
        retry_max_s=0.2,
        db_timeout_s=2,
        db_overrides={"HOST": "127.0.0.1", "PORT": proxy.port},
        spill_max_bytes=1,
    ).start()
    for step in range(20):
        writer.enqueue(rows(range(step, step + 1)))
    stats = writer.stats()
    assert stats.enqueued == 20 and stats.rows_lost > 0
    assert writer.problems() and "lost" in writer.problems()[0]
    proxy.start()
    writer.close()
    stats = writer.stats()
    kept = stored(episode_id)
    assert kept and len(kept) + stats.rows_lost == 20 and stats.spilled == 0
    assert stats.written == len(kept)


def test_spill_files_of_the_writer_it_replaced_are_written_and_deleted(
    episode_id, tmp_path
) -> None:
    folder = tmp_path / "paper"
    folder.mkdir()
    legacy = folder / f"actions-{episode_id}-123-1.jsonl"
    with legacy.open("w") as handle:
        for row in rows(range(3)):  # the old writer's line format
            data = {**row._asdict(), "time": row.time.isoformat(), "episode_id": episode_id}
            handle.write(json.dumps(data) + "\n")
    writer = ActionWriter(episode_id=episode_id, spill_dir=tmp_path).start()
    writer.enqueue(rows(range(3, 5)))
    assert writer.close()
    assert stored(episode_id) == [0, 1, 2, 3, 4]
    assert not legacy.exists()
