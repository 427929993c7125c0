"""Who may call the API: a staff session (log in at /admin/), or HTTP Basic when enabled.

HTTP Basic sends the password with every request, so it is off unless ``RL_API_BASIC_AUTH``
is true; then a client address that failed too many passwords gets 429 before its password is
checked (apps/dashboard/throttling.py). Both classes are always installed and read the setting
per request, so switching it needs no code change.

An anonymous caller gets 401 with a ``WWW-Authenticate`` challenge: ``Basic`` when Basic is on,
else a ``Cookie`` one naming the login form, so that clients can tell "log in" (401) from
"not staff" (403).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth.base_user import AbstractBaseUser
from django.urls import reverse
from rest_framework import authentication, exceptions
from rest_framework.request import Request

from apps.dashboard.throttling import FailedLoginThrottle

REALM = "Kalshi Flow RL API"


def basic_auth_enabled() -> bool:
    return bool(getattr(settings, "RL_API_BASIC_AUTH", False))


class StaffSessionAuthentication(authentication.SessionAuthentication):
    def authenticate_header(self, request: Request) -> str:
        if basic_auth_enabled():
            return f'Basic realm="{REALM}"'
        return (
            f'Cookie realm="{REALM}", form-action="{reverse("admin:login")}", '
            f'cookie-name="{settings.SESSION_COOKIE_NAME}"'
        )


class OptionalBasicAuthentication(authentication.BasicAuthentication):
    www_authenticate_realm = REALM

    def authenticate(self, request: Request) -> tuple[AbstractBaseUser, Any] | None:
        if not basic_auth_enabled():
            return None  # an Authorization header is ignored: the caller is anonymous
        auth = authentication.get_authorization_header(request).split()
        if not auth or auth[0].lower() != b"basic":
            return None
        wait = FailedLoginThrottle().blocked_for(request)
        if wait is not None:
            raise exceptions.Throttled(
                wait, detail="Too many failed authentication attempts from your address."
            )
        # A wrong password fails in django.contrib.auth.authenticate, which sends
        # user_login_failed: the throttle counts it there.
        return super().authenticate(request)
