"""Who will run a queued task: is a Celery worker listening, and where is the queue.

Training, walk-forward and study runs are Celery tasks. With Redis the worker is a separate
process (``celery -A kalshiflow_site worker``); without it the queue is a folder (kombu's
filesystem transport) and ``./run serve`` starts the worker beside the web server. Either way
a request only queues. :func:`worker_status` pings the workers (Celery's remote control, which
both transports carry) so that the admin can say, before queueing, that a run would wait; the
command line, which waits for its run anyway, runs it in its own process when nobody answers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from celery import current_app
from django.conf import settings
from django.core.cache import cache

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerStatus:
    """The answer to a ping of the task queue's workers."""

    workers: tuple[str, ...]
    transport: str  # "redis", "filesystem", ...
    error: str = ""  # why the broker could not be asked (it is down, ...)

    @property
    def online(self) -> bool:
        return bool(self.workers)

    @property
    def embedded(self) -> bool:
        """The queue is a local folder: its worker is the one ``./run serve`` starts."""
        return self.transport == "filesystem"

    def warning(self) -> str:
        """What a user queueing a run now must know ("" when a worker is listening)."""
        if self.online:
            return ""
        if self.embedded:
            how = (
                "the site was started without its task worker: start it with ./run serve "
                "(it starts the worker beside the web server), or run "
                "`celery -A kalshiflow_site worker` on this machine"
            )
        else:
            how = "start one with `celery -A kalshiflow_site worker` (same settings as the site)"
        if self.error:
            found = f"the task queue ({self.transport}) cannot be reached: {self.error}"
        else:
            found = f"no Celery worker answered within {settings.RL_WORKER_PING_TIMEOUT_S:g} s"
        return (
            f"{found}. A run queued now waits at 0 % (and counts against "
            f"RL_TRAINING_MAX_CONCURRENT) until a worker takes it: {how}."
        )


def transport_name() -> str:
    url = str(current_app.conf.broker_url or "")
    return url.split("://", 1)[0] or "unknown"


# A worker that answered is believed for this long (the start form's page pings, then its
# post does not wait again); a silence is never cached, so a worker just started is seen.
ONLINE_CACHE_S = 10
_CACHE_KEY = "training:worker-status"


def worker_status(*, timeout_s: float | None = None, cached: bool = True) -> WorkerStatus:
    """Ping the workers; returns as soon as one answers, else after ``timeout_s``
    (``RL_WORKER_PING_TIMEOUT_S``). Never raises: a broker that is down is an answer too."""
    timeout = settings.RL_WORKER_PING_TIMEOUT_S if timeout_s is None else timeout_s
    transport = transport_name()
    if current_app.conf.task_always_eager:  # set by a test: tasks run where they are queued
        return WorkerStatus(workers=("eager (in process)",), transport=transport)
    if cached:
        known = cache.get(_CACHE_KEY)
        if known and known[0] == transport:
            return WorkerStatus(workers=tuple(known[1]), transport=transport)
    status = _ping(transport, timeout)
    if status.online:
        cache.set(_CACHE_KEY, (transport, list(status.workers)), ONLINE_CACHE_S)
    return status


def _ping(transport: str, timeout: float) -> WorkerStatus:
    try:
        with current_app.connection_for_write() as conn:
            # One connection attempt, not Celery's retry loop: a broker that is down is told
            # within the timeout.
            conn.ensure_connection(max_retries=1, timeout=timeout)
            replies = current_app.control.ping(timeout=timeout, limit=1, connection=conn) or []
    except Exception as exc:  # any broker failure means: nobody will take the run now
        log.warning("pinging the Celery workers failed: %s", exc)
        return WorkerStatus(workers=(), transport=transport, error=type(exc).__name__)
    names = tuple(sorted(name for reply in replies for name in reply))
    return WorkerStatus(workers=names, transport=transport)
