"""Client -> server commands (kalshi-protocol.md §3), built and validated before sending.

Every command is ``{"id": <int>, "cmd": "<name>", "params": {...}}`` with an id unique per
connection, starting at 1. Arguments are checked here so that a mistake is a ``ValueError``
with a clear message on our side, not a numbered error from Kalshi later.

The JSON is returned as ``str`` on purpose: WebSocket libraries send ``str`` as a text frame
and ``bytes`` as a binary frame, and Kalshi's commands are text frames.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final, NamedTuple

import msgspec

__all__ = ["CHANNELS", "UPDATE_ACTIONS", "Command", "CommandBuilder"]

# The 2026 channel enum of the asyncapi spec (``ticker_v2`` has been removed).
CHANNELS: Final = frozenset(
    {
        "orderbook_delta",
        "ticker",
        "trade",
        "fill",
        "market_positions",
        "market_lifecycle_v2",
        "multivariate_market_lifecycle",
        "multivariate",
        "communications",
        "order_group_updates",
        "user_orders",
        "cfbenchmarks_value",
    }
)
UPDATE_ACTIONS: Final = ("add_markets", "delete_markets", "get_snapshot")

# §9: tickers use A-Z, 0-9, '-' and '.' (the spec's own regex forgets the '.').
_TICKER_RE: Final = re.compile(r"[A-Z0-9.\-]+")

_encode = msgspec.json.Encoder().encode


class Command(NamedTuple):
    """One command: its ``id`` (to match the ack) and the JSON text to send."""

    id: int
    text: str


class CommandBuilder:
    """Numbers and serialises the commands of one WebSocket connection.

    ``next_id`` starts at 1 (``0`` means "no id" in Kalshi's protocol) and rises by one per
    command built, so ids are unique per connection. Use a new builder per connection.
    """

    __slots__ = ("next_id",)

    def __init__(self, *, first_id: int = 1) -> None:
        if type(first_id) is not int or first_id < 1:
            raise ValueError(
                f"first_id must be an integer >= 1 (0 means 'no id'), got {first_id!r}"
            )
        self.next_id = first_id

    def _build(self, cmd: str, params: dict[str, object] | None) -> Command:
        command_id = self.next_id
        self.next_id += 1
        body: dict[str, object] = {"id": command_id, "cmd": cmd}
        if params is not None:
            body["params"] = params
        return Command(command_id, _encode(body).decode())

    def subscribe(
        self,
        channels: Iterable[str],
        market_tickers: Iterable[str] | None = None,
        *,
        use_yes_price: bool | None = None,
        send_initial_snapshot: bool | None = None,
    ) -> Command:
        """``subscribe`` to ``channels`` for ``market_tickers`` (None = no market filter).

        Always sends the ``market_tickers`` array, also for one market (Kalshi accepts it).
        ``use_yes_price`` applies to ``orderbook_delta`` only and ``send_initial_snapshot``
        to ``ticker`` only; None leaves the option out (the server default).
        """
        channel_list = _strings(channels, "channels")
        if not channel_list:
            raise ValueError("subscribe needs at least one channel")
        unknown = [c for c in channel_list if c not in CHANNELS]
        if unknown:
            raise ValueError(
                f"unknown channel(s) {unknown}; known channels: {', '.join(sorted(CHANNELS))}"
            )
        _no_duplicates(channel_list, "channel")
        params: dict[str, object] = {"channels": channel_list}
        if market_tickers is not None:
            params["market_tickers"] = _tickers(market_tickers)
        elif "orderbook_delta" in channel_list:
            raise ValueError("the orderbook_delta channel needs market_tickers (Kalshi error 14)")
        if use_yes_price is not None:
            _flag(use_yes_price, "use_yes_price")
            if "orderbook_delta" not in channel_list:
                raise ValueError("use_yes_price applies only to the orderbook_delta channel")
            params["use_yes_price"] = use_yes_price
        if send_initial_snapshot is not None:
            _flag(send_initial_snapshot, "send_initial_snapshot")
            if "ticker" not in channel_list:
                raise ValueError("send_initial_snapshot applies only to the ticker channel")
            params["send_initial_snapshot"] = send_initial_snapshot
        return self._build("subscribe", params)

    def unsubscribe(self, sids: Iterable[int]) -> Command:
        """``unsubscribe`` from each sid; Kalshi answers one ``unsubscribed`` per sid."""
        if isinstance(sids, int | str | bytes):
            raise ValueError(f"sids must be a list of integers, got {sids!r}")
        sid_list = list(sids)
        if not sid_list:
            raise ValueError("unsubscribe needs at least one sid")
        for sid in sid_list:
            _sid(sid)
        _no_duplicates(sid_list, "sid")
        return self._build("unsubscribe", {"sids": sid_list})

    def update_subscription(
        self, *, sid: int, action: str, market_tickers: Iterable[str]
    ) -> Command:
        """``update_subscription`` of one sid: ``add_markets``, ``delete_markets`` or
        ``get_snapshot`` (fresh ``orderbook_snapshot`` of the listed markets, same sid/seq)."""
        _sid(sid)
        if action not in UPDATE_ACTIONS:
            raise ValueError(
                f"unknown update_subscription action {action!r}; "
                f"use one of {', '.join(UPDATE_ACTIONS)}"
            )
        tickers = _tickers(market_tickers)
        return self._build(
            "update_subscription", {"sid": sid, "market_tickers": tickers, "action": action}
        )

    def list_subscriptions(self) -> Command:
        """``list_subscriptions``: the answer is an ``ok`` whose msg lists (channel, sid)."""
        return self._build("list_subscriptions", None)


def _strings(values: Iterable[str], what: str) -> list[str]:
    # A bare string is iterable too; "ticker" must not become ["t", "i", ...].
    if isinstance(values, str | bytes):
        raise ValueError(f"{what} must be a list of strings, not a single {type(values).__name__}")
    items = list(values)
    for item in items:
        if type(item) is not str or not item:
            raise ValueError(f"{what} must hold non-empty strings, got {item!r}")
    return items


def _tickers(market_tickers: Iterable[str]) -> list[str]:
    tickers = _strings(market_tickers, "market_tickers")
    if not tickers:
        raise ValueError("market_tickers is empty: give at least one market ticker")
    for ticker in tickers:
        if not _TICKER_RE.fullmatch(ticker):
            raise ValueError(
                f"market ticker {ticker!r} may only use A-Z, 0-9, '-' and '.' (Kalshi tickers)"
            )
    _no_duplicates(tickers, "market ticker")
    return tickers


def _sid(sid: object) -> None:
    # bool is an int subclass; True would silently become sid 1.
    if type(sid) is not int or sid < 1:
        raise ValueError(f"a sid is an integer >= 1, got {sid!r}")


def _flag(value: object, name: str) -> None:
    if type(value) is not bool:
        raise ValueError(f"{name} must be True or False, got {value!r}")


def _no_duplicates(values: list, what: str) -> None:
    seen: set[object] = set()
    for value in values:
        if value in seen:
            raise ValueError(f"{what} {value!r} is listed twice")
        seen.add(value)
