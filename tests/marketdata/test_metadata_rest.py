"""The recorder's signed REST reads against the local exchange: Kalshi's documented shapes,
its token bucket, and 429 answers retried with backoff."""

from __future__ import annotations

import random
import time

import pytest

from apps.marketdata.exchange import (
    ApiKey,
    ExchangeConfig,
    ExchangeThread,
    LocalExchange,
    SyntheticConfig,
    SyntheticSource,
)
from apps.marketdata.kalshi.rest import KalshiRest, RestError, kalshi_limiter
from apps.marketdata.metadata import fetch_metadata, multiplier_e4

from .exchange_support import PUBLIC_PEM, SIGNER


def _exchange() -> LocalExchange:
    return LocalExchange(
        ExchangeConfig(keys=(ApiKey(public_key=PUBLIC_PEM),)),
        source=SyntheticSource(
            SyntheticConfig(markets=4, rate=0, seed=1, resolve_after_s=3600, resolve_markets=1)
        ),
    )


def test_metadata_of_every_recorded_market_and_its_series_fees() -> None:
    exchange = _exchange()
    with ExchangeThread(exchange):
        rest = KalshiRest(exchange.rest_url, SIGNER)
        result = fetch_metadata(rest, exchange.tickers())
    assert result.skipped == []
    markets = {row.ticker: row for row in result.markets}
    assert set(markets) == set(exchange.tickers())
    first = markets["KXSYN-26DEC31-M00"]
    assert first.series_ticker == "KXSYN" and first.status == "active"
    assert first.can_close_early is True and first.result == ""
    assert first.settlement_value_e4 is None
    # The market that resolves during the run states its close time in advance.
    assert 3500 < first.close_time.timestamp() - time.time() < 3700
    assert first.open_time.timestamp() < time.time()
    assert first.price_level_structure == "linear_cent"
    assert first.price_ranges == [{"start": "0.0000", "end": "1.0000", "step": "0.0100"}]
    fees = {row.series_ticker: (row.fee_type, row.fee_multiplier_e4) for row in result.series}
    assert fees == {
        "KXSYN": ("quadratic", 10_000),
        "KXSYNMK": ("quadratic_with_maker_fees", 10_000),
        "KXSYNINX": ("quadratic", 5_000),
    }
    [change] = result.fee_changes
    assert (change.series_ticker, change.fee_type, change.fee_multiplier_e4) == (
        "KXSYNINX",
        "quadratic",
        2_500,
    )
    assert 3500 < change.scheduled_ts.timestamp() - time.time() < 3700


def test_429_is_retried_with_backoff_until_the_bucket_lets_it_through() -> None:
    exchange = _exchange()
    slept: list[float] = []
    with ExchangeThread(exchange):
        rest = KalshiRest(
            exchange.rest_url, SIGNER, rng=random.Random(1), sleep=slept.append, max_retries=4
        )
        exchange.rate_limit_rest(3)
        assert rest.series("KXSYNINX")["fee_multiplier"] == 0.5
        assert rest.stats.rate_limited == 3 and rest.stats.requests == 4
        assert exchange.stats.rest_rate_limited == 3
        # Exponential caps (0.25, 0.5, 1.0 s) with full jitter.
        caps = (0.25, 0.5, 1.0)
        assert len(slept) == 3 and all(0 <= d <= c for d, c in zip(slept, caps, strict=True))
        exchange.rate_limit_rest(5)
        with pytest.raises(RestError, match="HTTP 429"):
            rest.series("KXSYN")
        assert rest.stats.rate_limited == 3 + 5


def test_requests_are_paced_by_kalshis_token_bucket() -> None:
    exchange = _exchange()
    with ExchangeThread(exchange):
        # 200 tokens a second, 10 a request: 20 requests a second at most.
        rest = KalshiRest(exchange.rest_url, SIGNER, limiter=kalshi_limiter(200))
        started = time.monotonic()
        for _ in range(25):
            rest.get("/exchange/status")
        elapsed = time.monotonic() - started
    assert elapsed >= 0.9, elapsed


def test_fee_multipliers_are_exact_or_refused() -> None:
    assert multiplier_e4(0.5) == 5_000 and multiplier_e4(1) == 10_000 and multiplier_e4(0) == 0
    assert multiplier_e4("0.035") == 350
    for bad in (True, None, "x", 0.00001, -1, 1e9, float("nan")):
        with pytest.raises(ValueError):
            multiplier_e4(bad)
