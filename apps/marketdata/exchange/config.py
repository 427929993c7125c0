"""Configuration of the local exchange: keys, timing, and the fault knobs used by tests.

Plain data only: where the book events come from (the source) is given to ``LocalExchange``
beside its config, so this module depends on no other part of the exchange but its errors and
the documented error codes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import rsa

from apps.marketdata.kalshi.signer import SignerError, load_public_key

from .errors import ConfigError
from .frames import ERROR_TEXTS


@dataclass(frozen=True)
class ApiKey:
    """A public key the exchange accepts at the handshake.

    ``public_key``: PEM text/bytes, or the path of a PEM file. ``key_id``: the value the client
    must send in KALSHI-ACCESS-KEY; ``None`` accepts any key id signed by this key.
    """

    public_key: str | bytes | Path
    key_id: str | None = None

    def load(self) -> rsa.RSAPublicKey:
        source = self.public_key
        if isinstance(source, str | bytes):
            text = source.encode() if isinstance(source, str) else source
            if b"-----BEGIN" not in text:
                # Not PEM text: treat it as a path.
                source = Path(text.decode(errors="replace"))
        if isinstance(source, Path):
            try:
                text = source.read_bytes()
            except OSError as exc:
                raise ConfigError(
                    f"cannot read the public key file {source}: {exc.strerror}"
                ) from None
        try:
            return load_public_key(text)
        except (ValueError, SignerError) as exc:
            where = f"file {source}" if isinstance(source, Path) else "PEM"
            raise ConfigError(f"the public key {where} is not a valid RSA PEM key: {exc}") from None


def _positive_int(name: str, value: int | None) -> None:
    if value is not None and (type(value) is not int or value < 1):
        raise ConfigError(f"{name} must be a positive integer or None, got {value!r}")


def _positive_seconds(name: str, value: float | None, *, allow_none: bool = True) -> None:
    if value is None:
        if not allow_none:
            raise ConfigError(f"{name} is required")
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number of seconds, got {value!r}")
    if value <= 0:
        raise ConfigError(f"{name} must be > 0 seconds, got {value!r}")


@dataclass(frozen=True)
class FaultConfig:
    """Deliberate misbehaviour, all off by default. "Data messages" are the sequenced frames
    of the orderbook_delta and trade channels (snapshots, deltas, trades); connection-level
    counts start at each connection's first data message, sid-level counts per sid.

    - ``drop_after_messages``: abort the TCP connection (no close frame) right after the
      K-th data message of each connection.
    - ``seq_gap_after``: once per sid, the data message after the first N skips one seq.
    - ``seq_gap_every``: on each sid, every M-th data message skips one seq.
    - ``malformed_every``: after every M-th data message of a connection, send one malformed
      frame (kinds rotate: garbage text, truncated JSON, wrong types, binary frame).
    - ``stall_after_messages`` / ``stall_s`` / ``stall_ignores_pings``: after the K-th data
      message of a connection, send nothing (no data, no pings) for ``stall_s`` seconds while
      keeping the socket open; with ``stall_ignores_pings`` also stop reading, so client pings
      and commands go unanswered until the stall ends.
    - ``error_after_messages`` / ``error_code``: after the K-th data message of a connection,
      send an unsolicited error (default 25, buffer overflow) on that message's sid and end
      that subscription, as Kalshi does.
    - ``rest_rate_limit_first``: answer the first N REST requests with HTTP 429
      ``{"error": "too many requests"}`` (no Retry-After), as Kalshi's token bucket does.
    """

    drop_after_messages: int | None = None
    seq_gap_after: int | None = None
    seq_gap_every: int | None = None
    malformed_every: int | None = None
    stall_after_messages: int | None = None
    stall_s: float = 5.0
    stall_ignores_pings: bool = False
    error_after_messages: int | None = None
    error_code: int = 25
    rest_rate_limit_first: int | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            if f.name.endswith(("_messages", "_after", "_every")):
                _positive_int(f.name, getattr(self, f.name))
        _positive_seconds("stall_s", self.stall_s, allow_none=False)
        _positive_int("rest_rate_limit_first", self.rest_rate_limit_first)
        if self.error_code not in ERROR_TEXTS:
            raise ConfigError(
                f"error_code {self.error_code} is not a documented Kalshi error code "
                f"({sorted(ERROR_TEXTS)})"
            )


@dataclass(frozen=True)
class ExchangeConfig:
    """Everything the exchange needs except its source and where to listen (see
    ``LocalExchange(config, source=...)`` and ``LocalExchange.running``).

    - ``keys``: accepted public keys; at least one unless ``require_auth`` is False.
    - ``max_clock_skew_s``: a KALSHI-ACCESS-TIMESTAMP further than this from our clock (either
      way) is refused; Kalshi does not document its window.
    - ``ping_interval_s``: our Ping (payload ``heartbeat``) period, None = never.
    - ``pong_timeout_s``: close with 1011 when a ping stays unanswered this long, None = never.
    - ``start_paused``: serve, but hold the source until ``resume()`` (deterministic tests).
    - ``max_queue_frames``: frames buffered for one slow connection before its
      subscriptions get error 25 and end, like Kalshi's buffer overflow.
    - ``compression``: offer permessage-deflate (off: it costs CPU at high rates).
    """

    keys: tuple[ApiKey, ...] = ()
    require_auth: bool = True
    max_clock_skew_s: float = 30.0
    ping_interval_s: float | None = 10.0
    pong_timeout_s: float | None = 30.0
    faults: FaultConfig = FaultConfig()
    start_paused: bool = False
    max_queue_frames: int = 100_000
    compression: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.keys, tuple) or not all(isinstance(k, ApiKey) for k in self.keys):
            raise ConfigError("keys must be a tuple of ApiKey")
        if self.require_auth and not self.keys:
            raise ConfigError(
                "the local exchange authenticates like Kalshi and needs at least one public key "
                "(ExchangeConfig(keys=(ApiKey(public_key=...),))); use ensure_dev_keys() to make "
                "one, or pass require_auth=False"
            )
        _positive_seconds("max_clock_skew_s", self.max_clock_skew_s, allow_none=False)
        _positive_seconds("ping_interval_s", self.ping_interval_s)
        _positive_seconds("pong_timeout_s", self.pong_timeout_s)
        _positive_int("max_queue_frames", self.max_queue_frames)
        if not isinstance(self.faults, FaultConfig):
            raise ConfigError("faults must be a FaultConfig")
