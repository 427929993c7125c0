"""OpenAPI generation: every operation documents the JSON error shape of its error codes."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from drf_spectacular import openapi
from drf_spectacular.authentication import SessionScheme
from drf_spectacular.extensions import OpenApiAuthenticationExtension

from apps.dashboard.api.serializers import ErrorSerializer

ERROR_CODES = {
    "400": "Invalid query parameter",
    "401": "Not authenticated (a staff session, or Basic auth when RL_API_BASIC_AUTH is on)",
    "403": "Authenticated, but not a staff user",
    "404": "No such object, page or route",
    "429": "Too many failed authentication attempts from this address (see Retry-After)",
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


class StaffSessionScheme(SessionScheme):
    target_class = "apps.dashboard.api.authentication.StaffSessionAuthentication"


class OptionalBasicScheme(OpenApiAuthenticationExtension):
    """Basic auth is in the schema only while RL_API_BASIC_AUTH is on."""

    target_class = "apps.dashboard.api.authentication.OptionalBasicAuthentication"

    @property
    def name(self) -> list[str]:  # type: ignore[override]
        return ["basicAuth"] if settings.RL_API_BASIC_AUTH else []

    def get_security_requirement(self, auto_schema: Any) -> dict[str, list] | None:
        return {"basicAuth": []} if settings.RL_API_BASIC_AUTH else None

    def get_security_definition(self, auto_schema: Any) -> list[dict[str, str]]:  # type: ignore[override]
        return [{"type": "http", "scheme": "basic"}] if settings.RL_API_BASIC_AUTH else []
