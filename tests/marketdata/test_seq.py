"""Per-sid sequence rules of kalshi-protocol.md §4."""

from __future__ import annotations

from apps.marketdata.kalshi.messages import FrameDecoder
from apps.marketdata.kalshi.seq import SeqCheck, SeqStatus, SeqTracker


def test_the_first_frame_on_a_sid_sets_the_baseline_whatever_its_number() -> None:
    tracker = SeqTracker()
    first = tracker.observe(1, 2)  # doc examples start at 2; a late market at 4672
    assert first == SeqCheck(SeqStatus.OK, sid=1, got=2, expected=None)
    assert first.ok
    assert tracker.observe(1, 3).ok
    assert tracker.observe(7, 4672).ok
    assert tracker.expected(7) == 4673


def test_consecutive_numbers_are_ok_and_counted() -> None:
    tracker = SeqTracker()
    checks = [tracker.observe(1, seq) for seq in range(1, 11)]
    assert all(check.status is SeqStatus.OK for check in checks)
    assert checks[-1].expected == 10
    assert (tracker.frames, tracker.gaps, tracker.stale, tracker.missed) == (10, 0, 0, 0)
    assert tracker.last_seq(1) == 10


def test_acks_on_the_sid_take_numbers_between_data_frames() -> None:
    # Observed Aug 2026: snapshot 1, then a merged subscribe's ok as seq 2, then the new
    # market's snapshot as seq 3; an unsubscribed ack also takes the next number.
    tracker = SeqTracker()
    for seq in (1, 2, 3, 4, 5):  # snapshot, ok, snapshot, delta, unsubscribed
        assert tracker.observe(1, seq).ok
    assert tracker.gaps == 0


def test_a_skipped_number_is_a_gap_with_expected_and_got() -> None:
    tracker = SeqTracker()
    tracker.observe(1, 1)
    tracker.observe(1, 2)
    check = tracker.observe(1, 5)
    assert check == SeqCheck(SeqStatus.GAP, sid=1, got=5, expected=3)
    assert not check.ok
    assert check.missed == 2
    assert (tracker.gaps, tracker.missed) == (1, 2)
    # Numbering continues from the frame that revealed the gap: one loss, one report.
    assert tracker.observe(1, 6).ok
    assert tracker.gaps == 1


def test_a_duplicate_or_older_number_is_stale_and_does_not_move_the_baseline() -> None:
    tracker = SeqTracker()
    for seq in (10, 11, 12):
        tracker.observe(1, seq)
    duplicate = tracker.observe(1, 12)
    older = tracker.observe(1, 3)
    assert duplicate == SeqCheck(SeqStatus.STALE, sid=1, got=12, expected=13)
    assert older.status is SeqStatus.STALE
    assert duplicate.missed == 0
    assert tracker.stale == 2
    assert tracker.observe(1, 13).ok


def test_each_sid_has_its_own_counter_shared_by_all_its_markets() -> None:
    tracker = SeqTracker()
    # sid 1 carries two markets, sid 2 the trade channel; interleaved on one socket.
    for sid, seq in [(1, 1), (1, 2), (2, 1), (1, 3), (2, 2), (2, 3), (1, 4)]:
        assert tracker.observe(sid, seq).ok
    assert tracker.observe(2, 5).status is SeqStatus.GAP
    assert tracker.observe(1, 5).ok
    assert tracker.sids == frozenset({1, 2})


def test_reset_of_a_sid_makes_its_next_frame_a_new_baseline() -> None:
    tracker = SeqTracker()
    tracker.observe(1, 1)
    tracker.observe(2, 1)
    tracker.reset(1)
    assert tracker.last_seq(1) is None
    assert tracker.expected(1) is None
    assert 1 in tracker.sids
    assert tracker.observe(1, 1).ok  # would have been stale without the reset
    assert tracker.observe(2, 2).ok


def test_reset_without_a_sid_forgets_every_sid_for_a_new_connection() -> None:
    tracker = SeqTracker()
    tracker.observe(1, 50)
    tracker.observe(2, 60)
    tracker.reset()
    assert tracker.sids == frozenset()
    assert tracker.observe(1, 1).ok
    assert tracker.stale == 0


def test_forget_stops_tracking_an_unsubscribed_sid() -> None:
    tracker = SeqTracker()
    tracker.observe(3, 9)
    tracker.forget(3)
    tracker.forget(99)  # unknown sids are fine
    assert 3 not in tracker.sids
    assert tracker.last_seq(3) is None


def test_a_decoded_stream_with_a_lost_frame_reports_exactly_one_gap() -> None:
    decoder = FrameDecoder()
    snapshot = (
        '{"type":"orderbook_snapshot","sid":1,"seq":%d,"msg":{"market_ticker":"%s",'
        '"market_id":"m","yes_dollars_fp":[["0.4500","10.00"]]}}'
    )
    delta = (
        '{"type":"orderbook_delta","sid":1,"seq":%d,"msg":{"market_ticker":"A-1","market_id":"m",'
        '"price_dollars":"0.4500","delta_fp":"1.00","side":"yes"}}'
    )
    stream = [
        '{"id":1,"type":"subscribed","msg":{"channel":"orderbook_delta","sid":1}}',
        snapshot % (1, "A-1"),
        '{"type":"ok","id":2,"sid":1,"seq":2,"msg":{"market_tickers":["A-1","B-2"]}}',
        snapshot % (3, "B-2"),
        '{"type":"ticker","sid":2,"msg":{"market_ticker":"A-1","ts":1791427623}}',
        delta % 4,
        delta % 6,  # seq 5 was lost
        '{"id":9,"sid":1,"seq":7,"type":"unsubscribed"}',
    ]
    tracker = SeqTracker()
    statuses = []
    for frame in stream:
        message = decoder.decode(frame)
        if message.seq is not None:
            statuses.append(tracker.observe(message.sid, message.seq).status)  # type: ignore[arg-type]
    assert statuses == [SeqStatus.OK] * 4 + [SeqStatus.GAP, SeqStatus.OK]
    assert (tracker.frames, tracker.gaps, tracker.missed) == (6, 1, 1)
