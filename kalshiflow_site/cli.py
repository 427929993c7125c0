"""Argument types for the management commands: nonsense values are refused by argparse with a
plain message (``--duration: must be a number >= 0, got '-3'``), before anything starts."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def _number(kind: type, *, low: float, inclusive: bool, what: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
        if not math.isfinite(value) or value < low or (not inclusive and value == low):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return value

    parse.__name__ = what  # argparse names the type in some messages
    return parse


non_negative_float = _number(float, low=0.0, inclusive=True, what="a number >= 0")
positive_float = _number(float, low=0.0, inclusive=False, what="a number > 0")
positive_int = _number(int, low=1, inclusive=True, what="a whole number >= 1")
non_negative_int = _number(int, low=0, inclusive=True, what="a whole number >= 0")
