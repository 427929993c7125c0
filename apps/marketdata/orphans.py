"""Connections left open by a recorder that is gone (SIGKILL, OOM kill, power cut).

A recorder stores a connection's open row when it connects and, when the socket ends, a close
record (``closed_at``) and a ``disconnect`` marker. A process that dies without shutting down
writes neither, and the rows it had queued but not committed are lost; without a marker the
history loader would keep that connection's last books trusted through the downtime. So the
end of a dead connection's stored data is a disconnect, applied in two places:

* **the recorder**, on start-up (:func:`sweep`, in a background thread: nothing on its event
  loop waits on the database), closes every connection it can prove dead: a close record
  with ``closed_at`` = the connection's last stored row and a ``disconnect`` marker at that
  same instant, both through the writer's queue (and its spill);
* **the history loader**, for data whose recorder never came back (or whose sweep has not run
  yet), treats a connection without a ``disconnect`` marker as disconnected at its last
  stored row (:func:`last_stored_at`), so both give the same history.

Several recorders may run at once, on this host and others, so a connection without a close
record is "left open" only when its process is certainly gone (:func:`gone_reason`):

1. **Same host** (``socket.gethostname()``) and the pid does not run, is a zombie, or runs
   but started after the connection opened (the pid was reused): gone at once. A running pid
   that started before the connection opened is that recorder: never closed, however quiet.
2. **Otherwise** (another host, or no pid recorded): gone when neither a heartbeat of its
   process (``rl_worker_status`` for that host and pid, from a process started no later than
   the connection opened) nor a row of the connection is younger than the horizon
   ``RL_RECORDER_GONE_AFTER_S`` (default 900 s), or at once when that heartbeat says the
   process stopped. The horizon must exceed the longest database outage a live recorder
   rides out in its spill (its heartbeats reach the database only when the outage ends), and
   a connection judged by the horizon is closed only if a second look ``confirm_s`` later
   (default 30 s, beyond the writer's retry backoff) still finds it stale, so a recorder
   whose heartbeat is on its way after an outage keeps its connection.

Host names are taken to identify a pid namespace: containers that share a host name must not
record into the same database (rule 1 would see each other's pids as gone). Two recorders
starting at once may both close the same dead connection; they write the same close record
and the same marker (a rare duplicate marker changes nothing in history).

The last stored row is found with index probes only: per table, the sids of the connection
(a skip scan over the unique (connection, sid, seq) index) and the highest seq on each (a
sid's seqs rise with receive time, the recorder's snapshots included), plus the newest marker.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db import Error as DatabaseError
from django.db import connections
from django.utils import timezone

from apps.marketdata.models import (
    OrderbookDelta,
    OrderbookSnapshot,
    PublicTrade,
    RecordingConnection,
    RecordingEvent,
)
from apps.marketdata.writer import (
    CONNECTION_CLOSE,
    EVENT,
    ConnectionRow,
    EventRow,
    RecordWriter,
    WriterClosed,
)
from apps.workers.selectors import last_heartbeat

log = logging.getLogger(__name__)

DEFAULT_GONE_AFTER_S = 900.0
DEFAULT_CONFIRM_S = 30.0
# A process's start time (from /proc, in clock ticks) and the connection's opened_at come from
# different clocks' rounding: allow this much before calling the pid reused.
_START_SLACK = timedelta(seconds=2)


def gone_after_s() -> float:
    return float(getattr(settings, "RL_RECORDER_GONE_AFTER_S", DEFAULT_GONE_AFTER_S))


# -- the last stored row ---------------------------------------------------------------------


def last_stored_at(connection_id: uuid.UUID) -> datetime | None:
    """Receive time of the newest row of the connection in any recorded table (deltas,
    snapshots, trades, markers); None when it has none."""
    latest: datetime | None = None
    for model in (OrderbookDelta, OrderbookSnapshot, PublicTrade):
        sid: int | None = None
        while True:
            sids = model.objects.filter(connection_id=connection_id)
            if sid is not None:
                sids = sids.filter(sid__gt=sid)
            sid = sids.order_by("sid").values_list("sid", flat=True).first()
            if sid is None:
                break
            at = (
                model.objects.filter(connection_id=connection_id, sid=sid)
                .order_by("-seq")
                .values_list("received_at", flat=True)
                .first()
            )
            if at is not None and (latest is None or at > latest):
                latest = at
    at = (
        RecordingEvent.objects.filter(connection_id=connection_id)
        .order_by("-at")
        .values_list("at", flat=True)
        .first()
    )
    if at is not None and (latest is None or at > latest):
        latest = at
    return latest


# -- is the recorder gone? -------------------------------------------------------------------


def _process_start(pid: int) -> tuple[str, datetime] | None:
    """(state, start time) of a local process from /proc, or None where /proc cannot say."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode("ascii", "replace")
        with open("/proc/stat", "rb") as f:
            boot = next(
                int(line.split()[1]) for line in f.read().decode().splitlines()
                if line.startswith("btime ")
            )  # fmt: skip
    except (OSError, StopIteration, ValueError):
        return None
    # Fields after the command name (which may hold spaces and parentheses): state is field 3,
    # starttime (clock ticks after boot) field 22.
    fields = stat[stat.rfind(")") + 2 :].split()
    try:
        ticks = int(fields[19])
    except (IndexError, ValueError):
        return None
    started = datetime.fromtimestamp(boot + ticks / os.sysconf("SC_CLK_TCK"), UTC)
    return fields[0], started


def local_process_gone(pid: int, opened_at: datetime) -> str | None:
    """Why the local ``pid`` cannot be the process that opened a connection at ``opened_at``;
    None when it can (it runs and started before)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return f"pid {pid} is not running"
    except PermissionError:
        pass  # it exists (another user's process)
    info = _process_start(pid)
    if info is not None:
        state, started = info
        if state in ("Z", "X"):
            return f"pid {pid} has exited"
        if started > opened_at + _START_SLACK:
            return f"pid {pid} now belongs to a process started after the connection opened"
    return None


def gone_reason(
    conn: RecordingConnection,
    *,
    now: datetime,
    horizon_s: float,
    this_host: str,
    last_row_at: Callable[[uuid.UUID], datetime | None] = last_stored_at,
) -> str | None:
    """Why the recorder of an open connection is certainly gone, or None (it may be alive)."""
    if conn.host == this_host and conn.pid:
        return local_process_gone(conn.pid, conn.opened_at)
    horizon = timedelta(seconds=horizon_s)
    heartbeat = None
    if conn.host and conn.pid:
        heartbeat = last_heartbeat(
            kind="ingest", host=conn.host, pid=conn.pid, started_by=conn.opened_at
        )
    if heartbeat is not None:
        updated_at, stopped_at = heartbeat
        if stopped_at is not None:
            return f"its recorder (pid {conn.pid} on {conn.host}) stopped at {stopped_at}"
        if now - updated_at < horizon:
            return None
    if now - conn.opened_at < horizon:
        return None
    last = last_row_at(conn.id)
    if last is not None and now - last < horizon:
        return None
    return (
        f"no heartbeat or row from pid {conn.pid} on {conn.host or 'an unknown host'} "
        f"for more than {horizon_s:.0f}s"
    )


@dataclass(frozen=True)
class Orphan:
    """An open connection whose recorder is gone, and where its stored data ends."""

    connection: RecordingConnection
    last_stored_at: datetime | None
    reason: str
    by_horizon: bool  # judged by the heartbeat horizon (not proven by the local pid)

    @property
    def ended_at(self) -> datetime:
        return self.last_stored_at or self.connection.opened_at

    def rows(self) -> tuple[ConnectionRow, EventRow]:
        """The close record and the disconnect marker, both at the last stored row."""
        c = self.connection
        detail = f"recorder gone ({self.reason}); closed at its last stored row"[:500]
        close = ConnectionRow(
            c.id,
            c.exchange,
            c.ws_url,
            list(c.markets),
            c.use_yes_price,
            c.host,
            c.pid,
            c.opened_at,
            self.ended_at,
            f"recorder gone: {self.reason}"[:200],
        )
        marker = EventRow(c.id, "disconnect", "", None, None, None, detail, self.ended_at)
        return close, marker


def find_orphans(*, now: datetime | None = None, horizon_s: float | None = None) -> list[Orphan]:
    """Open connections (no ``closed_at``) whose recorder is gone."""
    now = now or timezone.now()
    horizon_s = gone_after_s() if horizon_s is None else horizon_s
    this_host = socket.gethostname()
    found = []
    for conn in RecordingConnection.objects.filter(closed_at=None).order_by("opened_at"):
        reason = gone_reason(conn, now=now, horizon_s=horizon_s, this_host=this_host)
        if reason is None:
            continue
        local = conn.host == this_host and bool(conn.pid)
        found.append(Orphan(conn, last_stored_at(conn.id), reason, by_horizon=not local))
    return found


def sweep(
    writer: RecordWriter,
    *,
    horizon_s: float | None = None,
    confirm_s: float = DEFAULT_CONFIRM_S,
    stop: threading.Event | None = None,
    say: Callable[[str], None] = log.warning,
    retry_s: float = 5.0,
) -> list[Orphan]:
    """Close every connection left open by a recorder that is gone, through ``writer``.

    Blocking (database reads): run it in a thread. Retries until the database answers or
    ``stop`` is set; returns the connections it closed.
    """
    stop = stop or threading.Event()
    # Rows a crashed writer left in this spill directory are replayed first where possible,
    # so that "last stored row" includes them (best effort: a marker placed earlier is
    # merely conservative).
    writer.flush(timeout_s=30)
    orphans = _with_retries(find_orphans, stop, retry_s, horizon_s=horizon_s)
    if orphans is None:
        return []
    proven = [o for o in orphans if not o.by_horizon]
    pending = {o.connection.id for o in orphans if o.by_horizon}
    if pending and not stop.wait(confirm_s):
        again = _with_retries(find_orphans, stop, retry_s, horizon_s=horizon_s) or []
        proven += [o for o in again if o.by_horizon and o.connection.id in pending]
    closed = []
    for orphan in proven:
        close, marker = orphan.rows()
        try:
            writer.enqueue(CONNECTION_CLOSE, close)
            writer.enqueue(EVENT, marker)
        except WriterClosed:
            break  # shutting down: the next recorder closes it
        closed.append(orphan)
        say(
            f"closed connection {close.id} left open by pid {close.pid} on "
            f"{close.host or '?'} ({orphan.reason}); disconnect marker at its last stored row "
            f"{orphan.ended_at.isoformat()}"
        )
    return closed


def _with_retries(
    fn: Callable[..., list[Orphan]], stop: threading.Event, retry_s: float, **kwargs: object
) -> list[Orphan] | None:
    while not stop.is_set():
        try:
            return fn(**kwargs)
        except (DatabaseError, OSError) as exc:  # the database is down: try again later
            log.warning("orphan sweep: database not usable (%s); retrying", type(exc).__name__)
        finally:
            connections.close_all()  # this thread's connections only
        if stop.wait(retry_s):
            break
        retry_s = min(retry_s * 2, 60.0)
    return None


def start_sweep(writer: RecordWriter, **kwargs: object) -> tuple[threading.Thread, threading.Event]:
    """Run :func:`sweep` in a daemon thread; set the returned event to stop its retries."""
    stop = threading.Event()

    def run() -> None:
        started = time.monotonic()
        try:
            closed = sweep(writer, stop=stop, **kwargs)  # type: ignore[arg-type]
        except Exception:  # a bug here must never take the recorder down
            log.exception("orphan sweep failed")
            return
        finally:
            connections.close_all()
        log.info(
            "orphan sweep: closed %d connections in %.1fs", len(closed), time.monotonic() - started
        )

    thread = threading.Thread(target=run, name="rl-orphan-sweep", daemon=True)
    thread.start()
    return thread, stop
