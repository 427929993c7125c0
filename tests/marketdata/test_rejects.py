"""The rejected-frames store: bounded in memory and on disk, never raises, keeps what it can."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from apps.marketdata.kalshi.rejects import RejectedFrameStore, read_rejected_frames


def test_frames_are_kept_whole_up_to_the_per_frame_cap_text_or_base64(tmp_path: Path) -> None:
    store = RejectedFrameStore(tmp_path, max_frame_bytes=10)
    store.add('{"type":"x"}', code="a", reason="text frame", connection_id="c1", received_ns=1)
    store.add(b"\xff\xfe\x00binary", code="b", reason="binary frame")
    store.add(12345, code="c", reason="not a frame at all")
    records = read_rejected_frames(tmp_path)
    assert [(r["code"], r["encoding"], r["size"], r["truncated"]) for r in records] == [
        ("a", "text", 12, True),
        ("b", "base64", 9, False),
        ("c", "text", len("<class 'int'>"), True),
    ]
    assert records[0]["raw"] == '{"type":"x'
    assert records[0]["connection_id"] == "c1"
    assert records[0]["at"] == "1970-01-01T00:00:00.000000Z"
    assert base64.b64decode(records[1]["raw"]) == b"\xff\xfe\x00binary"
    assert [r.code for r in store.recent()] == ["a", "b", "c"]
    assert store.stats()["persisted"] == 3


def test_the_files_rotate_and_the_directory_stays_bounded(tmp_path: Path) -> None:
    store = RejectedFrameStore(
        tmp_path, file_max_bytes=2000, files_kept=3, max_writes_per_s=1e9, max_frame_bytes=500
    )
    for n in range(200):
        store.add("x" * 400 + str(n), code="big", reason=f"frame {n}")
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == [
        "rejected-frames.1.jsonl",
        "rejected-frames.2.jsonl",
        "rejected-frames.jsonl",
    ]
    assert sum(p.stat().st_size for p in tmp_path.iterdir()) <= 3 * 2000
    kept = read_rejected_frames(tmp_path)
    numbers = [int(r["reason"].split()[1]) for r in kept]
    assert numbers == sorted(numbers) and numbers[-1] == 199  # oldest first, newest kept
    assert store.rotations > 10 and store.added == 200


def test_memory_is_bounded_by_count_and_bytes() -> None:
    store = RejectedFrameStore(None, memory_records=5, memory_bytes=10_000, max_frame_bytes=4000)
    for n in range(20):
        store.add("y" * 3000, code="c", reason=str(n))
    recent = store.recent()
    assert 1 <= len(recent) <= 3  # 3 x (3,000 + overhead) fits 10,000; a 4th would not
    assert recent[-1].reason == "19"
    for n in range(20):
        store.add("z", code="c", reason=str(n))
    assert [r.reason for r in store.recent()] == ["15", "16", "17", "18", "19"]
    assert store.stats()["path"] is None and store.persisted == 0


def test_disk_writes_are_rate_limited_and_the_excess_is_counted(tmp_path: Path) -> None:
    store = RejectedFrameStore(tmp_path, max_writes_per_s=5)
    for _ in range(100):
        store.add("garbage", code="g", reason="garbage")
    assert 5 <= store.persisted <= 7  # the burst, plus what refilled during the loop
    assert store.persisted + store.not_persisted == 100
    assert len(read_rejected_frames(tmp_path)) == store.persisted
    assert len(store.recent()) == 100  # memory keeps them regardless


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_an_unwritable_directory_keeps_frames_in_memory_and_never_raises(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        store = RejectedFrameStore(locked / "rejected")
        for _ in range(3):
            store.add("frame", code="x", reason="r")
        assert store.disk_errors == 1  # then it waits before trying the disk again
        assert store.not_persisted == 3 and store.persisted == 0
        assert "Permission" in store.last_disk_error
        assert len(store.recent()) == 3
    finally:
        locked.chmod(0o700)


def test_a_directory_on_a_file_is_a_disk_error_not_an_exception(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    store = RejectedFrameStore(blocker / "rejected")
    store.add("frame", code="x", reason="r")
    assert store.disk_errors == 1 and store.not_persisted == 1
    assert len(store.recent()) == 1
