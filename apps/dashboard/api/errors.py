"""Every error of the API is one JSON shape with the right status code.

``{"status": 404, "error": "not_found", "message": "No episode with id 7."}``, plus ``fields``
(field name -> messages) when a query parameter was invalid. DRF's exceptions (and Django's
Http404 / PermissionDenied, which DRF converts) go through :func:`json_exception_handler`;
URLs that match no route and unhandled exceptions under ``/rl/`` go through
:func:`json_not_found` / :func:`json_server_error` (the project's handler404/handler500).
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.views import defaults
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler

API_PREFIX = "/rl/"


def error_body(
    *, status_code: int, code: str, message: str, fields: dict[str, Any] | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {"status": status_code, "error": code, "message": message}
    if fields:
        body["fields"] = fields
    return body


def _flatten(detail: Any) -> list[str]:
    if isinstance(detail, dict):
        return [f"{key}: {msg}" for key, value in detail.items() for msg in _flatten(value)]
    if isinstance(detail, list):
        return [msg for item in detail for msg in _flatten(item)]
    return [str(detail)]


def json_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's handler (status codes, auth headers) with our body; None for unexpected errors
    (Django then logs them and answers with :func:`json_server_error`)."""
    # Django's own exceptions, as DRF maps them, keeping their message.
    if isinstance(exc, Http404):
        exc = exceptions.NotFound(str(exc) or None)
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied(str(exc) or None)
    response = exception_handler(exc, context)
    if response is None or not isinstance(exc, exceptions.APIException):
        return response
    fields = None
    if isinstance(exc, exceptions.ValidationError):
        code = "invalid"
        if isinstance(exc.detail, dict):
            fields = {key: _flatten(value) for key, value in exc.detail.items()}
        message = "; ".join(_flatten(exc.detail)) or "invalid request"
    else:
        codes = exc.get_codes()
        code = codes if isinstance(codes, str) else exc.default_code
        message = " ".join(_flatten(exc.detail))
    response.data = error_body(
        status_code=response.status_code, code=code, message=message, fields=fields
    )
    return response


def json_not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    if request.path.startswith(API_PREFIX):
        body = error_body(
            status_code=status.HTTP_404_NOT_FOUND,
            code="not_found",
            message=f"No endpoint or object at {request.path}.",
        )
        return JsonResponse(body, status=status.HTTP_404_NOT_FOUND)
    return defaults.page_not_found(request, exception)


def json_server_error(request: HttpRequest) -> HttpResponse:
    if request.path.startswith(API_PREFIX):
        body = error_body(
            status_code=status.HTTP_500_INTERNAL_SERVER_ERROR,
            code="server_error",
            message="Internal server error; the details are in the server log.",
        )
        return JsonResponse(body, status=status.HTTP_500_INTERNAL_SERVER_ERROR)
    return defaults.server_error(request)
