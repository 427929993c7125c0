"""The local exchange's counters, shared by the venue, the sessions and the server."""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass
class ExchangeStats:
    """Counters, read by tests, the management command's progress line and status views."""

    connections_opened: int = 0
    connections_open: int = 0
    connections_dropped: int = 0  # aborted by the drop fault
    auth_failures: Counter[str] = field(default_factory=Counter)  # by reason
    rest_requests: int = 0
    commands: Counter[str] = field(default_factory=Counter)  # by cmd name
    messages_sent: Counter[str] = field(default_factory=Counter)  # by frame type
    source_messages: int = 0  # deltas + trades produced by the source (the "rate")
    pings_sent: int = 0
    pong_timeouts: int = 0  # connections dropped for not answering our pings
    gaps_injected: int = 0
    stalls: int = 0
    subscription_errors: int = 0
    lifecycle_messages: int = 0  # market_lifecycle_v2 channel frames produced (before fan-out)
    rest_rate_limited: int = 0  # REST requests answered 429 by the fault knob

    def as_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        for name in ("auth_failures", "commands", "messages_sent"):
            data[name] = dict(getattr(self, name))
        return data
