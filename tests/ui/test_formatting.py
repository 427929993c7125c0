"""The operator pages' formats (apps/ui/formatting.py): one definition of how a price,
a size, a metric and a time read, with missing and non-finite values as "n/a"."""

from __future__ import annotations

from datetime import UTC, datetime

from apps.ui import formatting as f


def test_money_prices_and_sizes_in_their_units() -> None:
    assert f.dollars(1234.567) == "$1,234.57"
    assert f.dollars(-0.42) == "−$0.42"
    assert f.dollars(0.42, signed=True) == "+$0.42"
    assert f.dollars(-0.004, signed=True) == "$0.00"  # rounds to zero: no sign
    assert f.price_e4(4600) == "$0.4600" and f.price_e4(10_000) == "$1.0000"
    assert f.dollars_e4(995_300) == "$99.53" and f.dollars_e4(70, places=4) == "$0.0070"
    assert f.contracts_e2(150) == "1.50" and f.contracts_e2(123_400) == "1,234.00"
    assert f.contracts_e2(-200, signed=True) == "−2.00"
    assert f.contracts_e2(200, signed=True) == "+2.00"


def test_ratios_metrics_and_intervals() -> None:
    assert f.percent(0.024043929999999936) == "2.40%"
    assert f.percent(-0.0388, signed=True) == "−3.88%"
    assert f.metric(1.2, "pnl_per_hour_dollars") == "+$1.20/h"
    assert f.metric(0.5123, "win_rate") == "51.2%"
    assert f.metric(12, "round_trips") == "12"
    assert f.interval([-0.4, 2.8], "pnl_per_hour_dollars") == "[−$0.40/h, +$2.80/h]"
    assert f.interval([None, None], "pnl_per_hour_dollars") == ""
    assert f.interval(None, "sharpe_per_hour") == ""
    assert f.metric_label("sharpe_per_hour") == "Sharpe per √hour"


def test_missing_and_non_finite_values_read_n_a() -> None:
    for value in (None, float("nan"), float("inf"), "x", True):
        assert f.dollars(value) == "n/a"  # type: ignore[arg-type]
        assert f.percent(value) == "n/a"  # type: ignore[arg-type]
        assert f.contracts_e2(value) == "n/a"  # type: ignore[arg-type]
    assert f.ms_time(None) == "n/a"


def test_times_to_the_millisecond_and_sizes_of_files() -> None:
    moment = datetime(2026, 12, 2, 6, 20, 43, 123_999, tzinfo=UTC)
    assert f.ms_time(moment) == "2026-12-02 06:20:43.123 UTC"
    assert f.seconds_time(moment) == "2026-12-02 06:20:43 UTC"
    assert f.duration(9.54) == "9.5 s" and f.duration(252) == "4 min 12 s"
    assert f.duration(7500) == "2 h 05 min"
    assert f.file_size(512) == "512 bytes" and f.file_size(298_906) == "291.9 KB"
    assert f.file_size(5 * 2**30) == "5.0 GB"
