"""The bundled local Kalshi-compatible exchange (pure Python, no Django).

Typical use from async code::

    exchange = LocalExchange(ExchangeConfig(keys=(ApiKey(public_key=pem),)))
    async with exchange.running(host="127.0.0.1", port=0) as url:
        ...

and from synchronous code, ``ExchangeThread(exchange).start()`` returns the URL.
"""

from .config import ApiKey, ConfigError, ExchangeConfig, FaultConfig
from .keys import DevKeys, ensure_dev_keys
from .markets import PRICE_LEVEL_STRUCTURES, Market, MarketError, PriceRange
from .replay import JsonlReplaySource
from .server import ExchangeStats, LocalExchange
from .sources import MarketDataSource, SyntheticConfig, SyntheticSource
from .thread import ExchangeThread

__all__ = [
    "PRICE_LEVEL_STRUCTURES",
    "ApiKey",
    "ConfigError",
    "DevKeys",
    "ExchangeConfig",
    "ExchangeStats",
    "ExchangeThread",
    "FaultConfig",
    "JsonlReplaySource",
    "LocalExchange",
    "Market",
    "MarketDataSource",
    "MarketError",
    "PriceRange",
    "SyntheticConfig",
    "SyntheticSource",
    "ensure_dev_keys",
]
