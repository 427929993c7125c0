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
from dataclasses import dataclass

import numpy as np

from apps.marketdata.kalshi.units import PRICE_SCALE

from .errors import ConfigError
from .markets import Market
from .venue import Venue


class MarketDataSource:
    """Base class: subclasses implement both methods."""

    async def prepare(self) -> list[Market]:
        """The markets, with their initial books, before the exchange starts serving."""
        raise NotImplementedError

    async def run(self, venue: Venue) -> None:
        """Emit events into ``venue`` until done (or forever); cancelled on shutdown."""
        raise NotImplementedError


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
    """

    markets: int = 8
    rate: float = 200.0
    seed: int = 0
    max_messages: int | None = None
    series_ticker: str = "KXSYN"
    event_suffix: str = "26DEC31"
    initial_levels: int = 10
    max_levels: int = 30

    def __post_init__(self) -> None:
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

    # ---- set-up ---------------------------------------------------------------------------

    async def prepare(self) -> list[Market]:
        if not self._states:
            self._states = [self._new_market(i) for i in range(self.config.markets)]
        return [s.market for s in self._states]

    def _new_market(self, index: int) -> _MarketState:
        cfg, u = self.config, self._u
        width = max(2, len(str(cfg.markets - 1)))
        event = f"{cfg.series_ticker}-{cfg.event_suffix}"
        structure = _STRUCTURES[index % 3]
        market = Market(
            ticker=f"{event}-M{index:0{width}d}",
            event_ticker=event,
            series_ticker=cfg.series_ticker,
            price_level_structure=structure,
            fractional=structure != "linear_cent",
            title=f"Synthetic market {index}",
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
