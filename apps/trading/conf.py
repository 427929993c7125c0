"""The paper trader's settings: a Django setting when the project defines it, else the
environment variable of the same name, else the embedded default (so it runs unconfigured).

==================================  ==========  ==================================================
setting                             default     meaning
==================================  ==========  ==================================================
RL_PAPER_MAX_POSITION_CONTRACTS     100         kill switch: contracts held in one market
RL_PAPER_MAX_EXPOSURE_DOLLARS       1000        kill switch: cost basis of all open contracts
RL_PAPER_MAX_DAILY_LOSS_DOLLARS     100         kill switch: loss since the UTC day began
RL_PAPER_RELOAD_CHECK_S             2           seconds between registry checks (hot reload)
RL_PAPER_STATUS_INTERVAL_S          2           seconds between heartbeats to /rl/status
RL_PAPER_FLUSH_INTERVAL_S           0.5         seconds between batches of logged decisions
RL_PAPER_WARMUP_S                   10          seconds to wait for every book before deciding
==================================  ==========  ==================================================
"""

from __future__ import annotations

from typing import Any

from django.conf import settings

from kalshiflow_site.env import env_float

DEFAULTS: dict[str, float] = {
    "RL_PAPER_MAX_POSITION_CONTRACTS": 100.0,
    "RL_PAPER_MAX_EXPOSURE_DOLLARS": 1_000.0,
    "RL_PAPER_MAX_DAILY_LOSS_DOLLARS": 100.0,
    "RL_PAPER_RELOAD_CHECK_S": 2.0,
    "RL_PAPER_STATUS_INTERVAL_S": 2.0,
    "RL_PAPER_FLUSH_INTERVAL_S": 0.5,
    "RL_PAPER_WARMUP_S": 10.0,
}


def paper_setting(name: str) -> float:
    """The value of one ``RL_PAPER_*`` setting (see the module docstring), as a float ≥ 0."""
    if name not in DEFAULTS:
        raise KeyError(f"{name} is not a paper-trading setting ({', '.join(DEFAULTS)})")
    value: Any = getattr(settings, name, None)
    if value is None:
        value = env_float(name, DEFAULTS[name], minimum=0.0)
    return float(value)
