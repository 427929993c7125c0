"""OpenAPI generation: every operation documents the JSON error shape of its error codes."""

from __future__ import annotations

from typing import Any

from drf_spectacular import openapi

from apps.dashboard.api.serializers import ErrorSerializer

ERROR_CODES = {
    "400": "Invalid query parameter",
    "401": "Not authenticated (session or basic auth)",
    "403": "Authenticated, but not a staff user",
    "404": "No such object, page or route",
}


class AutoSchema(openapi.AutoSchema):
    def _get_response_bodies(self, direction: Any = "response") -> dict[str, Any]:
        responses = super()._get_response_bodies(direction)
        for code, description in ERROR_CODES.items():
            if code not in responses:
                # Errors are JSON whatever the operation's own media type (the plot's PNG).
                responses[code] = self._get_response_for_code(
                    ErrorSerializer, code, media_types=("application/json",), direction=direction
                )
                responses[code]["description"] = description
        return responses
