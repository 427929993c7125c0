"""The three operating modes. Live trading does not exist in this product."""

from __future__ import annotations

ALLOWED_MODES = ("training", "evaluation", "paper")


class LiveTradingRefused(ValueError):
    """Raised whenever anything asks for a mode other than training, evaluation or paper."""


def validate_mode(value: str, *, source: str = "mode") -> str:
    """Return ``value`` normalised, or raise :class:`LiveTradingRefused` with a clear reason."""
    mode = (value or "").strip().lower()
    if mode == "live":
        raise LiveTradingRefused(
            f"{source}='live' is refused: Kalshi Flow RL never places real orders. "
            f"Use one of {', '.join(ALLOWED_MODES)}."
        )
    if mode not in ALLOWED_MODES:
        raise LiveTradingRefused(
            f"{source}={value!r} is not a known mode; use one of {', '.join(ALLOWED_MODES)}."
        )
    return mode
