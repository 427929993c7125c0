"""The batched writer's spill store: append-only JSON-lines segments on the local disk.

While the database fails, the writer appends each batch here instead of holding it in memory;
when the database is back the segments are replayed in chunks, and a segment is deleted only
after all its rows are committed (a crash mid-replay repeats rows, ignored as conflicts, and
loses none). Segments left by a crashed writer are adopted and replayed on start. Rows the
database refuses go, with the reason, to ``rejected/*.jsonl``. See :class:`SpillStore`.

Pure Python: no Django.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import msgspec

from apps.marketdata.writer.errors import SpillRefused, describe_int, safe_error
from apps.marketdata.writer.tables import TABLES, TableSpec

logger = logging.getLogger(__name__)

_ENCODER = msgspec.json.Encoder()
_SEGMENT_RE = re.compile(r"^(\d{8})\.([a-z]+)\.jsonl$")
_UNENCODABLE = (ValueError, TypeError, OverflowError, msgspec.EncodeError)
_FREE_SPACE_CHECK_S: Final = 0.25  # statvfs at most this often...
_FREE_SPACE_CHECK_BYTES: Final = 4 * 1024 * 1024  # ...or after this much was written


@dataclass
class SpillChunk:
    """Rows read from one sealed segment, not yet committed (kept until they are)."""

    table: str
    rows: list[tuple]
    path: Path
    start_offset: int
    end_offset: int
    line_count: int  # lines consumed from the file (rows plus corrupt lines)
    corrupt_lines: list[bytes]
    at_end: bool


class SpillStore:
    """Append-only spill segments in a directory that this writer owns while it runs.

    Layout under ``base_dir``: ``w-<pid>-<start ns>/`` per writer (held by an ``flock`` on its
    ``.lock`` file, so a live writer's files are never adopted by another process), in it
    ``<segment no>.<table>.jsonl`` files with one JSON array (a row) per line, and
    ``rejected/<writer>.jsonl`` for rows the database refused or lines that could not be
    read back, each with the reason. ``append`` is thread-safe; reading, sealing and
    ``sync`` belong to the writer's thread.

    ``append`` raises :class:`SpillRefused` instead of writing when the rows waiting on disk
    would pass ``max_bytes``, when the disk would keep less than ``min_free_bytes`` free, or
    when the directory or a write fails (ENOSPC, EIO, a read-only disk): a refused append
    leaves no torn line behind, and the store takes rows again as soon as there is room.
    Each append is one ``os.write`` per batch, so the rows are with the OS when it returns.

    ``tables`` are the specs whose rows it holds (JSON lines decode to their row types); a
    crashed writer's segments of other tables are left where they are, for their own writer.
    """

    def __init__(
        self,
        base_dir: Path,
        *,
        tables: Mapping[str, TableSpec] = TABLES,
        segment_max_bytes: int = 64 * 1024 * 1024,
        fsync_interval_s: float = 1.0,
        max_bytes: int = 16 * 1024**3,
        min_free_bytes: int = 0,
    ) -> None:
        self.base_dir = Path(base_dir)
        # Segments of other tables (another writer's, sharing the directory) are not adopted.
        self._decoders = {key: msgspec.json.Decoder(spec.row_type) for key, spec in tables.items()}
        self.segment_max_bytes = segment_max_bytes
        self.fsync_interval_s = fsync_interval_s
        self.max_bytes = max_bytes
        self.min_free_bytes = min_free_bytes
        self.refusing = ""  # why the last append was refused; "" once one succeeds
        # Called (table, row, reason) after a row is kept in the rejected file.
        self.on_reject: Callable[[str, tuple, str], None] | None = None
        self.refused_appends = 0
        self._free_checked_at = -math.inf
        self._free_at_check: int | None = None
        self._written_since_check = 0
        self._lock = threading.Lock()
        self._dir: Path | None = None
        self._lock_fd: int | None = None
        self._next_segment = 1
        self._active: dict[str, tuple[Path, int, int]] = {}  # table -> (path, fd, bytes)
        self._sealed: list[Path] = []
        self._reader: tuple[Path, Any] | None = None
        self._chunk: SpillChunk | None = None
        self._dirty_since: float | None = None
        self._rejected_file: Any = None
        self.pending_rows = 0
        self.pending_bytes = 0
        self.spilled_rows = 0
        self.spilled_bytes = 0
        self.rejected_rows = 0
        self.adopted_rows = 0

    # -- ownership --------------------------------------------------------------------------

    @property
    def directory(self) -> Path | None:
        return self._dir

    def open(self) -> None:
        """Create and lock this writer's directory; adopt segments of writers that died."""
        with self._lock:
            self._open_locked()

    def _open_locked(self) -> None:
        if self._dir is not None:
            return
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.pending_rows = self.pending_bytes = 0  # a reopened store re-adopts what it left
        name = f"w-{os.getpid()}-{time.time_ns()}"
        staging = self.base_dir / f"tmp-{name}"
        staging.mkdir()
        fd = os.open(staging / ".lock", os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        final = self.base_dir / name
        staging.rename(final)  # only complete, locked directories are ever called w-*
        self._dir, self._lock_fd = final, fd
        self._adopt_orphans()

    def _adopt_orphans(self) -> None:
        assert self._dir is not None
        for other in sorted(self.base_dir.iterdir()):
            if other == self._dir or not other.is_dir() or other.name == "rejected":
                continue
            if not other.name.startswith("w-") and not (
                # a tmp- directory is a writer starting up, unless it is old (crashed then)
                other.name.startswith("tmp-") and _age_s(other) > 60
            ):
                continue
            try:
                fd = os.open(other / ".lock", os.O_CREAT | os.O_RDWR, 0o600)
            except FileNotFoundError:
                continue  # removed by its owner meanwhile
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue  # a live writer owns it
            try:
                segments = sorted(p for p in other.iterdir() if _SEGMENT_RE.match(p.name))
                for path in segments:
                    table = _SEGMENT_RE.match(path.name).group(2)  # type: ignore[union-attr]
                    if table not in self._decoders:
                        continue
                    target = self._new_segment_path(table)
                    path.rename(target)
                    data = target.read_bytes()
                    rows = data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)
                    self._sealed.append(target)
                    self.pending_rows += rows
                    self.pending_bytes += len(data)
                    self.adopted_rows += rows
                leftovers = [p for p in other.iterdir() if p.name != ".lock"]
                if not leftovers:
                    (other / ".lock").unlink(missing_ok=True)
                    other.rmdir()
            finally:
                os.close(fd)
        if self.adopted_rows:
            logger.warning(
                "writer.spill_adopted rows=%d bytes=%d dir=%s",
                self.adopted_rows,
                self.pending_bytes,
                self._dir,
            )

    def _new_segment_path(self, table: str) -> Path:
        assert self._dir is not None
        path = self._dir / f"{self._next_segment:08d}.{table}.jsonl"
        self._next_segment += 1
        return path

    # -- appending (any thread) -------------------------------------------------------------

    def append(self, table: str, rows: Sequence[tuple]) -> int:
        """Append rows of one table; returns the bytes written. Thread-safe.

        Raises :class:`SpillRefused` (nothing written) when the spill cannot take them. A row
        JSON cannot hold (an integer of thousands of digits) goes to the rejected file.
        """
        if not rows:
            return 0
        try:
            data = _ENCODER.encode_lines(rows)
        except _UNENCODABLE:
            rows, data = self._encodable(table, rows)
            if not rows:
                return 0
        with self._lock:
            try:
                self._open_locked()
            except OSError as exc:
                raise self._refuse(f"spill directory unusable: {safe_error(exc)}") from exc
            reason = self._no_room(len(data))
            if reason:
                raise self._refuse(reason)
            active = self._active.get(table)
            if active is None:
                path = self._new_segment_path(table)
                try:
                    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                except OSError as exc:
                    raise self._refuse(f"spill file unusable: {safe_error(exc)}") from exc
                active = (path, fd, 0)
            path, fd, size = active
            try:
                _write_all(fd, data)
            except OSError as exc:
                self._drop_torn_segment(table, path, fd, size)
                raise self._refuse(f"spill write failed: {safe_error(exc)}") from exc
            self._active[table] = (path, fd, size + len(data))
            self._written_since_check += len(data)
            self.refusing = ""
            self.pending_rows += len(rows)
            self.pending_bytes += len(data)
            self.spilled_rows += len(rows)
            self.spilled_bytes += len(data)
            if self._dirty_since is None:
                self._dirty_since = time.monotonic()
        return len(data)

    def _encodable(self, table: str, rows: Sequence[tuple]) -> tuple[list[tuple], bytes]:
        good = []
        for row in rows:
            try:
                _ENCODER.encode(row)
            except _UNENCODABLE as exc:
                self.reject(table, row, f"row cannot be written to the spill: {safe_error(exc)}")
            else:
                good.append(row)
        return good, _ENCODER.encode_lines(good) if good else b""

    def _refuse(self, reason: str) -> SpillRefused:
        self.refusing = reason
        self.refused_appends += 1
        return SpillRefused(reason)

    def _no_room(self, nbytes: int) -> str:
        """Why ``nbytes`` more cannot be spilled now ("" if they can). Under the lock."""
        if self.pending_bytes + nbytes > self.max_bytes:
            return (
                f"spill full: {self.pending_bytes} bytes wait for the database, cap "
                f"{self.max_bytes} (RL_WRITER_SPILL_MAX_BYTES)"
            )
        if self.min_free_bytes <= 0:
            return ""
        now = time.monotonic()
        if (
            now - self._free_checked_at >= _FREE_SPACE_CHECK_S
            or self._written_since_check >= _FREE_SPACE_CHECK_BYTES
        ):
            try:
                st = os.statvfs(self._dir or self.base_dir)
                self._free_at_check = st.f_bavail * st.f_frsize
            except OSError:
                self._free_at_check = None  # cannot tell: let the write itself decide
            self._free_checked_at = now
            self._written_since_check = 0
        if self._free_at_check is None:
            return ""
        free = self._free_at_check - self._written_since_check
        if free - nbytes < self.min_free_bytes:
            return (
                f"disk nearly full: {max(free, 0)} bytes free under {self.base_dir}, keeping "
                f"{self.min_free_bytes} (RL_WRITER_SPILL_MIN_FREE_BYTES)"
            )
        return ""

    def _drop_torn_segment(self, table: str, path: Path, fd: int, size: int) -> None:
        """After a failed write: cut the segment back to its last whole line and seal it
        (or remove it if empty), so no torn line stays in the middle of a file."""
        self._active.pop(table, None)
        with contextlib.suppress(OSError):
            os.ftruncate(fd, size)
        with contextlib.suppress(OSError):
            os.close(fd)
        if size:
            self._sealed.append(path)
        else:
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)

    # -- the writer's thread ----------------------------------------------------------------

    def sync(self, *, force: bool = False) -> None:
        """Hand buffered lines to the OS; fsync when due (or ``force``); seal big segments."""
        with self._lock:
            fds = [fd for _, fd, _ in self._active.values()]
            dirty_since = self._dirty_since
            due = dirty_since is not None and (
                force or time.monotonic() - dirty_since >= self.fsync_interval_s
            )
            if due:
                self._dirty_since = None
            too_big = [t for t, (_, _, size) in self._active.items()
                       if size >= self.segment_max_bytes]  # fmt: skip
        if due:
            for fd in fds:
                # Outside the lock, so enqueue never waits on the disk. A file sealed meanwhile
                # by another thread was fsync-ed by the sealing.
                with contextlib.suppress(OSError):
                    os.fsync(fd)
        for table in too_big:
            self._seal(table)

    def _seal(self, table: str) -> None:
        with self._lock:
            active = self._active.pop(table, None)
            if active is None:
                return
            path, fd, _ = active
            self._sealed.append(path)
        try:
            os.fsync(fd)
        except OSError as exc:  # the rows are with the OS; only a power cut could cost them
            logger.warning("writer.spill_fsync_failed path=%s error=%s", path, safe_error(exc))
        finally:
            os.close(fd)

    def seal_all(self) -> None:
        """Seal every active segment so that its rows can be replayed."""
        for table in list(self._active):
            self._seal(table)

    def next_chunk(self, max_rows: int) -> SpillChunk | None:
        """The oldest rows not yet committed (the same chunk again until it is committed)."""
        if self._chunk is not None:
            return self._chunk
        while True:
            if self._reader is None:
                if not self._sealed and self._active:
                    self.seal_all()
                if not self._sealed:
                    return None
                path = self._sealed[0]
                self._reader = (path, open(path, "rb"))
            path, fh = self._reader
            start = fh.tell()
            lines = []
            for _ in range(max_rows):
                line = fh.readline()
                if not line:
                    break
                lines.append(line)
            table = _SEGMENT_RE.match(path.name).group(2)  # type: ignore[union-attr]
            rows, corrupt = _decode_lines(self._decoders[table], lines)
            chunk = SpillChunk(
                table=table,
                rows=rows,
                path=path,
                start_offset=start,
                end_offset=fh.tell(),
                line_count=len(lines),
                corrupt_lines=corrupt,
                at_end=fh.tell() >= os.fstat(fh.fileno()).st_size,  # sealed: no more growth
            )
            if not rows:
                self.commit_chunk(chunk)  # only corrupt lines or the end: nothing to write
                continue
            self._chunk = chunk
            return chunk

    def keep_only(self, chunk: SpillChunk, rows: list[tuple]) -> None:
        """After a partial write, only ``rows`` of the chunk still need to be written."""
        chunk.rows = rows

    def commit_chunk(self, chunk: SpillChunk) -> None:
        """The chunk's rows are in the database: forget them; delete a finished segment."""
        for line in chunk.corrupt_lines:
            self.reject(chunk.table, None, "spill line could not be decoded", raw=line)
        with self._lock:
            self._chunk = None
            self.pending_rows = max(0, self.pending_rows - chunk.line_count)
            self.pending_bytes = max(
                0, self.pending_bytes - (chunk.end_offset - chunk.start_offset)
            )
        if chunk.at_end and self._reader is not None:
            path, fh = self._reader
            fh.close()
            self._reader = None
            path.unlink(missing_ok=True)
            with self._lock:
                self._sealed.remove(path)

    def reject(self, table: str, row: tuple | None, reason: str, *, raw: bytes = b"") -> bool:
        """Keep a row the database refused (or an unreadable line) with its reason.

        Counted in ``rejected_rows`` either way; False when the rejected file could not be
        written (the disk failed): the caller then treats the row as lost.
        """
        try:
            self._reject(table, row, reason, raw=raw)
            if row is not None and self.on_reject is not None:
                self.on_reject(table, row, reason)
        except OSError as exc:
            with self._lock:
                self.rejected_rows += 1
                if self._rejected_file is not None:  # reopened next time
                    with contextlib.suppress(OSError):
                        self._rejected_file.close()
                    self._rejected_file = None
            logger.error(
                "writer.rejected_file_failed table=%s reason=%s error=%s",
                table,
                reason,
                safe_error(exc),
            )
            return False
        return True

    def _reject(self, table: str, row: tuple | None, reason: str, *, raw: bytes = b"") -> None:
        with self._lock:
            self._open_locked()
            if self._rejected_file is None:
                folder = self.base_dir / "rejected"
                folder.mkdir(parents=True, exist_ok=True)
                assert self._dir is not None
                self._rejected_file = open(folder / f"{self._dir.name}.jsonl", "ab")
            record: dict[str, Any] = {
                "table": table,
                "reason": reason,
                "at": datetime.now(UTC),
            }
            if row is not None:
                record["row"] = row
            if raw:
                record["raw"] = raw.decode("utf-8", "replace")
            try:
                line = _ENCODER.encode(record)
            except (ValueError, TypeError, OverflowError, msgspec.EncodeError):
                # JSON cannot hold it (an integer of thousands of digits): keep a description.
                record["row"] = [describe_int(v) for v in row or ()]
                line = _ENCODER.encode(record)
            self._rejected_file.write(line + b"\n")
            self._rejected_file.flush()
            self.rejected_rows += 1

    def close(self) -> None:
        """Flush and fsync everything and release the directory (kept if rows remain)."""
        self.seal_all()
        with self._lock:
            if self._reader is not None:
                self._reader[1].close()
                self._reader = None
            self._chunk = None
            if self._rejected_file is not None:
                with contextlib.suppress(OSError):
                    self._rejected_file.close()
                self._rejected_file = None
            if self._dir is None:
                return
            folder, fd = self._dir, self._lock_fd
            self._dir, self._lock_fd = None, None
            self._sealed.clear()
            self._next_segment = 1  # pending_* stay: they are the rows left on disk
            if not any(_SEGMENT_RE.match(p.name) for p in folder.iterdir()):
                (folder / ".lock").unlink(missing_ok=True)
                folder.rmdir()
            if fd is not None:
                os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    written = os.write(fd, data)
    if written == len(data):
        return  # the usual case, with no allocation (enqueue's path: see RecordWriter docs)
    view = memoryview(data)[written:]
    while view:
        view = view[os.write(fd, view) :]


def _age_s(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def _decode_lines(
    decoder: msgspec.json.Decoder, lines: list[bytes]
) -> tuple[list[tuple], list[bytes]]:
    """Rows from complete JSON lines; lines that are torn or invalid come back separately."""
    if lines and lines[-1].endswith(b"\n"):
        with contextlib.suppress(msgspec.DecodeError):
            return decoder.decode_lines(b"".join(lines)), []
    rows, corrupt = [], []
    for line in lines:
        if not line.endswith(b"\n"):
            corrupt.append(line)  # the torn end of a file whose writer died mid-write
            continue
        try:
            rows.append(decoder.decode(line))
        except msgspec.DecodeError:
            corrupt.append(line)
    return rows, corrupt
