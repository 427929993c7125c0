"""Run the local exchange as a long-lived process (what ``manage.py run_local_exchange`` calls).

Stops cleanly on SIGINT/SIGTERM or after ``duration_s``, printing a progress line every
``progress_interval_s`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable
from pathlib import Path

from .config import ApiKey, ExchangeConfig, FaultConfig
from .errors import ConfigError
from .keys import ensure_dev_keys
from .planted_world import PlantedConfig
from .replay import JsonlReplaySource
from .server import LocalExchange
from .sources import MarketDataSource, SyntheticConfig, SyntheticSource
from .stats import ExchangeStats


def build_source(
    *,
    markets: int,
    rate: float,
    seed: int,
    max_messages: int | None,
    replay_jsonl: str | Path | None,
    replay_db: MarketDataSource | None,
    speed: float,
    recorded_use_yes_price: bool,
    planted: PlantedConfig | None = None,
    resolve_after_s: float | None = None,
    resolve_markets: int = 1,
) -> MarketDataSource:
    """The synthetic generator unless a replay or a planted world was asked for (one only).

    ``replay_db`` is the database replay built by the caller (``apps.marketdata.db_replay``):
    it needs Django, which the exchange does not import.
    """
    if sum(bool(x) for x in (replay_jsonl, replay_db, planted)) > 1:
        raise ConfigError(
            "choose one source: a JSONL replay, the database replay or a planted world"
        )
    if planted is not None:
        from .planted import PlantedSource

        return PlantedSource(planted, rate=rate, max_messages=max_messages)
    if replay_jsonl:
        return JsonlReplaySource(
            replay_jsonl, speed=speed, recorded_use_yes_price=recorded_use_yes_price
        )
    if replay_db is not None:
        return replay_db
    return SyntheticSource(
        SyntheticConfig(
            markets=markets,
            rate=rate,
            seed=seed,
            max_messages=max_messages,
            resolve_after_s=resolve_after_s,
            resolve_markets=min(resolve_markets, markets),
        )
    )


def run_local_exchange(
    *,
    host: str,
    port: int,
    source: MarketDataSource,
    key_dir: str | Path,
    public_key: str | Path | None = None,
    key_id: str | None = None,
    faults: FaultConfig | None = None,
    max_clock_skew_s: float = 30.0,
    ping_interval_s: float | None = 10.0,
    duration_s: float = 0.0,
    progress_interval_s: float = 5.0,
    report: Callable[[str], None] = print,
) -> ExchangeStats:
    """Serve until SIGINT/SIGTERM (or ``duration_s`` seconds when > 0); returns the counters.

    Without ``public_key`` the development key of ``key_dir`` is used (generated on first
    run), and the paths a client needs are printed.
    """
    if duration_s < 0 or progress_interval_s <= 0:
        raise ConfigError("duration must be >= 0 and the progress interval > 0 seconds")
    if public_key is None:
        dev = ensure_dev_keys(key_dir, announce=report)
        keys = (ApiKey(public_key=dev.public_key_path, key_id=dev.key_id),)
        report(f"Development key: id in {Path(key_dir) / 'local-exchange.key-id'}")
        report(f"  private key (sign with it): {dev.private_key_path}")
        report(f"  public key (the exchange checks it): {dev.public_key_path}")
    else:
        keys = (ApiKey(public_key=Path(public_key), key_id=key_id),)
        report(f"Accepting signatures by the public key {public_key}")
    config = ExchangeConfig(
        keys=keys,
        faults=faults or FaultConfig(),
        max_clock_skew_s=max_clock_skew_s,
        ping_interval_s=ping_interval_s,
    )
    exchange = LocalExchange(config, source)
    asyncio.run(_serve(exchange, host, port, duration_s, progress_interval_s, report))
    return exchange.stats


async def _serve(
    exchange: LocalExchange,
    host: str,
    port: int,
    duration_s: float,
    progress_interval_s: float,
    report: Callable[[str], None],
) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        # Only possible in the main thread; elsewhere the caller owns shutdown.
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
    try:
        async with contextlib.AsyncExitStack() as stack:
            try:
                url = await stack.enter_async_context(exchange.running(host, port))
            except OSError as exc:
                # A busy port or an address this host lacks: one line, not a traceback.
                raise ConfigError(
                    f"cannot listen on {host}:{port}: {exc.strerror or exc} (another process "
                    "may hold the port: pass --port 0 for a free one, or another --port)"
                ) from None
            report(f"Local Kalshi exchange listening on {url}")
            report(f"REST: {exchange.rest_url}/markets")
            report(f"{len(exchange.tickers())} markets; Ctrl-C to stop")
            progress = asyncio.create_task(_progress(exchange, progress_interval_s, report))
            try:
                async with asyncio.timeout(duration_s or None):
                    await stop.wait()
            except TimeoutError:
                pass
            finally:
                progress.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await progress
            report("Stopping: closing connections")
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
    stats = exchange.stats
    report(
        f"Stopped. {stats.source_messages} book messages generated, "
        f"{sum(stats.messages_sent.values())} frames sent, "
        f"{stats.connections_opened} connections, {sum(stats.auth_failures.values())} auth failures"
    )


async def _progress(
    exchange: LocalExchange, interval_s: float, report: Callable[[str], None]
) -> None:
    loop = asyncio.get_running_loop()
    stats = exchange.stats
    last_time, last_sent, last_source = loop.time(), 0, 0
    while True:
        await asyncio.sleep(interval_s)
        now, sent = loop.time(), sum(stats.messages_sent.values())
        elapsed = max(now - last_time, 1e-9)
        report(
            f"{(stats.source_messages - last_source) / elapsed:,.0f} book msgs/s, "
            f"{(sent - last_sent) / elapsed:,.0f} frames/s sent, "
            f"{stats.connections_open} connections open ({stats.connections_opened} total), "
            f"{sum(stats.auth_failures.values())} auth failures"
        )
        last_time, last_sent, last_source = now, sent, stats.source_messages
