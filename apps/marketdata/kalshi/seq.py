"""Per-subscription sequence checking (kalshi-protocol.md §4, "Sequence numbers").

Kalshi's ``seq`` counts per **sid**, not per market: one counter shared by every market on the
subscription, rising by exactly 1 per frame, and ``ok``/``unsubscribed`` acks on the sid take
a number too. The first number is not assumed: the first frame seen on a sid sets the
baseline. There is no replay, so a gap means every book on that sid is untrusted until a fresh
snapshot; deciding what to do about it is the caller's job, this module only tells.

Frames without ``seq`` (``subscribed``, ``ticker``) are simply not passed in.
"""

from __future__ import annotations

import enum

import msgspec

__all__ = ["SeqCheck", "SeqStatus", "SeqTracker"]


class SeqStatus(enum.Enum):
    OK = "ok"  # the expected next number, or the first number seen on the sid
    GAP = "gap"  # numbers were skipped: frames were lost
    STALE = "stale"  # a duplicate or an older number: ignore the frame


class SeqCheck(msgspec.Struct, frozen=True, gc=False):
    """Verdict on one (sid, seq). ``expected`` is None when the frame set the baseline."""

    status: SeqStatus
    sid: int
    got: int
    expected: int | None

    @property
    def ok(self) -> bool:
        return self.status is SeqStatus.OK

    @property
    def missed(self) -> int:
        """How many numbers a gap skipped (0 unless the status is GAP)."""
        if self.status is not SeqStatus.GAP or self.expected is None:
            return 0
        return self.got - self.expected


class SeqTracker:
    """Tracks the last ``seq`` of every sid of one WebSocket connection.

    Counters: ``frames`` (numbers observed), ``gaps`` (gap events), ``missed`` (numbers
    skipped by gaps, summed), ``stale`` (duplicates and older numbers).
    """

    __slots__ = ("_last", "frames", "gaps", "missed", "stale")

    def __init__(self) -> None:
        # sid -> last seq accepted; None = known sid waiting for a new baseline (after reset).
        self._last: dict[int, int | None] = {}
        self.frames = 0
        self.gaps = 0
        self.missed = 0
        self.stale = 0

    def observe(self, sid: int, seq: int) -> SeqCheck:
        """Check one frame's number against its sid and remember it when it moves forward."""
        self.frames += 1
        last = self._last.get(sid)
        if last is None:
            self._last[sid] = seq
            return SeqCheck(SeqStatus.OK, sid, seq, None)
        expected = last + 1
        if seq == expected:
            self._last[sid] = seq
            return SeqCheck(SeqStatus.OK, sid, seq, expected)
        if seq < expected:
            # Never move backwards: the frame is a duplicate or was reordered; drop it.
            self.stale += 1
            return SeqCheck(SeqStatus.STALE, sid, seq, expected)
        # Accept the new number as the baseline so that only one gap is reported per loss;
        # the books on this sid stay untrusted until the caller has a fresh snapshot.
        self._last[sid] = seq
        self.gaps += 1
        self.missed += seq - expected
        return SeqCheck(SeqStatus.GAP, sid, seq, expected)

    def last_seq(self, sid: int) -> int | None:
        """The last accepted number of ``sid``, or None when no baseline is set."""
        return self._last.get(sid)

    def expected(self, sid: int) -> int | None:
        """The number the next frame of ``sid`` should carry, or None before a baseline."""
        last = self._last.get(sid)
        return None if last is None else last + 1

    @property
    def sids(self) -> frozenset[int]:
        """Every sid currently tracked, with or without a baseline."""
        return frozenset(self._last)

    def reset(self, sid: int | None = None) -> None:
        """Drop the baseline of ``sid`` (the next frame sets it again) or, with no argument,
        forget every sid: a new connection numbers its sids afresh."""
        if sid is None:
            self._last.clear()
        else:
            self._last[sid] = None

    def forget(self, sid: int) -> None:
        """Stop tracking ``sid`` (after its ``unsubscribed`` ack); unknown sids are ignored."""
        self._last.pop(sid, None)
