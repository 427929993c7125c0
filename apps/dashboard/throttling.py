"""Failed password attempts, counted per client address and refused (HTTP 429) beyond a rate.

Every password check that fails with a request at hand (the admin's login form, HTTP Basic on
the API when enabled) sends Django's ``user_login_failed``; :func:`count_failed_login` records
it with DRF's throttle machinery (a sliding window in a cache). Before checking a password,
the admin login view and the Basic authenticator ask :meth:`FailedLoginThrottle.blocked_for`:
past ``RL_AUTH_FAILURE_RATE`` failures from one address the attempt is refused without
checking it, so guessing passwords costs the guesser the window, not the server a hash per try.

The client address is REMOTE_ADDR, or with ``RL_NUM_PROXIES`` = N trusted proxies in front the
N-th address from the right of X-Forwarded-For (DRF's ``NUM_PROXIES``): a header the client
writes itself is never trusted by default. The window lives in the ``auth-throttle`` cache
(Redis when REDIS_URL is set, so every server process counts together; else this process's
memory). If that cache fails, attempts are let through with a warning: a cache outage must not
lock every operator out.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from django.conf import settings
from django.contrib.auth.signals import user_login_failed
from django.core.cache import caches
from django.dispatch import receiver
from rest_framework.throttling import SimpleRateThrottle

log = logging.getLogger(__name__)
CACHE_ALIAS = "auth-throttle"
_last_warning = 0.0


def _warn(message: str) -> None:
    global _last_warning
    if time.monotonic() - _last_warning > 60:  # at most a line a minute
        _last_warning = time.monotonic()
        log.warning("%s", message)


class FailedLoginThrottle(SimpleRateThrottle):
    scope = "auth_failure"

    @property
    def cache(self) -> Any:  # type: ignore[override]
        # Looked up on use, inside the callers' error handling: a cache that cannot even be
        # set up (bad settings) must not turn a login into a 500 either.
        return caches[CACHE_ALIAS]

    def get_rate(self) -> str:
        # Read per use (not once at import like DRF's THROTTLE_RATES), so settings apply.
        return settings.RL_AUTH_FAILURE_RATE

    def get_cache_key(self, request: Any, view: Any = None) -> str:
        return self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}

    def _load(self, request: Any) -> None:
        self.key = self.get_cache_key(request)
        self.now = self.timer()
        self.history = [t for t in self.cache.get(self.key, []) if t > self.now - self.duration]

    def blocked_for(self, request: Any) -> float | None:
        """Seconds until this client may try a password again, or None if it may now."""
        try:
            self._load(request)
        except Exception as exc:
            _warn(f"failed-login throttle unavailable ({type(exc).__name__}): not enforced")
            return None
        if len(self.history) < self.num_requests:
            return None
        return max(self.wait() or 0.0, 1.0)

    def record_failure(self, request: Any) -> None:
        try:
            self._load(request)
            self.history.insert(0, self.now)
            self.cache.set(self.key, self.history[: self.num_requests], self.duration)
        except Exception as exc:
            _warn(f"failed-login throttle unavailable ({type(exc).__name__}): not counted")

    def allow_request(self, request: Any, view: Any) -> bool:
        return self.blocked_for(request) is None


@receiver(user_login_failed, dispatch_uid="rl-count-failed-login")
def count_failed_login(sender: Any, credentials: dict, request: Any = None, **kwargs: Any) -> None:
    if request is not None:  # a failure outside a request (a shell, a test) has no address
        FailedLoginThrottle().record_failure(request)
