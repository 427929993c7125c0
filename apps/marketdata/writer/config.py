"""The batched writer's configuration (``RL_WRITER_*`` settings) and its counters.

Pure Python: Django's settings are read only by :meth:`WriterConfig.from_settings`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

METHODS: Final = ("copy", "bulk_create")

# WriterConfig field -> Django setting that provides its default.
SETTING_NAMES: Final = {
    "method": "RL_WRITER_METHOD",
    "batch_rows": "RL_WRITER_BATCH_ROWS",
    "flush_interval_s": "RL_WRITER_FLUSH_INTERVAL_S",
    "queue_max_rows": "RL_WRITER_QUEUE_MAX_ROWS",
    "spill_dir": "RL_WRITER_SPILL_DIR",
    "spill_fsync_interval_s": "RL_WRITER_SPILL_FSYNC_INTERVAL_S",
    "spill_segment_max_bytes": "RL_WRITER_SPILL_SEGMENT_MAX_BYTES",
    "spill_max_bytes": "RL_WRITER_SPILL_MAX_BYTES",
    "spill_min_free_bytes": "RL_WRITER_SPILL_MIN_FREE_BYTES",
    "retry_initial_s": "RL_WRITER_RETRY_INITIAL_S",
    "retry_max_s": "RL_WRITER_RETRY_MAX_S",
    "db_timeout_s": "RL_WRITER_DB_TIMEOUT_S",
    "close_timeout_s": "RL_WRITER_CLOSE_TIMEOUT_S",
    "stuck_after_s": "RL_WRITER_STUCK_AFTER_S",
}


@dataclass(frozen=True)
class WriterConfig:
    """How the writer batches, bounds, spills and retries. Times in seconds.

    ``queue_max_rows`` bounds memory: a delta row costs roughly 0.4 KB in the queue, so the
    default 200_000 rows is about 80 MB; past it rows go straight to the spill file.
    ``db_timeout_s`` bounds a connect or an unacknowledged send to PostgreSQL (libpq
    ``connect_timeout`` / ``tcp_user_timeout``), so a dead network is noticed, not waited on.
    ``db_overrides`` replaces keys of the writer's own copy of ``DATABASES[using]`` (for
    example ``HOST``/``PORT`` of a pooler); other connections are unaffected.

    The spill takes at most ``spill_max_bytes`` waiting for the database (a delta row is
    about 160 bytes of JSON, so the default 16 GiB holds about 6 hours at 5k msg/s) and
    stops while the disk has less than ``spill_min_free_bytes`` free (0: no free-space check).
    """

    method: str = "copy"
    batch_rows: int = 5000
    flush_interval_s: float = 0.25
    queue_max_rows: int = 200_000
    spill_dir: Path = Path("var/spill")
    spill_fsync_interval_s: float = 1.0
    spill_segment_max_bytes: int = 64 * 1024 * 1024
    spill_max_bytes: int = 16 * 1024**3
    spill_min_free_bytes: int = 256 * 1024**2
    retry_initial_s: float = 0.25
    retry_max_s: float = 5.0
    db_timeout_s: float = 5.0
    close_timeout_s: float = 10.0
    stuck_after_s: float = 30.0
    using: str = "default"
    db_overrides: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"writer method {self.method!r} is not one of {', '.join(METHODS)}")
        for name in ("batch_rows", "queue_max_rows", "spill_segment_max_bytes", "spill_max_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"writer {name} must be >= 1, got {getattr(self, name)}")
        if self.spill_min_free_bytes < 0:
            raise ValueError(
                f"writer spill_min_free_bytes must be >= 0, got {self.spill_min_free_bytes}"
            )
        for name in ("flush_interval_s", "retry_initial_s", "retry_max_s", "db_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"writer {name} must be > 0 seconds, got {getattr(self, name)}")
        if self.queue_max_rows < self.batch_rows:
            raise ValueError(
                f"writer queue_max_rows ({self.queue_max_rows}) must be >= batch_rows "
                f"({self.batch_rows}), or no full batch could ever be queued"
            )
        object.__setattr__(self, "spill_dir", Path(self.spill_dir))

    @classmethod
    def from_settings(cls, **overrides: Any) -> WriterConfig:
        """Defaults from Django settings (``RL_WRITER_*``); non-None ``overrides`` win."""
        from django.conf import settings

        values: dict[str, Any] = {}
        for name, setting in SETTING_NAMES.items():
            if hasattr(settings, setting):
                values[name] = getattr(settings, setting)
        values.setdefault("spill_dir", Path(settings.VAR_DIR) / "spill")
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


@dataclass(frozen=True)
class WriterStats:
    """A consistent-enough snapshot of the writer's counters (rows, bytes, seconds).

    ``retries`` counts failed write attempts (each one spilled its rows or left them in the
    spill); ``overflow_rows`` were spilled by ``enqueue`` because the queue was at its bound;
    ``commit_lag_s`` is commit time minus the oldest ``received_at`` of a live batch and
    ``exchange_lag_s`` the same from the exchange's timestamp. Times ``*_unix_s`` are Unix
    seconds. ``rows_written`` counts market data and markers; metadata writes (connection
    records, heartbeats) are only in ``rows_written_by_table``.

    Loss (only when the database, the spill and the queue are all full at once):
    ``rows_lost`` rows were neither stored nor kept on disk; ``loss_open_markets`` markets
    have lost rows not yet covered by a ``gap`` marker, and ``gap_markers`` markers were
    queued for them. ``spill_full`` says rows need the spill now (the database is down) and
    it refuses them; ``spill_refused`` says why it last refused (its cap, the free-space
    guard or a write error); ``held_rows`` are rows the worker keeps in memory meanwhile.
    """

    method: str
    running: bool
    db_up: bool
    stuck: bool
    queue_depth: int
    queue_max_rows: int
    enqueued_rows: int
    overflow_rows: int
    rows_written: int
    rows_written_by_table: dict[str, int]
    batches: int
    retries: int
    spilled_rows: int
    spilled_bytes: int
    spill_pending_rows: int
    spill_pending_bytes: int
    replayed_rows: int
    rejected_rows: int
    last_error: str
    last_error_unix_s: float | None
    last_commit_unix_s: float | None
    last_commit_lag_s: float | None
    max_commit_lag_s: float | None
    last_exchange_lag_s: float | None
    max_exchange_lag_s: float | None
    rows_lost: int
    last_loss_unix_s: float | None
    last_loss_reason: str
    loss_open_markets: int
    gap_markers: int
    spill_full: bool
    spill_refused: str
    spill_max_bytes: int
    held_rows: int
