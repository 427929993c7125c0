"""Run a ``LocalExchange`` in a background thread, for synchronous callers (tests, scripts).

The exchange lives entirely in the thread's event loop; ``call()`` is the one safe way to
touch it from outside (books, fault knobs, pause/resume).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from .server import LocalExchange

T = TypeVar("T")


class ExchangeThread:
    """``with ExchangeThread(exchange) as url: ...`` or ``start()`` / ``stop()``."""

    def __init__(self, exchange: LocalExchange, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.exchange = exchange
        self.host = host
        self.port = port
        self.url: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def start(self, timeout_s: float = 15.0) -> str:
        """Start serving; returns the WebSocket URL once the port is bound."""
        if self._thread is not None:
            raise RuntimeError("this ExchangeThread was already started")
        self._thread = threading.Thread(target=self._main, name="local-exchange", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise TimeoutError(f"the local exchange did not start within {timeout_s} s")
        if self._error is not None:
            raise RuntimeError("the local exchange failed to start") from self._error
        assert self.url is not None
        return self.url

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported to start() / stop(), not lost in the thread
            self._error = exc
        finally:
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with self.exchange.running(self.host, self.port) as url:
            self.url = url
            self._ready.set()
            await self._stop.wait()

    def call(self, fn: Callable[[], Awaitable[T] | T], timeout_s: float = 30.0) -> T:
        """Run ``fn()`` in the exchange's loop (awaiting it if it returns an awaitable)."""
        if self._loop is None or self._thread is None or not self._thread.is_alive():
            raise RuntimeError("the local exchange thread is not running")

        async def runner() -> Any:
            result = fn()
            if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
                result = await result
            return result

        future: concurrent.futures.Future[T] = asyncio.run_coroutine_threadsafe(
            runner(), self._loop
        )
        return future.result(timeout_s)

    def stop(self, timeout_s: float = 15.0) -> None:
        """Close every connection and the port, then join the thread."""
        if self._thread is None:
            return
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            raise TimeoutError(f"the local exchange thread did not stop within {timeout_s} s")
        self._thread = None
        if self._error is not None:
            raise RuntimeError("the local exchange thread failed") from self._error

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
