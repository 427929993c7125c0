"""The batched writer's exceptions and how it names an error or a value in a log line.

Pure Python: no Django.
"""

from __future__ import annotations

import re


class WriterClosed(RuntimeError):
    """``enqueue`` was called on a writer that is not running (not started, or closed)."""


class SpillRefused(Exception):
    """The spill cannot take rows now: its cap, the free-space guard, or the disk failed."""


class IntegerOutOfRange(ValueError):
    """Rows holding an integer that does not fit its column: ``bad`` maps table -> {row index
    in the batch: reason}. Raised before anything is written, so nothing is ever wrapped."""

    def __init__(self, bad: dict[str, dict[int, str]]) -> None:
        self.bad = bad
        first = next(iter(next(iter(bad.values())).values()))
        super().__init__(first)


_SECRET_PATTERNS = (
    re.compile(r"(password\s*=\s*)\S+", re.IGNORECASE),
    re.compile(r"(://[^:/@\s]+:)[^@\s]+(@)"),
)


def safe_error(exc: BaseException) -> str:
    """One line naming the error, cut to 300 characters, with any password redacted."""
    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0] if lines else ''}"
    text = _SECRET_PATTERNS[0].sub(r"\1***", text)
    text = _SECRET_PATTERNS[1].sub(r"\1***\2", text)
    return text[:300]


def describe_int(value: object) -> str:
    """A value for an error line (an int of thousands of digits cannot even be printed)."""
    if isinstance(value, int) and abs(value) >= 10**30:
        return f"an integer of {value.bit_length()} bits"
    try:
        text = repr(value)
    except ValueError:  # a container of such integers
        return f"a {type(value).__name__} too large to print"
    return text if len(text) <= 60 else text[:57] + "..."
