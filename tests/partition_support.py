"""Test isolation for time partitions: DDL is not undone by a test's flush, so partitions a
test creates are dropped after it (rows a test leaves behind go with the flush as usual)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _drop_new_partitions(transactional_db: None) -> Iterator[None]:
    from apps.marketdata import partitions

    before = {t: {p.name for p in partitions.partitions(t)} for t in partitions.PARTITIONED}
    yield
    for table, names in before.items():
        for part in partitions.partitions(table):
            if part.name not in names and not part.is_default:
                partitions.drop(table, part.name)
