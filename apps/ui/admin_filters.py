"""List filters shared by the admin's lists of recorded data and trading decisions.

:class:`TimeRangeFilter` filters a datetime column from/to a moment typed to the second or
the millisecond (``?time__gte=2026-12-02T06:20:43&time__lt=2026-12-02T06:20:44.500``);
naive moments are in the site's time zone (UTC). The date hierarchy's year/month/day links
cannot narrow a tenth-of-a-second decision stream; this can.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

from django.contrib import admin
from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.admin.views.main import PAGE_VAR
from django.db.models import Field, Model, QuerySet
from django.http import HttpRequest
from django.utils import timezone


def parse_moment(raw: str) -> datetime:
    """An ISO 8601 moment (``T`` or a space between date and time, optional fraction and
    offset); naive ones are in the current time zone. Raises ValueError otherwise."""
    moment = datetime.fromisoformat(raw.strip().replace(" ", "T", 1))
    if timezone.is_naive(moment):
        moment = timezone.make_aware(moment)
    return moment


def input_value(moment: datetime) -> str:
    """The moment as a ``datetime-local`` input shows it (site time zone, milliseconds)."""
    local = timezone.localtime(moment)
    return f"{local:%Y-%m-%dT%H:%M:%S}.{local.microsecond // 1000:03d}"


class TimeRangeFilter(admin.FieldListFilter):
    """From (inclusive) / to (exclusive) on a datetime field, to the millisecond."""

    template = "admin/time_range_filter.html"

    def __init__(
        self,
        field: Field,
        request: HttpRequest,
        params: dict[str, Any],
        model: type[Model],
        model_admin: admin.ModelAdmin,
        field_path: str,
    ) -> None:
        self.since_param = f"{field_path}__gte"
        self.until_param = f"{field_path}__lt"
        super().__init__(field, request, params, model, model_admin, field_path)
        self.title = f"{self.title} range (UTC)"
        self.bounds: dict[str, datetime] = {}
        for param in self.expected_parameters():
            value = self.used_parameters.get(param)
            raw = value[-1] if isinstance(value, list) and value else value
            if not raw:
                continue
            try:
                self.bounds[param] = parse_moment(str(raw))
            except ValueError:
                # The admin shows the list unfiltered with its "invalid lookup" flag.
                raise IncorrectLookupParameters(f"{param}={raw!r} is not a moment") from None

    def expected_parameters(self) -> list[str]:
        return [self.since_param, self.until_param]

    def has_output(self) -> bool:
        return True

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        return queryset.filter(**self.bounds) if self.bounds else queryset

    def choices(self, changelist: Any) -> Iterator[dict[str, Any]]:
        mine = set(self.expected_parameters())
        since = self.bounds.get(self.since_param)
        until = self.bounds.get(self.until_param)
        yield {
            "since_param": self.since_param,
            "until_param": self.until_param,
            "since": input_value(since) if since else "",
            "until": input_value(until) if until else "",
            # Every other filter, the search and the ordering stay as they are.
            "hidden": [
                (k, v) for k, v in changelist.params.items() if k not in mine and k != PAGE_VAR
            ],
            "active": bool(self.bounds),
            "reset": changelist.get_query_string(remove=list(mine)),
        }
