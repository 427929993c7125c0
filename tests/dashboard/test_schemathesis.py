"""Schemathesis against the OpenAPI schema, in process over WSGI, as a logged-in staff user.

Every operation is called with generated parameters (valid and invalid) and every response is
checked: no server error, and status code, content type, headers and body as documented.
Bounded: ``MAX_EXAMPLES`` per operation and phase.

The schema is generated at collection time (schemathesis's fixture-based lazy loading does
not run on pytest 9); a test below proves it is the very schema /rl/schema serves.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import schemathesis
from django.conf import settings
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from django.utils.crypto import get_random_string
from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.renderers import OpenApiJsonRenderer
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from schemathesis.specs.openapi.checks import ignored_auth

MAX_EXAMPLES = 30


def generated_schema() -> dict:
    schema = SchemaGenerator().get_schema(request=None, public=True)
    return json.loads(OpenApiJsonRenderer().render(schema))


schema = schemathesis.openapi.from_dict(generated_schema())
schema.app = get_wsgi_application()
# The security schemes are not parameters to fuzz: every case runs with the staff session (the
# only scheme unless RL_API_BASIC_AUTH is on), so a case "without the session cookie" would be
# a negative case that the injected session makes pass. Refusing callers without valid
# credentials is proved route by route in test_access.py and test_auth.py.
schema.config.generation.update(with_security_parameters=False)


CSRF_SECRET = get_random_string(32)  # the length and alphabet Django expects


@pytest.fixture
def staff_session(client, staff_user) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """A staff session cookie, and a CSRF cookie so that the methods an operation does not
    have reach the view (405) instead of stopping at the CSRF check (403)."""
    client.force_login(staff_user)
    name = settings.SESSION_COOKIE_NAME
    return {name: client.cookies[name].value, settings.CSRF_COOKIE_NAME: CSRF_SECRET}


@pytest.fixture
def same_connection() -> Iterator[None]:
    """Run Django's real WSGI handler on the test's database connection: like Django's test
    client, keep the request signals from closing that connection (and its transaction)."""
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        yield
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)


@pytest.mark.django_db
def test_the_schema_under_test_is_the_one_served(staff_client) -> None:
    assert staff_client.get("/rl/schema", {"format": "json"}).json() == generated_schema()


@pytest.mark.django_db
@schema.parametrize()
@hypothesis_settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_the_api_keeps_to_its_schema(case, world, staff_session, same_connection) -> None:  # type: ignore[no-untyped-def]
    # Authenticate with the staff session, not with the random Basic credentials schemathesis
    # generates from the security schemes. Its ignored_auth check would then see a valid
    # session beside those and complain; refusing callers without valid credentials is
    # proved route by route in test_access.py instead.
    case.headers.pop("Authorization", None)
    response = case.call_and_validate(
        cookies=staff_session,
        headers={"X-CSRFToken": CSRF_SECRET},
        excluded_checks=[ignored_auth],
    )
    # The session must really be used: otherwise every answer would be a (documented) 401.
    if case.path != "/rl/health":
        assert response.status_code not in (401, 403), response.text
