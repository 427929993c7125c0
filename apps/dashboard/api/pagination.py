"""Page numbers for the API's lists (settings: REST_FRAMEWORK["DEFAULT_PAGINATION_CLASS"]).

Kept apart from the views: DRF imports it while importing its generic views.
"""

from __future__ import annotations

import re
from typing import Any

from rest_framework import serializers
from rest_framework.exceptions import NotFound
from rest_framework.pagination import PageNumberPagination
from rest_framework.request import Request

# A page number or page size as the query gives it: ASCII digits only (str.isdigit() also
# accepts "²" and other Unicode digits that int() refuses), and few enough of them that int()
# stays cheap and far from its 4,300-digit limit.
_NUMBER = re.compile(r"[0-9]{1,18}")


class Pages(PageNumberPagination):
    """``?page=N&page_size=M``. A page or page size that is not a positive integer (or a page
    size over 500) is a 400; a page past the end, however many digits it has, is a 404.

    The parsing lives here, in the default pagination class, so every list view gets it."""

    page_size_query_param = "page_size"
    last_page_strings = ()  # the schema says integer: no ?page=last
    max_page_size = 500

    def get_page_size(self, request: Request) -> int | None:
        raw = request.query_params.get(self.page_size_query_param)
        if raw is None:
            return self.page_size
        size = int(raw) if _NUMBER.fullmatch(raw) else 0
        if not 1 <= size <= self.max_page_size:
            raise serializers.ValidationError(
                {"page_size": [f"must be an integer from 1 to {self.max_page_size}"]}
            )
        return size

    def get_page_number(self, request: Request, paginator: Any) -> int | str:
        raw = request.query_params.get(self.page_query_param)
        if raw is None:
            return 1
        if not re.fullmatch(r"[0-9]+", raw) or not raw.strip("0"):
            raise serializers.ValidationError(
                {self.page_query_param: ["must be an integer from 1"]}
            )
        digits = raw.lstrip("0")
        if not _NUMBER.fullmatch(digits):
            # A positive integer of 19+ digits: well-formed, and past the end of any list.
            raise NotFound(f"Invalid page: page {digits[:20]}... is past the last page.")
        return int(digits)

    def get_schema_operation_parameters(self, view: Any) -> list[dict[str, Any]]:
        parameters = super().get_schema_operation_parameters(view)
        for parameter in parameters:
            if parameter["name"] == self.page_query_param:
                parameter["schema"]["minimum"] = 1
            if parameter["name"] == self.page_size_query_param:
                parameter["schema"].update(minimum=1, maximum=self.max_page_size)
        return parameters
