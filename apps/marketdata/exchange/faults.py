"""The fault knobs turned while the exchange runs, acting on every open connection of a venue.

The configured knobs (``config.FaultConfig``) act per message inside each session; the ones
here act once, now, on whoever is connected: drop, seq gap, malformed frame, stall,
unsolicited subscription error, or new values for the configured knobs.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from . import frames
from .config import FaultConfig
from .session import Session
from .stats import ExchangeStats
from .venue import Venue


class FaultInjector:
    """Runtime fault knobs over the sessions connected to ``venue``."""

    def __init__(self, venue: Venue, faults: FaultConfig, stats: ExchangeStats) -> None:
        self.venue = venue
        self.faults = faults  # in force now; new sessions start with these
        self.stats = stats
        self._rest_429 = faults.rest_rate_limit_first or 0

    def rate_limit_rest(self, requests: int) -> None:
        """Answer the next ``requests`` REST requests with 429 ``too many requests``."""
        self._rest_429 = max(0, requests)

    def take_rest_rate_limit(self) -> bool:
        """Whether this REST request is refused (counts one of the armed refusals)."""
        if self._rest_429 <= 0:
            return False
        self._rest_429 -= 1
        return True

    def _sessions(self) -> list[Session]:
        return [c for c in self.venue.connections() if isinstance(c, Session)]

    def _open_sessions(self) -> list[Session]:
        return [s for s in self._sessions() if not s.closing]

    def set_faults(self, **changes: Any) -> FaultConfig:
        """Change the configured fault knobs live (same names as ``FaultConfig``)."""
        self.faults = dataclasses.replace(self.faults, **changes)
        for session in self._sessions():
            session.faults = self.faults
        return self.faults

    def drop_connections(self, *, after_messages: int = 0) -> int:
        """Abort every open connection after ``after_messages`` more data messages (0: now).
        Returns how many connections were armed."""
        sessions = self._open_sessions()
        for session in sessions:
            if after_messages <= 0:
                session.closing = True
                session.queue.clear()
                self.stats.connections_dropped += 1
                session.ws.transport.abort()
            else:
                session.drop_at = session.data_count + after_messages
        return len(sessions)

    def inject_seq_gap(self, *, sid: int | None = None) -> int:
        """The next data message on every live sequenced sid (or only ``sid``) skips one seq.
        Returns how many subscriptions were armed."""
        armed = 0
        for session in self._sessions():
            for sub in session.subs.values():
                if sub.sequenced and (sid is None or sub.sid == sid):
                    sub.skip_next = True
                    armed += 1
        return armed

    def send_malformed(self, kind: str = "garbage") -> int:
        """Queue one malformed frame (``frames.MALFORMED_KINDS``) on every open connection."""
        frames.malformed_frame(kind)  # validates the kind before anything is sent
        sessions = self._open_sessions()
        for session in sessions:
            session.send_malformed(kind)
        return len(sessions)

    def stall(self, seconds: float, *, ignore_pings: bool = False) -> int:
        """Stop sending on every open connection for ``seconds`` (socket stays open)."""
        sessions = self._open_sessions()
        for session in sessions:
            session.stall(seconds, ignore_pings=ignore_pings)
        return len(sessions)

    def emit_subscription_error(self, *, code: int = 25, sid: int | None = None) -> int:
        """Unsolicited error ``code`` on every live sid (or only ``sid``), ending those
        subscriptions as Kalshi does. Returns how many subscriptions it ended."""
        if code not in frames.ERROR_TEXTS:
            raise ValueError(f"{code} is not a documented Kalshi error code")
        ended = 0
        for session in self._sessions():
            for sub in list(session.subs.values()):
                if sid is None or sub.sid == sid:
                    session.kill_subscription(sub, code)
                    ended += 1
        return ended
