"""Handshake authentication: the three KALSHI-ACCESS-* headers, verified like Kalshi does."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence

from cryptography.hazmat.primitives.asymmetric import rsa

from apps.marketdata.kalshi.signer import (
    HEADER_KEY,
    HEADER_SIGNATURE,
    HEADER_TIMESTAMP,
    WS_PATH,
    verify_signature,
)

from .config import ApiKey

# Failure reasons, also the keys of the exchange's auth-failure counter.
MISSING_HEADER = "missing_header"
BAD_TIMESTAMP = "bad_timestamp"
STALE_TIMESTAMP = "stale_timestamp"
UNKNOWN_KEY = "unknown_key"
BAD_SIGNATURE = "bad_signature"


class HandshakeAuth:
    """Checks a WebSocket upgrade request against the configured public keys.

    A key configured with a key id only verifies requests naming that id; keys without an id
    verify any id. The signed string is ``timestamp + "GET" + "/trade-api/ws/v2"``.
    """

    def __init__(
        self,
        keys: Sequence[ApiKey],
        *,
        max_clock_skew_s: float,
        clock_ms: Callable[[], int] | None = None,
    ) -> None:
        self._by_id: dict[str, list[rsa.RSAPublicKey]] = {}
        self._any_id: list[rsa.RSAPublicKey] = []
        for key in keys:
            public = key.load()
            if key.key_id is None:
                self._any_id.append(public)
            else:
                self._by_id.setdefault(key.key_id, []).append(public)
        self._max_skew_ms = int(max_clock_skew_s * 1000)
        self._clock_ms = clock_ms or (lambda: time.time_ns() // 1_000_000)

    def check(self, headers: Mapping[str, str], *, path: str = WS_PATH) -> str | None:
        """None when the request is authentic, else the reason it is not."""
        key_id = headers.get(HEADER_KEY)
        timestamp = headers.get(HEADER_TIMESTAMP)
        signature = headers.get(HEADER_SIGNATURE)
        if not key_id or not timestamp or not signature:
            return MISSING_HEADER
        if not (timestamp.isascii() and timestamp.isdigit()) or len(timestamp) > 16:
            return BAD_TIMESTAMP
        if abs(self._clock_ms() - int(timestamp)) > self._max_skew_ms:
            return STALE_TIMESTAMP
        candidates = self._by_id.get(key_id, []) + self._any_id
        if not candidates:
            return UNKNOWN_KEY
        for public in candidates:
            if verify_signature(
                public, timestamp_ms=timestamp, method="GET", path=path, signature_b64=signature
            ):
                return None
        return BAD_SIGNATURE
