"""The paper trader's kill switch (pure: no Django).

Three operator limits, on top of the env's own :class:`~apps.simulation.portfolio.RiskLimits`
(which the model was trained with and which masks orders one by one):

* contracts held in any one market (YES or NO) above ``max_position_contracts``;
* total exposure (cost basis of every open contract) above ``max_exposure_dollars``;
* the loss since the UTC day began (equity marked to mid, fees included) reaching
  ``max_daily_loss_dollars``.

The switch is checked before every decision and after its fills. Once a limit is breached it
**latches**: every later decision is a hold (the model still runs, and what it asked for is
logged with refusal ``kill_switch``) until the trader is restarted by an operator who has
looked at why. Restarting is the reset on purpose: a switch that re-arms itself at midnight
would trade again without anyone having read the reason.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from apps.marketdata.kalshi.units import utc_from_ns
from apps.simulation.layout import A_EXPOSURE, P_NO, P_YES
from apps.simulation.portfolio import Portfolio
from apps.trading.hotpath import first_over_position

log = logging.getLogger(__name__)

NS_PER_DAY = 86_400 * 1_000_000_000
KILL_SWITCH = "kill_switch"  # the refusal logged on every decision the switch turned into a hold


@dataclass(frozen=True)
class RiskSettings:
    """Operator limits (the ``RL_PAPER_MAX_*`` settings), in contracts and dollars; > 0."""

    max_position_contracts: float = 100.0
    max_exposure_dollars: float = 1_000.0
    max_daily_loss_dollars: float = 100.0

    def __post_init__(self) -> None:
        for name in ("max_position_contracts", "max_exposure_dollars", "max_daily_loss_dollars"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")

    @classmethod
    def from_settings(cls) -> RiskSettings:
        """The limits configured in settings or the environment (:mod:`apps.trading.conf`)."""
        from apps.trading.conf import paper_setting

        return cls(
            max_position_contracts=paper_setting("RL_PAPER_MAX_POSITION_CONTRACTS"),
            max_exposure_dollars=paper_setting("RL_PAPER_MAX_EXPOSURE_DOLLARS"),
            max_daily_loss_dollars=paper_setting("RL_PAPER_MAX_DAILY_LOSS_DOLLARS"),
        )

    def as_dict(self) -> dict[str, float]:
        return {
            "max_position_contracts": self.max_position_contracts,
            "max_exposure_dollars": self.max_exposure_dollars,
            "max_daily_loss_dollars": self.max_daily_loss_dollars,
        }


class KillSwitch:
    """Latching risk check over a :class:`Portfolio` or its arrays; see the module docstring."""

    def __init__(self, limits: RiskSettings) -> None:
        self.limits = limits
        # Integer thresholds in the portfolio's units, so comparisons are exact.
        self._max_position_e2 = round(limits.max_position_contracts * 100)
        self._max_exposure_e6 = round(limits.max_exposure_dollars * 1_000_000)
        self._max_loss_e6 = round(limits.max_daily_loss_dollars * 1_000_000)
        self.engaged = False
        self.reason = ""
        self.engaged_at_ns: int | None = None
        self._day: int | None = None
        self._day_start_equity_x2 = 0  # twice the equity in $0.000001 when the day began

    def check(self, *, portfolio: Portfolio, equity_e6x2: int, time_ns: int) -> bool:
        """Engage the switch if a limit is breached now; returns whether it is engaged.

        Args:
            portfolio: the account after whatever fills happened so far.
            equity_e6x2: twice its equity marked to mid, in $0.000001 (an exact integer, as
                ``kernel.equity_x2`` gives it).
            time_ns: Unix time of the check in ns (sets the UTC day of the loss limit).
        """
        held = portfolio.held_e2()
        over = (held > self._max_position_e2).nonzero()[0]
        j = int(over[0]) if over.size else -1
        return self._check(
            portfolio.markets,
            j,
            int(held[j]) if j >= 0 else 0,
            portfolio.exposure_e6(),
            equity_e6x2,
            time_ns,
        )

    def check_account(
        self,
        *,
        markets: Sequence[str],
        pos: np.ndarray,
        acct: np.ndarray,
        equity_e6x2: int,
        time_ns: int,
    ) -> bool:
        """:meth:`check` on the kernel's account arrays themselves: the same limits, read with
        integer comparisons and no view or array made (the paper trader checks twice per
        decision, on its hot path).

        Args:
            markets: the market of each ``pos`` row (named in the reason).
            pos, acct: the account after whatever fills happened so far (``layout.P_*``
                columns, ``layout.A_*`` entries).
            equity_e6x2: as for :meth:`check`.
            time_ns: as for :meth:`check`.
        """
        j = first_over_position(pos, self._max_position_e2)
        held = int(pos[j, P_YES] + pos[j, P_NO]) if j >= 0 else 0
        return self._check(markets, j, held, int(acct[A_EXPOSURE]), equity_e6x2, time_ns)

    def _check(
        self,
        markets: Sequence[str],
        over: int,
        held_e2: int,
        exposure_e6: int,
        equity_e6x2: int,
        time_ns: int,
    ) -> bool:
        day = time_ns // NS_PER_DAY
        if day != self._day:
            # A new UTC day (or the first check): losses count from here.
            self._day = day
            self._day_start_equity_x2 = equity_e6x2
        if self.engaged:
            return True
        reason = self._breach(markets, over, held_e2, exposure_e6, equity_e6x2)
        if reason:
            self.engaged = True
            self.reason = reason
            self.engaged_at_ns = time_ns
            log.warning("paper kill switch engaged: %s; every further decision holds", reason)
        return self.engaged

    def _breach(
        self,
        markets: Sequence[str],
        over: int,
        held_e2: int,
        exposure_e6: int,
        equity_e6x2: int,
    ) -> str:
        """The first limit breached, given the first market over the position limit (-1:
        none) and what it holds."""
        if over >= 0:
            return (
                f"{markets[over]}: {held_e2 / 100:g} contracts held > max "
                f"{self.limits.max_position_contracts:g} (RL_PAPER_MAX_POSITION_CONTRACTS)"
            )
        if exposure_e6 > self._max_exposure_e6:
            return (
                f"exposure ${exposure_e6 / 1e6:,.2f} > max "
                f"${self.limits.max_exposure_dollars:,.2f} (RL_PAPER_MAX_EXPOSURE_DOLLARS)"
            )
        loss_x2 = self._day_start_equity_x2 - equity_e6x2
        if loss_x2 >= 2 * self._max_loss_e6:
            return (
                f"loss today ${loss_x2 / 2e6:,.2f} >= max "
                f"${self.limits.max_daily_loss_dollars:,.2f} (RL_PAPER_MAX_DAILY_LOSS_DOLLARS)"
            )
        return ""

    def as_dict(self) -> dict[str, object]:
        """The switch's state for /rl/status."""
        at = utc_from_ns(self.engaged_at_ns).isoformat() if self.engaged_at_ns is not None else None
        return {
            "engaged": self.engaged,
            "reason": self.reason,
            "engaged_at": at,
            "limits": self.limits.as_dict(),
        }
