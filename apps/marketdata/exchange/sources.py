"""Where the local exchange's book events come from.

A source describes its markets once (``prepare``) and then drives the venue (``run``) by
calling ``venue.apply_delta`` / ``apply_trade`` / ``set_book``. The venue turns each
event into frames for every subscriber, with per-sid seq numbers, so a source never deals with
connections. Sources check ``await venue.gate()`` before each batch so ``pause()`` takes
effect between batches, never inside one.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass

import numpy as np

from apps.marketdata.kalshi.units import PRICE_SCALE

from . import frames
from .errors import ConfigError
from .markets import FeeChange, Market, Series
from .venue import Venue


class MarketDataSource:
    """Base class: subclasses implement both methods."""

    async def prepare(self) -> list[Market]:
        """The markets, with their initial books, before the exchange starts serving."""
        raise NotImplementedError

    async def run(self, venue: Venue) -> None:
        """Emit events into ``venue`` until done (or forever); cancelled on shutdown."""
        raise NotImplementedError

    def describe_series(self) -> tuple[list[Series], list[FeeChange]]:
        """The series (fee settings) and scheduled fee changes; a market whose series is not
        listed gets a default one (``quadratic``, multiplier 1)."""
        return [], []


@dataclass(frozen=True)
class SyntheticConfig:
    """A seeded random market-maker world.

    - ``markets``: number of markets, tickers ``<series>-<event_suffix>-M00`` ...
      Market i uses ``linear_cent`` with whole contracts (i % 3 == 0), ``deci_cent`` ($0.001)
      with fractional sizes (i % 3 == 1) or ``tapered_deci_cent`` with fractional sizes and a
      price near an edge so both its $0.001 and $0.01 regions are used (i % 3 == 2).
    - ``rate``: book messages per second across all markets (a delta counts one, a trade two:
      its book delta plus the trade print); 0 = static books.
    - ``seed``: the numpy Generator seed; the same seed gives the same event sequence.
    - ``max_messages``: stop after exactly this many messages (None = never).
    - ``initial_levels`` / ``max_levels``: levels per side at start / at most.
    - Series and fees (kalshi-protocol.md §8): market i belongs to series ``i % 3`` of
      :data:`SYNTHETIC_SERIES`: ``<series_ticker>`` (``quadratic``, multiplier 1),
      ``<series_ticker>MK`` (``quadratic_with_maker_fees``, 1) and ``<series_ticker>INX`` (an
      index series: ``quadratic``, 0.5); one event per series, ``<series>-<event_suffix>``.
      Markets opened an hour before ``prepare()``; their close time is the end of the event
      day, except for the ones that resolve.
    - ``resolve_after_s``: None = nothing happens to markets. Otherwise, that many seconds
      after ``run()`` starts, the first ``resolve_markets`` markets close early
      (``close_date_updated``, book emptied) and are ``determined`` (results alternate yes,
      no; a scalar value for an index-series market), then ``settled`` after
      ``settle_after_s``; at the same moment market ``resolve_markets`` (when there is one)
      is ``deactivated`` and, ``settle_after_s`` later, ``activated`` again; the index series'
      fee multiplier changes to 0.25 (``event_fee_update``; also listed in advance by
      ``GET /series/fee_changes``); a ``linear_cent`` market that does not resolve moves to
      ``deci_cent`` (``price_level_structure_updated``); and a new market is listed in a new
      event (``event_lifecycle``, ``created``). Those markets' close times (REST and
      ``created``) are ``resolve_after_s`` after ``prepare()``.
    """

    markets: int = 8
    rate: float = 200.0
    seed: int = 0
    max_messages: int | None = None
    series_ticker: str = "KXSYN"
    event_suffix: str = "26DEC31"
    initial_levels: int = 10
    max_levels: int = 30
    resolve_after_s: float | None = None
    resolve_markets: int = 1
    settle_after_s: float = 1.0

    def __post_init__(self) -> None:
        if self.resolve_after_s is not None and (
            not isinstance(self.resolve_after_s, int | float)
            or not math.isfinite(self.resolve_after_s)
            or self.resolve_after_s < 0
        ):
            raise ConfigError(f"resolve_after_s must be >= 0 seconds, got {self.resolve_after_s!r}")
        if type(self.resolve_markets) is not int or not 0 <= self.resolve_markets <= self.markets:
            raise ConfigError("resolve_markets must be an integer in 0..markets")
        if not isinstance(self.settle_after_s, int | float) or not self.settle_after_s >= 0:
            raise ConfigError(f"settle_after_s must be >= 0 seconds, got {self.settle_after_s!r}")
        if type(self.markets) is not int or not 1 <= self.markets <= 10_000:
            raise ConfigError(f"markets must be an integer in 1..10000, got {self.markets!r}")
        if not isinstance(self.rate, int | float) or not math.isfinite(self.rate) or self.rate < 0:
            raise ConfigError(f"rate must be a finite number of messages/s >= 0, got {self.rate!r}")
        if self.max_messages is not None and (
            type(self.max_messages) is not int or self.max_messages < 0
        ):
            raise ConfigError(f"max_messages must be an integer >= 0, got {self.max_messages!r}")
        if not 1 <= self.initial_levels <= self.max_levels:
            raise ConfigError("need 1 <= initial_levels <= max_levels")


_STRUCTURES = ("linear_cent", "deci_cent", "tapered_deci_cent")
# (suffix, fee_type, fee_multiplier): one series of each kind (kalshi-protocol.md §8).
SYNTHETIC_SERIES = (
    ("", "quadratic", "1"),
    ("MK", "quadratic_with_maker_fees", "1"),
    ("INX", "quadratic", "0.5"),
)
_INDEX_FEE_AFTER = "0.25"  # the index series' multiplier after its scheduled change
_P_DRIFT = 0.03
_P_TRADE = 0.08
_P_CANCEL = 0.40


class _Uniforms:
    """Uniform [0, 1) floats drawn from a seeded Generator in blocks.

    One Generator call per event would cost more than the event itself; a block of 8192 drawn
    at once and read from a Python list keeps the stream deterministic and cheap.
    """

    def __init__(self, rng: np.random.Generator, block: int = 8192) -> None:
        self._rng = rng
        self._block = block
        self._values: list[float] = []
        self._index = 0

    def __call__(self) -> float:
        if self._index >= len(self._values):
            self._values = self._rng.random(self._block).tolist()
            self._index = 0
        value = self._values[self._index]
        self._index += 1
        return value


@dataclass(eq=False)
class _MarketState:
    market: Market
    fair_e4: int  # the YES value the makers quote around; it random-walks
    half_spread_ticks: int


class SyntheticSource(MarketDataSource):
    """Random but plausible books: makers add and cancel near the top, takers lift the top
    level, the fair value drifts. The book is never crossed (best yes + best no < $1)."""

    def __init__(self, config: SyntheticConfig | None = None) -> None:
        self.config = config or SyntheticConfig()
        self._u = _Uniforms(np.random.default_rng(self.config.seed))
        self._states: list[_MarketState] = []
        self.messages_emitted = 0
        self.series: list[Series] = [
            Series(f"{self.config.series_ticker}{suffix}", fee_type, multiplier)
            for suffix, fee_type, multiplier in SYNTHETIC_SERIES
        ]
        self._prepared_at = time.time()
        self.fee_changes: list[FeeChange] = []

    # ---- set-up ---------------------------------------------------------------------------

    async def prepare(self) -> list[Market]:
        if not self._states:
            self._prepared_at = time.time()
            self._states = [self._new_market(i) for i in range(self.config.markets)]
            if self.config.resolve_after_s is not None:
                index = self.series[2]
                self.fee_changes.append(
                    FeeChange(
                        f"{index.ticker}-FEE-1",
                        index.ticker,
                        index.fee_type,
                        _INDEX_FEE_AFTER,
                        frames.rfc3339_s(int(self._prepared_at + self.config.resolve_after_s)),
                    )
                )
        return [s.market for s in self._states]

    def _new_market(self, index: int) -> _MarketState:
        cfg, u = self.config, self._u
        width = max(2, len(str(cfg.markets - 1)))
        series = self.series[index % len(self.series)]
        event = f"{series.ticker}-{cfg.event_suffix}"
        structure = _STRUCTURES[index % 3]
        resolves = cfg.resolve_after_s is not None and index < cfg.resolve_markets
        close_s = (
            int(self._prepared_at + cfg.resolve_after_s)  # type: ignore[operator]
            if resolves
            else int(self._prepared_at) + 30 * 86_400
        )
        market = Market(
            ticker=f"{event}-M{index:0{width}d}",
            event_ticker=event,
            series_ticker=series.ticker,
            price_level_structure=structure,
            fractional=structure != "linear_cent",
            title=f"Synthetic market {index}",
            open_time=frames.rfc3339_s(int(self._prepared_at) - 3600),
            close_time=frames.rfc3339_s(close_s),
        )
        if structure == "tapered_deci_cent":
            # Straddle the $0.10 (or $0.90) boundary so both tick sizes show up.
            fair = 600 + int(u() * 800)
            if index % 2:
                fair = PRICE_SCALE - fair
        else:
            fair = 2_000 + int(u() * 6_000)
        state = _MarketState(market, fair, 1 + int(u() * 3))
        for side in ("yes", "no"):
            price = self._anchor(state, side)
            levels = market.side(side)
            for _ in range(cfg.initial_levels):
                if price <= 0:
                    break
                levels[price] = self._size(market)
                price = market.steps_down(price, 1 + int(u() * 2))
        return state

    def describe_series(self) -> tuple[list[Series], list[FeeChange]]:
        return list(self.series), list(self.fee_changes)

    # ---- the random process ---------------------------------------------------------------

    def _anchor(self, state: _MarketState, side: str) -> int:
        """Where makers of ``side`` quote their best bid now."""
        m = state.market
        value = state.fair_e4 if side == "yes" else PRICE_SCALE - state.fair_e4
        return m.steps_down(value, state.half_spread_ticks)

    def _size(self, market: Market) -> int:
        u = self._u
        if market.fractional:
            return 1 + int(u() * u() * 20_000)  # 0.01 .. 200.00 contracts, mostly small
        return 100 * (1 + int(u() * u() * 200))

    def _part(self, market: Market, size_e2: int) -> int:
        """A random part (1 .. size) of a level, whole contracts where the market requires."""
        step = market.min_size_e2()
        units = size_e2 // step
        if units <= 1:
            return size_e2
        return step * (1 + int(self._u() * (units - 1)))

    def _drift(self, state: _MarketState) -> None:
        m, u = state.market, self._u
        steps = 1 + int(u() * 3)
        if u() < 0.5:
            fair = m.steps_down(state.fair_e4, steps)
        else:
            fair = PRICE_SCALE - m.steps_down(PRICE_SCALE - state.fair_e4, steps)
        state.fair_e4 = min(max(fair, 300), PRICE_SCALE - 300)

    def _add(self, venue: Venue, state: _MarketState) -> int:
        m, u = state.market, self._u
        side = "yes" if u() < 0.5 else "no"
        levels = m.side(side)
        if len(levels) >= self.config.max_levels:
            worst = min(levels)
            venue.apply_delta(m.ticker, side, worst, -levels[worst])
            return 1
        other_best = m.best_no() if side == "yes" else m.best_yes()
        # The highest price that leaves the book uncrossed: p + other_best < $1.
        cap = PRICE_SCALE - other_best - 1
        price = m.steps_down(min(self._anchor(state, side), cap), int(u() * u() * 6))
        if price <= 0:
            return 0
        venue.apply_delta(m.ticker, side, price, self._size(m))
        return 1

    def _cancel(self, venue: Venue, state: _MarketState) -> int:
        m, u = state.market, self._u
        side = "yes" if u() < 0.5 else "no"
        if not m.side(side):
            side = "no" if side == "yes" else "yes"
        levels = m.side(side)
        if not levels:
            return 0
        best = max(levels)
        if best > self._anchor(state, side):
            # The fair value moved away: the stale best quote is pulled entirely.
            venue.apply_delta(m.ticker, side, best, -levels[best])
            return 1
        prices = sorted(levels, reverse=True)
        price = prices[int(u() * u() * len(prices))]
        size = levels[price]
        amount = size if u() < 0.5 else self._part(m, size)
        venue.apply_delta(m.ticker, side, price, -amount)
        return 1

    def _trade(self, venue: Venue, state: _MarketState) -> int:
        m, u = state.market, self._u
        taker_side = "yes" if u() < 0.5 else "no"
        # Buying YES lifts the best NO bid (a YES ask); buying NO hits the best YES bid.
        book_side = "no" if taker_side == "yes" else "yes"
        levels = m.side(book_side)
        if not levels:
            return 0
        best = max(levels)
        size = levels[best]
        count = size if u() < 0.35 else self._part(m, size)
        yes_price = PRICE_SCALE - best if taker_side == "yes" else best
        venue.apply_delta(m.ticker, book_side, best, -count)
        venue.apply_trade(m.ticker, yes_price_e4=yes_price, count_e2=count, taker_side=taker_side)
        return 2

    def step(self, venue: Venue, *, budget: int) -> int:
        """One random event; returns the messages it emitted (0 .. min(2, budget))."""
        u = self._u
        state = self._states[int(u() * len(self._states))]
        if state.market.status != "active":
            return 0  # closed, resolved or paused: nothing trades there
        r = u()
        if r < _P_DRIFT:
            self._drift(state)
        emitted = 0
        if r < _P_TRADE and budget >= 2:
            emitted = self._trade(venue, state)
        elif r < _P_TRADE + _P_CANCEL:
            emitted = self._cancel(venue, state)
        if not emitted:
            emitted = self._add(venue, state) or self._cancel(venue, state)
        return emitted

    # ---- pacing ---------------------------------------------------------------------------

    async def run(self, venue: Venue) -> None:
        if self.config.resolve_after_s is None:
            await self._run_books(venue)
            return
        script = asyncio.ensure_future(self._lifecycle(venue))
        try:
            await self._run_books(venue)
            await script
        finally:
            script.cancel()

    async def _lifecycle(self, venue: Venue) -> None:
        """The market lives and deaths of ``SyntheticConfig.resolve_after_s``."""
        cfg = self.config
        assert cfg.resolve_after_s is not None
        await asyncio.sleep(max(0.0, self._prepared_at + cfg.resolve_after_s - time.time()))
        await venue.gate()
        resolving = [s.market for s in self._states[: cfg.resolve_markets]]
        for number, market in enumerate(resolving):
            venue.close_market(market.ticker)
            if market.series_ticker == self.series[2].ticker:
                venue.determine(market.ticker, "scalar", 4_250)
            else:
                result = "yes" if number % 2 == 0 else "no"
                venue.determine(market.ticker, result, PRICE_SCALE if result == "yes" else 0)
        paused = None
        if cfg.resolve_markets < cfg.markets:
            paused = self._states[cfg.resolve_markets].market
        if paused is not None:
            venue.set_active(paused.ticker, False)
        index = self.series[2]
        venue.change_fees(index.ticker, index.fee_type, _INDEX_FEE_AFTER)
        for state in self._states[cfg.resolve_markets :]:
            if state.market.price_level_structure == "linear_cent":
                venue.set_price_level_structure(state.market.ticker, "deci_cent")
                break
        newcomer = Market(
            ticker=f"{self.series[0].ticker}-{cfg.event_suffix}NEW-M00",
            event_ticker=f"{self.series[0].ticker}-{cfg.event_suffix}NEW",
            series_ticker=self.series[0].ticker,
            title="Synthetic market listed during the run",
            open_time=frames.rfc3339_s(int(time.time())),
            close_time=frames.rfc3339_s(int(time.time()) + 86_400),
        )
        venue.create_market(newcomer, new_event=True)
        await asyncio.sleep(cfg.settle_after_s)
        await venue.gate()
        for market in resolving:
            venue.settle(market.ticker)
        if paused is not None:
            venue.set_active(paused.ticker, True)

    async def _run_books(self, venue: Venue) -> None:
        cfg = self.config
        if cfg.rate <= 0:
            return
        loop = asyncio.get_running_loop()
        limit = cfg.max_messages
        # Never more than a quarter second of messages in one synchronous batch, so writers
        # and command handling get the loop regularly even at very high rates.
        max_batch = max(1, int(cfg.rate / 4))
        base_time, base_count = loop.time(), self.messages_emitted
        while limit is None or self.messages_emitted < limit:
            if await venue.gate():
                base_time, base_count = loop.time(), self.messages_emitted
            due = int((loop.time() - base_time) * cfg.rate) - (self.messages_emitted - base_count)
            if due > max_batch:
                # Behind (slow machine or long GC): rebase instead of bursting to catch up.
                base_time, base_count = loop.time(), self.messages_emitted
                due = max_batch
            target = self.messages_emitted + due
            if limit is not None:
                target = min(target, limit)
            stuck = 0
            while self.messages_emitted < target and stuck < 100:
                emitted = self.step(venue, budget=target - self.messages_emitted)
                self.messages_emitted += emitted
                stuck = 0 if emitted else stuck + 1
            next_due = base_time + (self.messages_emitted - base_count + 1) / cfg.rate
            # At least 2 ms: above ~500 msgs/s messages go out in batches per loop tick.
            await asyncio.sleep(max(0.002, next_due - loop.time()))
