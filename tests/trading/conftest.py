"""Paper-trader tests promote hand-made and tiny models that cannot show an edge on held-out
time: the statistical promotion gate is off here (tests/training/test_promotion_gate.py tests
it)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _promotion_gate_statistics_off(settings) -> None:  # type: ignore[no-untyped-def]
    settings.RL_PROMOTION_REQUIRE_EDGE = False
