"""How numbers read on the operator's pages: dollars, percentages, contracts, millisecond times.

One place for every format the admin shows (the template filters in
``apps/ui/templatetags/kf_format.py`` call these), so a price reads the same in every
list and a metric the same on the model page, the comparison and the confirmation pages.
Storage units are those of the models: ``*_e4`` prices and money in $0.0001, ``*_e2`` sizes
in 0.01 contract, ratios as fractions (0.05 = 5 %). Missing values read "n/a".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from datetime import datetime

from django.utils import timezone

MISSING = "n/a"
MINUS = "\u2212"  # a real minus sign lines up with the plus in tables


def _finite(value: float | int | None) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _sign(number: float, signed: bool) -> str:
    if number < 0:
        return MINUS
    return "+" if signed and number > 0 else ""


def dollars(value: float | None, *, places: int = 2, signed: bool = False) -> str:
    """``$1,234.56``, ``−$0.42`` (``+$0.42`` when ``signed``)."""
    number = _finite(value)
    if number is None:
        return MISSING
    rounded = round(number, places)
    return f"{_sign(rounded, signed)}${abs(rounded):,.{places}f}"


def dollars_e4(value: int | None, *, places: int = 2, signed: bool = False) -> str:
    """Money stored in $0.0001 units (cash, fees)."""
    number = _finite(value)
    return MISSING if number is None else dollars(number / 1e4, places=places, signed=signed)


def price_e4(value: int | None) -> str:
    """A contract price stored in $0.0001 units: ``$0.4600`` (Kalshi prices can be sub-cent)."""
    return dollars_e4(value, places=4)


def contracts_e2(value: int | None, *, signed: bool = False) -> str:
    """A size stored in 0.01 contract: ``12.50`` (``+2.00`` / ``−2.00`` when ``signed``)."""
    number = _finite(value)
    if number is None:
        return MISSING
    contracts = number / 100
    return f"{_sign(contracts, signed)}{abs(contracts):,.2f}"


def percent(value: float | None, *, places: int = 2, signed: bool = False) -> str:
    """A ratio as a percentage: 0.0123 -> ``1.23%``."""
    number = _finite(value)
    if number is None:
        return MISSING
    rounded = round(number * 100, places)
    return f"{_sign(rounded, signed)}{abs(rounded):,.{places}f}%"


def number(value: float | None, *, places: int = 2, signed: bool = False) -> str:
    number_ = _finite(value)
    if number_ is None:
        return MISSING
    rounded = round(number_, places)
    return f"{_sign(rounded, signed)}{abs(rounded):,.{places}f}"


def integer(value: float | None) -> str:
    number_ = _finite(value)
    return MISSING if number_ is None else f"{round(number_):,d}"


def ms_time(value: datetime | None) -> str:
    """``2026-12-02 06:20:43.123 UTC``: decisions are a tenth of a second apart."""
    if value is None:
        return MISSING
    if timezone.is_aware(value):
        value = timezone.localtime(value)
    zone = value.tzname() or ""
    return f"{value:%Y-%m-%d %H:%M:%S}.{value.microsecond // 1000:03d} {zone}".rstrip()


def seconds_time(value: datetime | None) -> str:
    """``2026-12-02 06:20:43 UTC``: periods and promotion times."""
    if value is None:
        return MISSING
    if timezone.is_aware(value):
        value = timezone.localtime(value)
    return f"{value:%Y-%m-%d %H:%M:%S} {value.tzname() or ''}".rstrip()


def duration(seconds: float | None) -> str:
    """``2 h 05 min``, ``4 min 12 s``, ``9.5 s``."""
    number_ = _finite(seconds)
    if number_ is None:
        return MISSING
    if number_ < 60:
        return f"{number_:.1f} s"
    minutes, secs = divmod(round(number_), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def file_size(size: int | None) -> str:
    number_ = _finite(size)
    if number_ is None:
        return MISSING
    for unit in ("bytes", "KB", "MB", "GB"):
        if number_ < 1024 or unit == "GB":
            return f"{number_:,.0f} {unit}" if unit == "bytes" else f"{number_:,.1f} {unit}"
        number_ /= 1024
    return MISSING  # unreachable: the loop returns at GB


# The held-out metrics of apps/simulation/metrics.py: label and format of each, in the order
# the model page, the comparison and the confirmation pages list them.
MetricFormat = Callable[[float | None], str]
METRIC_FORMATS: dict[str, tuple[str, MetricFormat]] = {
    "pnl_per_hour_dollars": ("P&L per hour", lambda v: dollars(v, signed=True) + "/h"),
    "pnl_dollars": ("P&L", lambda v: dollars(v, signed=True)),
    "return_per_episode": ("return per episode", lambda v: percent(v, places=3, signed=True)),
    "sharpe_per_hour": ("Sharpe per √hour", lambda v: number(v, signed=True)),
    "win_rate": ("win rate (round trips)", lambda v: percent(v, places=1)),
    "max_drawdown": ("max drawdown", lambda v: percent(v)),
    "turnover": ("turnover (× cash)", lambda v: number(v, places=3)),
    "fees_dollars": ("fees", lambda v: dollars(v)),
    "time_in_market": ("time in market", lambda v: percent(v, places=1)),
    "round_trips": ("closed round trips", integer),
}


def metric_label(name: str) -> str:
    return METRIC_FORMATS.get(name, (name.replace("_", " "), None))[0]


def metric(value: float | None, name: str) -> str:
    """One metric's value in its own format (``pnl_per_hour_dollars`` -> ``+$1.20/h``)."""
    entry = METRIC_FORMATS.get(name)
    return entry[1](value) if entry else number(value)


def interval(bounds: Sequence[float | None] | None, name: str) -> str:
    """A 95 % interval in the metric's format: ``[−$0.40/h, +$2.10/h]`` ("" when none)."""
    if not bounds or len(bounds) < 2 or _finite(bounds[0]) is None or _finite(bounds[1]) is None:
        return ""
    return f"[{metric(bounds[0], name)}, {metric(bounds[1], name)}]"
