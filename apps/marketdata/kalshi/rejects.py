"""A bounded store of the frames the client rejected, for whoever has to find out why.

Every frame that fails to decode or to be handled is counted by the client and handed here
with its reason. The store keeps:

* in memory, the most recent records (at most ``memory_records`` and ``memory_bytes``), for
  status pages and tests;
* on disk, when a directory is configured, one JSON line per record in
  ``rejected-frames.jsonl``, rotated at ``file_max_bytes`` into ``rejected-frames.1.jsonl``
  ... ``rejected-frames.<files_kept - 1>.jsonl`` (the oldest is deleted), so the directory
  never holds more than about ``files_kept * file_max_bytes``.

Each record keeps the frame's first ``max_frame_bytes`` (text as is, binary as base64), its
full size, the reason and when it arrived. Writes to disk are rate limited
(``max_writes_per_s``, with an equal burst): a peer sending nothing but garbage costs
bounded disk traffic, and the excess is counted (``not_persisted``), never silently lost
from the counters. A directory that cannot be written (read-only, full disk) is logged once
per minute and retried after that; the store itself never raises.

No Django here (the client package is Django-free); the caller chooses the directory.
"""

from __future__ import annotations

import base64
import itertools
import json
import logging
import os
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

log = logging.getLogger(__name__)

FILE_NAME: Final = "rejected-frames.jsonl"
_RETRY_AFTER_S: Final = 60.0


@dataclass(frozen=True)
class RejectedFrame:
    """One rejected frame as kept in memory (``raw`` cut to ``max_frame_bytes``)."""

    at_ns: int
    code: str
    reason: str
    size: int
    raw: bytes | str
    connection_id: str | None

    @property
    def truncated(self) -> bool:
        return len(self.raw) < self.size

    def as_json(self) -> dict[str, Any]:
        """The record as written to disk: JSON-safe, binary frames in base64."""
        raw = self.raw
        if isinstance(raw, str):
            encoding, text = "text", raw
        else:
            try:
                encoding, text = "text", raw.decode("utf-8")
            except UnicodeDecodeError:
                encoding, text = "base64", base64.b64encode(raw).decode("ascii")
        seconds, ns = divmod(self.at_ns, 1_000_000_000)
        at = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{ns // 1000:06d}Z"
        return {
            "at": at,
            "connection_id": self.connection_id,
            "code": self.code,
            "reason": self.reason,
            "size": self.size,
            "truncated": self.truncated,
            "encoding": encoding,
            "raw": text,
        }


class RejectedFrameStore:
    """Keeps rejected frames within fixed memory and disk budgets; :meth:`add` never raises."""

    def __init__(
        self,
        directory: Path | str | None = None,
        *,
        max_frame_bytes: int = 64 * 1024,
        memory_records: int = 200,
        memory_bytes: int = 4 * 2**20,
        file_max_bytes: int = 16 * 2**20,
        files_kept: int = 4,
        max_writes_per_s: float = 50.0,
    ) -> None:
        if max_frame_bytes < 1 or memory_records < 1 or file_max_bytes < 1 or files_kept < 1:
            raise ValueError("rejected-frame store limits must be positive")
        self.directory = Path(directory) if directory is not None else None
        self.max_frame_bytes = max_frame_bytes
        self.memory_bytes = memory_bytes
        self.file_max_bytes = file_max_bytes
        self.files_kept = files_kept
        self.max_writes_per_s = max_writes_per_s
        self._recent: deque[RejectedFrame] = deque(maxlen=memory_records)
        self._recent_bytes = 0
        self._fd: int | None = None
        self._file_size = 0
        self._tokens = max_writes_per_s
        self._tokens_at = time.monotonic()
        self._disk_retry_at = 0.0
        # Counters (also what stats() reports).
        self.added = 0
        self.persisted = 0
        self.not_persisted = 0
        self.disk_errors = 0
        self.rotations = 0
        self.last_disk_error = ""

    @property
    def path(self) -> Path | None:
        """The file being written, or None when the store is memory-only."""
        return None if self.directory is None else self.directory / FILE_NAME

    def add(
        self,
        raw: object,
        *,
        code: str,
        reason: str,
        connection_id: object = None,
        received_ns: int | None = None,
    ) -> None:
        """Keep one rejected frame (``raw`` as received: bytes, str or anything else)."""
        try:
            self._add(raw, code, reason, connection_id, received_ns)
        except Exception as exc:  # the store must never take the recorder down
            self.disk_errors += 1
            self.last_disk_error = f"{type(exc).__name__}: {exc}"[:200]
            log.warning("could not keep a rejected frame: %s", self.last_disk_error)

    def recent(self) -> list[RejectedFrame]:
        """The records kept in memory, oldest first."""
        return list(self._recent)

    def stats(self) -> dict[str, Any]:
        return {
            "added": self.added,
            "persisted": self.persisted,
            "not_persisted": self.not_persisted,
            "disk_errors": self.disk_errors,
            "rotations": self.rotations,
            "in_memory": len(self._recent),
            "last_disk_error": self.last_disk_error,
            "path": str(self.path) if self.path is not None else None,
        }

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                os.close(fd)
            except OSError:
                pass

    # -- internals --------------------------------------------------------------------------

    def _add(
        self, raw: object, code: str, reason: str, connection_id: object, received_ns: int | None
    ) -> None:
        if isinstance(raw, bytearray | memoryview):
            raw = bytes(raw)
        if not isinstance(raw, bytes | str):
            raw = repr(type(raw))  # not a frame at all: keep what it was, not its content
        record = RejectedFrame(
            at_ns=received_ns if received_ns is not None else time.time_ns(),
            code=code,
            reason=reason,
            size=len(raw),
            raw=raw[: self.max_frame_bytes],
            connection_id=None if connection_id is None else str(connection_id),
        )
        self.added += 1
        self._remember(record)
        if self.directory is not None:
            if self._take_token():
                self._persist(record)
            else:
                self.not_persisted += 1

    def _remember(self, record: RejectedFrame) -> None:
        recent = self._recent
        if len(recent) == recent.maxlen:
            self._recent_bytes -= _cost(recent[0])
        recent.append(record)
        self._recent_bytes += _cost(record)
        while self._recent_bytes > self.memory_bytes and len(recent) > 1:
            self._recent_bytes -= _cost(recent.popleft())

    def _take_token(self) -> bool:
        now = time.monotonic()
        rate = self.max_writes_per_s
        self._tokens = min(rate, self._tokens + (now - self._tokens_at) * rate)
        self._tokens_at = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True

    def _persist(self, record: RejectedFrame) -> None:
        if self._fd is None and time.monotonic() < self._disk_retry_at:
            self.not_persisted += 1
            return
        line = (json.dumps(record.as_json(), separators=(",", ":")) + "\n").encode()
        try:
            if self._fd is None:
                self._open()
            elif self._file_size + len(line) > self.file_max_bytes and self._file_size:
                self._rotate()
            written = os.write(self._fd, line)  # type: ignore[arg-type]
            self._file_size += written
            if written != len(line):
                raise OSError(f"short write ({written} of {len(line)} bytes)")
        except OSError as exc:
            self.not_persisted += 1
            self.disk_errors += 1
            self.last_disk_error = f"{type(exc).__name__}: {exc}"[:200]
            self._disk_retry_at = time.monotonic() + _RETRY_AFTER_S
            self.close()
            log.warning(
                "rejected frames are kept in memory only for the next %.0fs: cannot write %s (%s)",
                _RETRY_AFTER_S,
                self.directory,
                self.last_disk_error,
            )
            return
        self.persisted += 1

    def _open(self) -> None:
        assert self.directory is not None
        self.directory.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(
            self.directory / FILE_NAME, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640
        )
        self._file_size = os.fstat(self._fd).st_size
        if self._file_size >= self.file_max_bytes:
            self._rotate()

    def _rotate(self) -> None:
        """rejected-frames.jsonl -> .1.jsonl -> ... ; the oldest beyond files_kept goes."""
        assert self.directory is not None
        self.close()
        names = [FILE_NAME] + [
            FILE_NAME.replace(".jsonl", f".{n}.jsonl") for n in range(1, self.files_kept)
        ]
        oldest = self.directory / names[-1]
        if self.files_kept == 1:
            oldest.unlink(missing_ok=True)
        else:
            for newer, older in reversed(list(itertools.pairwise(names))):
                source = self.directory / newer
                if source.exists():
                    os.replace(source, self.directory / older)
        self.rotations += 1
        self._fd = os.open(
            self.directory / FILE_NAME, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640
        )
        self._file_size = os.fstat(self._fd).st_size


def _cost(record: RejectedFrame) -> int:
    return len(record.raw) + len(record.reason) + 200  # 200: the record's own overhead


def read_rejected_frames(directory: Path | str) -> list[dict[str, Any]]:
    """Every record on disk under ``directory``, oldest file first (plain JSON, no code)."""
    directory = Path(directory)
    files = sorted(
        directory.glob("rejected-frames*.jsonl"),
        key=lambda p: -int(p.name.split(".")[1]) if p.name.count(".") == 2 else 0,
    )
    records = []
    for path in files:
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.strip():
                records.append(json.loads(line))
    return records
