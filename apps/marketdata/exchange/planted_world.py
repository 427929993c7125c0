"""The planted world: markets with a planted, documented edge, as a pure numpy process.

Nothing shows that a training pipeline can learn unless it is given something learnable with a
known answer. This module plants one:

**Lead-lag** (``edge="lead_lag"``). Two markets, a *leader* and a *follower*. The leader's fair
value jumps by ``jump_cents`` (up or down with equal odds, reflected inside
``[low_cents, high_cents]``) at exponentially spaced times (mean ``mean_gap_s``); the follower's
fair value is the leader's ``lag_s`` seconds earlier. Makers in both markets quote
``half_spread_cents`` around the fair value. So for ``lag_s`` after every jump the follower's
book is stale by one jump: buying the follower in the direction the leader moved, and
flattening once it has caught up, earns about ``jump - spread - 2 x taker fee`` per contract.

**No edge** (``edge="none"``). The same two markets, but the follower jumps on its own
independent schedule: nothing in the leader predicts it. A model trained here must not pass
the promotion gate (no false discoveries).

:class:`PlantedWorld` is the process (a deterministic function of time and the seed). The local
exchange serves it live (``planted.PlantedSource``: exchange -> recorder -> tables -> loader ->
env); the simulation samples it as arrays for fast tests and knows its answer
(``apps.simulation.planted``: ``planted_history``, ``LeadLagOracle``). It lives here, below
both, because market data must not depend on the simulation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

EDGES = ("lead_lag", "none")
LEADER, FOLLOWER = 0, 1  # the columns of PlantedWorld.fair_cents, the order of tickers


@dataclass(frozen=True)
class PlantedConfig:
    """The planted process. Prices in whole cents (the markets use the ``linear_cent`` grid)."""

    edge: str = "lead_lag"
    seed: int = 0
    jump_cents: int = 8
    mean_gap_s: float = 12.0
    lag_s: float = 3.0
    start_cents: int = 50
    low_cents: int = 20
    high_cents: int = 80
    half_spread_cents: int = 1
    horizon_s: float = 6 * 3600.0
    series_ticker: str = "KXPLANT"
    event_suffix: str = "26DEC31"

    def __post_init__(self) -> None:
        if self.edge not in EDGES:
            raise ValueError(f"edge must be one of {EDGES}, got {self.edge!r}")
        if not 0 < self.low_cents < self.start_cents < self.high_cents < 100:
            raise ValueError("need 0 < low_cents < start_cents < high_cents < 100")
        if self.jump_cents <= 0 or self.mean_gap_s <= 0 or self.lag_s < 0:
            raise ValueError("jump_cents and mean_gap_s must be positive, lag_s >= 0")
        if self.half_spread_cents < 1:
            raise ValueError("half_spread_cents must be >= 1")

    @property
    def tickers(self) -> tuple[str, str]:
        event = f"{self.series_ticker}-{self.event_suffix}"
        return f"{event}-LEAD", f"{event}-FOLLOW"


def _jumps(rng: np.random.Generator, config: PlantedConfig) -> tuple[np.ndarray, np.ndarray]:
    """Jump times (s from the start) and the fair value after each, reflected into bounds."""
    count = int(config.horizon_s / config.mean_gap_s * 2) + 16
    times = np.cumsum(rng.exponential(config.mean_gap_s, size=count))
    times = times[times < config.horizon_s]
    signs = rng.choice([-1, 1], size=times.size)
    levels = np.empty(times.size, dtype=np.int64)
    level = config.start_cents
    for i, sign in enumerate(signs.tolist()):
        step = sign * config.jump_cents
        if not config.low_cents <= level + step <= config.high_cents:
            step = -step
        level += step
        levels[i] = level
    return times, levels


class PlantedWorld:
    """The fair value of each market as a function of time since the start (seconds)."""

    def __init__(self, config: PlantedConfig) -> None:
        self.config = config
        rng = np.random.default_rng(config.seed)
        self._leader = _jumps(rng, config)
        if config.edge == "lead_lag":
            times, levels = self._leader
            self._follower = (times + config.lag_s, levels)
        else:
            self._follower = _jumps(rng, config)

    @staticmethod
    def _at(schedule: tuple[np.ndarray, np.ndarray], t_s: np.ndarray, start: int) -> np.ndarray:
        times, levels = schedule
        index = np.searchsorted(times, t_s, side="right")
        with_start = np.concatenate([[start], levels])
        return with_start[index]

    def fair_cents(self, t_s: np.ndarray | float) -> np.ndarray:
        """``(len(t_s), 2)`` int64 fair YES values in cents (leader, follower) at ``t_s``."""
        t = np.atleast_1d(np.asarray(t_s, dtype=np.float64))
        start = self.config.start_cents
        return np.stack(
            [self._at(self._leader, t, start), self._at(self._follower, t, start)], axis=1
        )

    def jump_count(self, until_s: float) -> int:
        return int(np.searchsorted(self._leader[0], until_s, side="right"))
