"""Template filters for the operator's pages: ``{% load kf_format %}`` then
``{{ value|metric:"pnl_per_hour_dollars" }}``, ``{{ ci|interval:"win_rate" }}``,
``{{ price|price_e4 }}``, ``{{ size|contracts_e2 }}``, ``{{ at|ms_time }}``. Every format is
defined in :mod:`apps.ui.formatting`."""

from __future__ import annotations

from datetime import datetime

from django import template

from apps.ui import formatting

register = template.Library()


@register.filter
def metric(value: float | None, name: str) -> str:
    return formatting.metric(value, name)


@register.filter
def interval(bounds: list[float | None] | None, name: str) -> str:
    return formatting.interval(bounds, name)


@register.filter
def metric_label(name: str) -> str:
    return formatting.metric_label(name)


@register.filter
def dollars(value: float | None) -> str:
    return formatting.dollars(value)


@register.filter
def price_e4(value: int | None) -> str:
    return formatting.price_e4(value)


@register.filter
def contracts_e2(value: int | None) -> str:
    return formatting.contracts_e2(value)


@register.filter
def percent(value: float | None) -> str:
    return formatting.percent(value)


@register.filter
def ms_time(value: datetime | None) -> str:
    return formatting.ms_time(value)


@register.filter
def seconds_time(value: datetime | None) -> str:
    return formatting.seconds_time(value)


@register.filter
def file_size(value: int | None) -> str:
    return formatting.file_size(value)
