"""The checker of ``benchmarks/chaos_ingest.py``: what the exchange sent vs what was stored.

The chaos run writes its ground truth into the table ``chaos_truth`` (beside the recorder's
tables, in the same scratch database): every data frame (snapshot, delta, trade) the feed
proxy delivered to the recorder's socket, as the project's own ``FrameDecoder`` reads it,
numbered by proxy connection (``pconn``) and stamped with the wall-clock time it was sent.
Nothing here trusts the recorder's own counters. The functions below compare that truth
with the rows the recorder stored:

* :func:`map_connections`: which recorder connection (``connection_id``) is which proxy
  connection, by voting on stored rows whose seq and content equal a sent frame's. Sids and
  seqs restart on every connection, but the content at a seq does not repeat.
* :func:`compare`: lost frames (sent, valid, never stored under their identity with their
  content), stored rows that differ from what was sent under that identity (a wrapped sid,
  seq, price or size; or a row nothing sent), identity duplicates and frames stored twice.
  Only the frames sent count: the local exchange's ``ok``/``unsubscribed`` acks take seqs on
  a sid too, so a hole in the stored seqs is not by itself a lost row.
* :func:`classify_losses`: for each lost frame, whether the history loader treats its market
  as untrusted at ``due + slack`` (``due``: when the recorder would have received it, see
  :class:`LostFrame`). This replays the recorded tables with the loader's own
  pieces (``apps.simulation.loader``'s event queries and merge order, ``HistoryBuilder`` and
  the compiled replay); probes are extra side events that read the builder's trust state.
  A lost frame is covered when, at the probe, the market's book is untrusted, or was primed
  by a snapshot that already reflects the frame (same connection and sid with
  ``as_of_seq >= seq``, or any other snapshot received after the frame was sent). Anything
  else means the loader would hand out a trusted book that misses the frame: a violation.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

TRUTH_TABLE = "chaos_truth"

# One row per data frame delivered to the recorder. ``category``: ``valid`` (the recorder
# must store it exactly), ``wide_sid`` (a sid beyond int4: stored exactly or refused, never
# stored as another value). Snapshots carry their level count in ``price_e4`` and the sum of
# their sizes in ``size_e2``; trades their YES price and count.
TRUTH_DDL = f"""
CREATE TABLE IF NOT EXISTS {TRUTH_TABLE} (
    pconn integer NOT NULL,
    kind text NOT NULL,
    sid bigint NOT NULL,
    seq bigint NOT NULL,
    market text NOT NULL,
    side text NOT NULL DEFAULT '',
    price_e4 bigint,
    size_e2 bigint,
    trade_id text NOT NULL DEFAULT '',
    sent_ns bigint NOT NULL,
    category text NOT NULL DEFAULT 'valid'
)
"""
TRUTH_COLUMNS = (
    "pconn",
    "kind",
    "sid",
    "seq",
    "market",
    "side",
    "price_e4",
    "size_e2",
    "trade_id",
    "sent_ns",
    "category",
)

# What an int4 column makes of a bigint (two's complement wrap), in SQL.
_WRAP = "(((({col} + 2147483648) % 4294967296) + 4294967296) % 4294967296 - 2147483648)"

# The recorder's rows in the truth's shape. Periodic snapshots are the recorder's own
# (sid 0) and have no exchange frame to compare with.
_STORED_SQL = """
CREATE TEMP TABLE chaos_stored AS
SELECT 'delta'::text AS kind, connection_id, sid::bigint AS sid, seq, market_ticker AS market,
       side, price_e4::bigint AS price_e4, delta_e2 AS size_e2, ''::text AS trade_id,
       received_at
  FROM rl_orderbook_deltas
UNION ALL
SELECT 'snapshot', connection_id, sid::bigint, seq, market_ticker, '',
       (jsonb_array_length(yes_levels::jsonb) + jsonb_array_length(no_levels::jsonb))::bigint,
       (SELECT coalesce(sum((lvl->>1)::bigint), 0)::bigint
          FROM jsonb_array_elements(yes_levels::jsonb || no_levels::jsonb) AS lvl),
       '', received_at
  FROM rl_orderbook_snapshots WHERE source <> 'periodic'
UNION ALL
SELECT 'trade', connection_id, sid::bigint, seq, market_ticker, taker_side,
       yes_price_e4::bigint, count_e2, trade_id, received_at
  FROM rl_public_trades
"""

_SAME_CONTENT = (
    "t.kind = s.kind AND t.seq = s.seq AND t.market = s.market AND t.side = s.side"
    " AND t.price_e4 IS NOT DISTINCT FROM s.price_e4"
    " AND t.size_e2 IS NOT DISTINCT FROM s.size_e2 AND t.trade_id = s.trade_id"
)


def ensure_truth_table(cursor: Any) -> None:
    """Create ``chaos_truth`` (idempotent); ``cursor``: a DB-API cursor on the scratch DB."""
    cursor.execute(TRUTH_DDL)


@dataclass(frozen=True)
class LostFrame:
    """A valid frame the proxy delivered that no stored row carries."""

    pconn: int
    kind: str
    sid: int
    seq: int
    market: str
    sent_ns: int
    connection_id: uuid.UUID | None  # the recorder connection it went to, when known
    # When the recorder would have received it, on the loader's clock (receive time): not
    # before it was sent, nor before the frame sent just before it on the same connection
    # was received (one TCP stream, read in order; a recorder behind by a second stamps
    # everything a second late, and so does its disconnect marker).
    due_ns: int = 0


@dataclass
class Comparison:
    frames_accepted: int = 0  # valid data frames delivered to the recorder's socket
    rows_stored: int = 0  # of those, stored exactly under their identity
    lost: list[LostFrame] = field(default_factory=list)
    wrapped_rows: int = 0  # stored rows that differ from what was sent under that identity
    wrapped_examples: list[dict[str, Any]] = field(default_factory=list)
    unverified_rows: int = 0  # stored rows of a connection no proxy connection matches
    identity_duplicates: int = 0  # extra rows on one (table, connection, sid, seq)
    frame_duplicates: int = 0  # extra stored rows of one sent frame (e.g. a wrapped copy)
    # Frames that are not plain valid data, by category (``wide_sid``, ``hostile``):
    # [sent, stored exactly]. Missing ones are not losses: refusing them is allowed, unless
    # the recorder stored some of a connection's wide-sid frames (``wide_sid_accepted``:
    # counted here and as valid frames too).
    other_frames: dict[str, list[int]] = field(default_factory=dict)
    connections_mapped: int = 0
    connections_unmapped: int = 0
    lost_by_kind: dict[str, int] = field(default_factory=dict)

    @property
    def duplicates(self) -> int:
        return self.identity_duplicates + self.frame_duplicates


def map_connections(cursor: Any) -> dict[uuid.UUID, int]:
    """Recorder connection -> proxy connection, by the most stored rows equal to sent frames
    (sid compared exactly or as int4 would wrap it, so a wrapped connection still maps).
    Needs ``chaos_stored`` (see :func:`compare`)."""
    cursor.execute(
        f"""
        SELECT DISTINCT ON (connection_id) connection_id, pconn
          FROM (SELECT s.connection_id, t.pconn, count(*) AS votes
                  FROM chaos_stored s JOIN {TRUTH_TABLE} t
                    ON {_SAME_CONTENT} AND (t.sid = s.sid OR {_WRAP.format(col="t.sid")} = s.sid)
                 GROUP BY 1, 2) AS v
         ORDER BY connection_id, votes DESC, pconn
        """
    )
    return {_as_uuid(conn): int(pconn) for conn, pconn in cursor.fetchall()}


def compare(cursor: Any, *, examples: int = 5) -> Comparison:
    """Compare ``chaos_truth`` with the recorded tables (PostgreSQL; temp tables on
    ``cursor``'s connection)."""
    out = Comparison()
    cursor.execute("DROP TABLE IF EXISTS chaos_stored, chaos_map, chaos_sp")
    cursor.execute(_STORED_SQL)
    mapping = map_connections(cursor)
    cursor.execute("CREATE TEMP TABLE chaos_map (connection_id uuid PRIMARY KEY, pconn int)")
    if mapping:
        values = ",".join(cursor.mogrify("(%s,%s)", (c, p)) for c, p in mapping.items())
        cursor.execute(f"INSERT INTO chaos_map VALUES {values}")
    cursor.execute(
        "CREATE TEMP TABLE chaos_sp AS SELECT m.pconn, s.* FROM chaos_stored s"
        " LEFT JOIN chaos_map m USING (connection_id)"
    )
    cursor.execute("CREATE INDEX ON chaos_sp (pconn, kind, seq)")
    cursor.execute(f"CREATE INDEX ON {TRUTH_TABLE} (pconn, kind, seq)")
    cursor.execute("ANALYZE chaos_sp")
    cursor.execute(f"ANALYZE {TRUTH_TABLE}")

    cursor.execute(
        "SELECT count(DISTINCT connection_id), count(*) FILTER (WHERE pconn IS NULL) FROM chaos_sp"
    )
    n_conns, out.unverified_rows = cursor.fetchone()
    out.connections_mapped = len(mapping)
    out.connections_unmapped = int(n_conns) - len(mapping)

    # Identity duplicates: impossible under the unique constraints, checked anyway.
    cursor.execute(
        "SELECT coalesce(sum(n - 1), 0) FROM (SELECT count(*) AS n FROM chaos_stored"
        " GROUP BY kind, connection_id, sid, seq HAVING count(*) > 1) AS d"
    )
    out.identity_duplicates = int(cursor.fetchone()[0])

    # Each sent frame: stored exactly? stored more than once (also under a wrapped sid)?
    cursor.execute(
        f"""
        SELECT t.category, t.pconn, t.kind, t.sid, t.seq, t.market, t.sent_ns,
               count(s.*) FILTER (WHERE s.sid = t.sid) AS exact,
               count(s.*) AS anyhow,
               (extract(epoch FROM max(s.received_at) FILTER (WHERE s.sid = t.sid))
                * 1000000)::int8 * 1000 AS received_ns
          FROM {TRUTH_TABLE} t
          LEFT JOIN chaos_sp s
            ON s.pconn = t.pconn AND {_SAME_CONTENT}
           AND (s.sid = t.sid OR s.sid = {_WRAP.format(col="t.sid")})
         GROUP BY t.category, t.pconn, t.kind, t.sid, t.seq, t.market, t.sent_ns, t.side,
                  t.price_e4, t.size_e2, t.trade_id
         ORDER BY t.pconn, t.sent_ns
        """
    )
    pconn_to_conn = {p: c for c, p in mapping.items()}
    rows = cursor.fetchall()
    # A recorder that stored some wide-sid frames of a connection exactly accepts them: the
    # rest of that connection's are then lost like any valid frame, not "refused".
    accepts_wide = {r[1] for r in rows if r[0] == "wide_sid" and r[7]}
    last_pconn, last_received = None, 0
    for row in rows:
        category, pconn, kind, sid, seq, market, sent_ns, exact, anyhow, received_ns = row
        if category == "wide_sid" and pconn in accepts_wide:
            category = "valid"
            tally = out.other_frames.setdefault("wide_sid_accepted", [0, 0])
            tally[0] += 1
            tally[1] += int(exact > 0)
        if pconn != last_pconn:
            last_pconn, last_received = pconn, 0
        if received_ns is not None:
            last_received = max(last_received, int(received_ns))
        out.frame_duplicates += max(int(anyhow) - 1, 0)
        if category != "valid":
            tally = out.other_frames.setdefault(category, [0, 0])
            tally[0] += 1
            tally[1] += int(exact > 0)
            continue
        out.frames_accepted += 1
        if exact:
            out.rows_stored += 1
            continue
        due = max(int(sent_ns), last_received)
        conn = pconn_to_conn.get(pconn)
        out.lost.append(
            LostFrame(int(pconn), kind, int(sid), int(seq), market, int(sent_ns), conn, due)
        )
        out.lost_by_kind[kind] = out.lost_by_kind.get(kind, 0) + 1

    # Stored rows (of mapped connections) that no frame sent under that identity equals.
    cursor.execute(
        f"""
        SELECT s.kind, s.connection_id, s.sid, s.seq, s.market, s.price_e4, s.size_e2
          FROM chaos_sp s
         WHERE s.pconn IS NOT NULL AND NOT EXISTS (
               SELECT 1 FROM {TRUTH_TABLE} t
                WHERE t.pconn = s.pconn AND t.sid = s.sid AND {_SAME_CONTENT})
        """
    )
    rows = cursor.fetchall()
    out.wrapped_rows = len(rows)
    out.wrapped_examples = [
        dict(zip(("kind", "connection", "sid", "seq", "market", "price_e4", "size_e2"),
                 (r[0], str(r[1]), *r[2:]), strict=True))
        for r in rows[:examples]
    ]  # fmt: skip
    return out


# -- coverage by the loader's trust rules ------------------------------------------------------


@dataclass(frozen=True)
class ProbeState:
    trusted: bool
    basis: tuple[int, bytes, int, int] | None  # (received ns, connection key, as_of_sid, seq)


def _as_uuid(value: Any) -> uuid.UUID:
    return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))


def loader_probe(
    markets: Sequence[str],
    probes: Sequence[tuple[int, str]],
    *,
    start: datetime,
    end: datetime,
) -> tuple[list[ProbeState], dict[str, dict[str, int]]]:
    """The loader's trust state of ``market`` at each ``(time_ns, market)`` probe, after every
    recorded event received at or before that time, and the loader's quality report of the
    whole replay. Django must be set up."""
    import numpy as np

    from apps.simulation import loader, replay
    from apps.simulation.history import HistoryBuilder

    class TracingBuilder(HistoryBuilder):
        """The loader's builder, noting which snapshot primed each market's book."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.basis: list[tuple[int, bytes, int, int] | None] = [None] * len(self.markets)

        def snapshot(self, ts_ns: int, market: str, **kwargs: Any) -> None:
            j = self.index.get(market)
            before = self._quality[j].snapshots if j is not None else 0
            super().snapshot(ts_ns, market, **kwargs)
            if j is not None and self._quality[j].snapshots != before:
                self.basis[j] = (
                    ts_ns,
                    kwargs["connection"],
                    int(kwargs["as_of_sid"]),
                    int(kwargs["as_of_seq"]),
                )

    markets = list(markets)
    results: list[ProbeState | None] = [None] * len(probes)
    builder = TracingBuilder(
        markets, start_ns=loader._ns(start), end_ns=loader._ns(end), step_ns=1_000_000_000
    )

    def probe_call(i: int, market: str) -> Any:
        j = builder.index[market]

        def read(b: TracingBuilder) -> None:
            results[i] = ProbeState(bool(b._trust[j, replay.T_TRUSTED]), b.basis[j])

        return read

    # The loader's own merge (apps.simulation.loader.load), probes added as side events that
    # come after every event at or before their time.
    first_ts = loader._prime_start(markets, start)
    side = loader._snapshot_events(markets, first_ts, end) + loader._marker_events(
        markets, first_ts, end
    )
    side += [(t, probe_call(i, m)) for i, (t, m) in enumerate(probes)]
    side.sort(key=lambda e: e[0])
    pending = iter(side)
    nxt = next(pending, None)
    for raw in loader._delta_chunks(markets, first_ts, end, 50_000):
        chunk = loader._as_arrays(builder, raw)
        ts = chunk[0]
        while nxt is not None and (not len(ts) or nxt[0] <= ts[-1]):
            cut = int(np.searchsorted(ts, nxt[0], side="right")) if len(ts) else 0
            if cut:
                builder.deltas_arrays(*(col[:cut] for col in chunk))
                chunk = tuple(col[cut:] for col in chunk)
                ts = chunk[0]
            nxt[1](builder)
            nxt = next(pending, None)
        if len(ts):
            builder.deltas_arrays(*chunk)
    while nxt is not None:
        nxt[1](builder)
        nxt = next(pending, None)
    history = builder.finish()
    states = [r if r is not None else ProbeState(False, None) for r in results]
    return states, history.quality_report()


def covered(frame: LostFrame, state: ProbeState) -> bool:
    """Is the loss invisible to a user of the loader (market untrusted, or its book primed by a
    snapshot that already reflects the frame)?"""
    if not state.trusted:
        return True
    if state.basis is None:
        return False
    basis_ns, basis_conn, basis_sid, basis_seq = state.basis
    if (
        frame.connection_id is not None
        and basis_conn == frame.connection_id.bytes
        and basis_sid == frame.sid
    ):
        return basis_seq >= frame.seq
    # Snapshot times are stored in microseconds.
    return basis_ns >= frame.sent_ns // 1000 * 1000


@dataclass
class Coverage:
    inside: int = 0
    outside: int = 0
    outside_by_kind: dict[str, int] = field(default_factory=dict)
    outside_examples: list[dict[str, Any]] = field(default_factory=list)
    outside_frames: list[LostFrame] = field(default_factory=list)
    untrusted_windows: int = 0
    quality: dict[str, dict[str, int]] = field(default_factory=dict)


def classify_losses(
    lost: Iterable[LostFrame],
    *,
    markets: Sequence[str],
    slack_s: float = 0.25,
    examples: int = 5,
) -> Coverage:
    """Probe the loader at ``due + slack_s`` for every lost frame of ``markets`` (``due``: when
    the recorder would have received it, see :class:`LostFrame`).

    ``slack_s`` is how long a marker may trail the loss (a gap is only seen when the next frame
    on the sid arrives). Lost frames of other markets count as outside (the loader could
    never untrust them)."""
    from apps.marketdata.models import OrderbookSnapshot, RecordingEvent

    lost = list(lost)
    cov = Coverage()
    markets = list(markets)
    slack_ns = int(slack_s * 1e9)
    probed = [f for f in lost if f.market in markets]
    cov.outside_frames = [f for f in lost if f.market not in markets]
    cov.outside = len(cov.outside_frames)
    first = OrderbookSnapshot.objects.order_by("received_at").values_list("received_at", flat=True)
    last_event = RecordingEvent.objects.order_by("-at").values_list("at", flat=True).first()
    start = first.first()
    if start is None:
        cov.outside_frames = lost
        cov.outside = len(lost)
        return cov
    start -= timedelta(seconds=1)
    times = [max(f.due_ns, f.sent_ns) + slack_ns for f in probed]
    latest = max([*times, int(datetime.now(UTC).timestamp() * 1e9)])
    end = datetime.fromtimestamp(latest / 1e9 + 2, tz=UTC)
    if last_event is not None and last_event >= end:
        end = last_event + timedelta(seconds=1)
    states, cov.quality = loader_probe(
        markets, [(t, f.market) for t, f in zip(times, probed, strict=True)], start=start, end=end
    )
    for frame, state in zip(probed, states, strict=True):
        if covered(frame, state):
            cov.inside += 1
            continue
        cov.outside += 1
        cov.outside_frames.append(frame)
        cov.outside_by_kind[frame.kind] = cov.outside_by_kind.get(frame.kind, 0) + 1
        if len(cov.outside_examples) < examples:
            cov.outside_examples.append(
                {
                    "pconn": frame.pconn,
                    "kind": frame.kind,
                    "sid": frame.sid,
                    "seq": frame.seq,
                    "market": frame.market,
                    "sent": datetime.fromtimestamp(frame.sent_ns / 1e9, tz=UTC).isoformat(),
                }
            )
    cov.untrusted_windows = sum(
        q["gaps"] + q["resets"] + q["book_errors"] + q["crossed"] for q in cov.quality.values()
    )
    return cov
