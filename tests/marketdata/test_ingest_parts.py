"""Smaller parts of the recorder: market resolution, live publishing, the Channels worker."""

from __future__ import annotations

import asyncio

import pytest
from channels.layers import get_channel_layer
from channels.testing import ApplicationCommunicator

from apps.marketdata.consumers import IngestWorker, options_from_message
from apps.marketdata.endpoints import EndpointError, load_signer, resolve_ws_url
from apps.marketdata.exchange import ExchangeThread
from apps.marketdata.ingest import IngestError, IngestOptions, resolve_markets, run_ingest
from apps.marketdata.kalshi.book import OrderBook
from apps.marketdata.live import BookPublisher, book_group
from tests.marketdata.exchange_support import make_exchange


def test_markets_resolve_by_ticker_series_and_event_through_rest() -> None:
    exchange = make_exchange(markets=4)
    with ExchangeThread(exchange) as url:
        tickers = exchange.tickers()
        series = exchange.market(tickers[0]).series_ticker
        by_series = resolve_markets(IngestOptions(series=[series]), url)
        # Synthetic markets 0 and 3 are in the first of the three fee series.
        assert sorted(by_series) == sorted(t for t in tickers if t.startswith(f"{series}-"))
        assert len(by_series) == 2
        explicit = resolve_markets(IngestOptions(markets=[tickers[1].lower(), tickers[1]]), url)
        assert explicit == [tickers[1]], "tickers are normalised and de-duplicated"
        every = resolve_markets(IngestOptions(), url)
        assert sorted(every) == sorted(tickers)


def test_bad_options_give_clear_errors(settings) -> None:
    with pytest.raises(EndpointError, match="must start with ws://"):
        resolve_ws_url(exchange="local", ws_url="http://x")
    with pytest.raises(EndpointError, match="local, demo or prod"):
        resolve_ws_url(exchange="live")
    settings.KALSHI_API_KEY_ID = ""
    with pytest.raises(EndpointError, match="KALSHI_API_KEY_ID"):
        load_signer(exchange="demo")
    # The recorder reports them as its own errors (what its command and consumer catch).
    with pytest.raises(IngestError, match="must start with ws://"):
        run_ingest(IngestOptions(ws_url="http://x"))
    with pytest.raises(IngestError, match="local, demo or prod"):
        run_ingest(IngestOptions(exchange="live"))
    with pytest.raises(IngestError, match="KALSHI_API_KEY_ID"):
        run_ingest(IngestOptions(exchange="demo"))
    with pytest.raises(IngestError, match="unknown ingest option"):
        options_from_message({"type": "ingest.start", "marketz": ["A"]})


def test_demo_and_prod_never_use_the_local_development_key(settings, tmp_path) -> None:
    from apps.marketdata.kalshi.signer import generate_key_pair

    private, _ = generate_key_pair()
    key_file = tmp_path / "kalshi.pem"
    key_file.write_bytes(private)
    settings.KALSHI_API_KEY_ID = "my-real-key"
    settings.KALSHI_PRIVATE_KEY_PATH = str(key_file)
    settings.KALSHI_PRIVATE_KEY_PEM = ""
    assert load_signer(exchange="demo").key_id == "my-real-key"
    assert load_signer(exchange="local").key_id != "my-real-key"
    assert "BEGIN" not in repr(load_signer(exchange="demo"))


def test_the_publisher_sends_a_changed_book_to_its_group_once() -> None:
    async def scenario():
        layer = get_channel_layer()
        channel = await layer.new_channel()
        await layer.group_add(book_group("KX-A"), channel)
        book = OrderBook("KX-A")
        book.apply_snapshot([(4000, 500)], [(5500, 300)])
        publisher = BookPublisher()
        assert await publisher.publish_changed({"KX-A": book}, trusted=lambda _: True) == 1
        message = await asyncio.wait_for(layer.receive(channel), 2)
        assert await publisher.publish_changed({"KX-A": book}, trusted=lambda _: True) == 0
        book.apply_delta("yes", 4100, 100)
        assert await publisher.publish_changed({"KX-A": book}, trusted=lambda _: True) == 1
        return message

    message = asyncio.run(scenario())
    top = message["book"]
    assert message["type"] == "book.update"
    assert (top["yes_bid_e4"], top["yes_ask_e4"], top["spread_e4"]) == (4000, 4500, 500)
    assert [list(level) for level in top["yes_depth"]] == [[4000, 500]]


@pytest.mark.django_db(transaction=True)
def test_the_channels_worker_records_until_told_to_stop(settings) -> None:
    from apps.marketdata.exchange import ensure_dev_keys
    from apps.marketdata.models import OrderbookDelta
    from tests.marketdata.test_ingest import dev_key_exchange

    ensure_dev_keys(settings.LOCAL_EXCHANGE_KEY_DIR, announce=lambda *_: None)
    exchange = dev_key_exchange(settings, markets=2, rate=500)
    with ExchangeThread(exchange) as url:

        async def scenario():
            app = ApplicationCommunicator(
                IngestWorker.as_asgi(), {"type": "channel", "channel": "kalshi-ingest"}
            )
            await app.send_input(
                {"type": "ingest.start", "ws_url": url, "progress_interval_s": 60.0}
            )
            await asyncio.sleep(3)
            await app.send_input({"type": "ingest.stop"})
            await asyncio.sleep(2)
            app.stop()

        asyncio.run(scenario())
    assert OrderbookDelta.objects.count() > 100
