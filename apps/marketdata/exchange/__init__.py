"""The bundled local Kalshi-compatible exchange (pure Python, no Django).

Typical use from async code::

    exchange = LocalExchange(ExchangeConfig(keys=(ApiKey(public_key=pem),)), SyntheticSource())
    async with exchange.running(host="127.0.0.1", port=0) as url:
        ...

and from synchronous code, ``ExchangeThread(exchange).start()`` returns the URL.

The modules, each importing only modules listed before it (no cycles): ``errors``, ``stats``,
``markets``, ``frames``, ``config`` (plain data), ``auth``, ``keys``, ``venue`` (markets, books,
the subscription index, fan-out, connections, the pause gate), ``session`` (one connection),
``faults`` (runtime fault knobs), ``sources``, ``replay``, ``planted_world``, ``planted``
(book events, driving the venue; the database replay, which needs Django, is
``apps.marketdata.db_replay``), ``rest``, ``server`` (``LocalExchange``: the
WebSocket and HTTP wiring), ``thread``, ``runner``.

Where Kalshi's behaviour is undocumented or contradictory (kalshi-protocol.md §3, §11), the
exchange makes these choices:

* A second ``subscribe`` for a channel already subscribed on the connection merges the new
  markets into the existing sid and answers ``{"type":"ok","id","sid","seq","msg":
  {"market_tickers":[all]}}`` (observed Aug 2026), rather than the documented error 6; the new
  markets' snapshots follow on that sid. ``skip_ticker_ack`` leaves ``msg`` empty (``{}``).
* ``ok`` and ``unsubscribed`` take the sid's next seq on sequenced channels (orderbook_delta,
  trade); the ticker channel has no seq at all. ``subscribed`` acks take none.
* ``get_snapshot`` answers with the snapshots only (carrying the command ``id`` and the sid's
  next seq), no ``ok``; without markets it re-sends every market of the sid.
* A command is validated completely before anything changes: a failing multi-channel
  subscribe or multi-sid unsubscribe subscribes / unsubscribes nothing.
* Real Kalshi channels this exchange does not simulate (fill, user_orders, ...) get error 10
  (channel error); names Kalshi does not know get error 8.
* ``market_lifecycle_v2`` takes no market filter (documented): a subscribe's market list is
  validated like any other but ignored, and the sid gets every market. Its frames
  (``market_lifecycle_v2``, ``event_lifecycle``, ``event_fee_update``) carry no ``seq``,
  like the documented example. A series fee change sends one ``event_fee_update`` per event
  of the series, with the new settings as ``fee_type_override`` /
  ``fee_multiplier_override``. Closing a market early sends ``close_date_updated`` (close
  time = now) and empties its book through ordinary deltas.
* Unsolicited errors (fault knob, buffer overflow) are ``{"type":"error","sid":S,"msg":
  {"code":25,"msg":"Subscription buffer overflow"}}`` without ``id``, and end that sid.
* A NO-side book level or delta under ``use_yes_price`` is priced ``1 - q``, and levels keep
  the NO-price order, so the best ask is still last (observed 2026).
* Handshake clock skew: ±``max_clock_skew_s`` (30 s by default; Kalshi's is undocumented).
  The 401 body is ``Unauthorized: <reason>``.
* A client that answers no ping for ``pong_timeout_s`` is dropped without a close handshake.
"""

from .config import ApiKey, ExchangeConfig, FaultConfig
from .errors import ConfigError, MarketError
from .keys import DevKeys, ensure_dev_keys
from .markets import PRICE_LEVEL_STRUCTURES, FeeChange, Market, PriceRange, Series
from .replay import JsonlReplaySource
from .server import LocalExchange
from .sources import MarketDataSource, SyntheticConfig, SyntheticSource
from .stats import ExchangeStats
from .thread import ExchangeThread
from .venue import Venue

__all__ = [
    "PRICE_LEVEL_STRUCTURES",
    "ApiKey",
    "ConfigError",
    "DevKeys",
    "ExchangeConfig",
    "ExchangeStats",
    "ExchangeThread",
    "FaultConfig",
    "FeeChange",
    "JsonlReplaySource",
    "LocalExchange",
    "Market",
    "MarketDataSource",
    "MarketError",
    "PriceRange",
    "Series",
    "SyntheticConfig",
    "SyntheticSource",
    "Venue",
    "ensure_dev_keys",
]
