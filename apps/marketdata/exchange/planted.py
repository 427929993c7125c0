"""The planted lead-lag world served live: two markets whose makers quote around the fair values
of :class:`.planted_world.PlantedWorld`, so the real path (exchange -> recorder ->
tables -> loader -> env -> training -> evaluation) can be shown to learn a known edge.

Between the planted jumps the books behave like the synthetic source's (makers add and cancel
near the top, takers lift the top level); the fair value no longer drifts at random. When a
market's fair value jumps, every quote on the wrong side of the new one is pulled at once and a
fresh best level is added at the new quote, as real makers would requote.
"""

from __future__ import annotations

import time

from apps.marketdata.kalshi.units import PRICE_SCALE

from .markets import Market
from .planted_world import PlantedConfig, PlantedWorld
from .sources import SyntheticConfig, SyntheticSource, _MarketState
from .venue import Venue


class PlantedSource(SyntheticSource):
    """``PlantedConfig.tickers`` (leader, follower) on the ``linear_cent`` grid, whole contracts."""

    def __init__(
        self, planted: PlantedConfig, *, rate: float = 200.0, max_messages: int | None = None
    ) -> None:
        super().__init__(
            SyntheticConfig(
                markets=2,
                rate=rate,
                seed=planted.seed,
                max_messages=max_messages,
                series_ticker=planted.series_ticker,
                event_suffix=planted.event_suffix,
            )
        )
        self.planted = planted
        self.world = PlantedWorld(planted)
        self._started: float | None = None
        self.requotes = 0

    def elapsed_s(self) -> float:
        """Seconds of the planted clock: it starts with the first event served."""
        if self._started is None:
            self._started = time.monotonic()
        return time.monotonic() - self._started

    def _new_market(self, index: int) -> _MarketState:
        cfg = self.planted
        event = f"{cfg.series_ticker}-{cfg.event_suffix}"
        market = Market(
            ticker=cfg.tickers[index],
            event_ticker=event,
            series_ticker=cfg.series_ticker,
            price_level_structure="linear_cent",
            fractional=False,
            title=("Planted leader" if index == 0 else "Planted follower (lags the leader)"),
        )
        state = _MarketState(market, cfg.start_cents * 100, cfg.half_spread_cents)
        for side in ("yes", "no"):
            price = self._anchor(state, side)
            levels = market.side(side)
            for _ in range(self.config.initial_levels):
                if price <= 0:
                    break
                levels[price] = self._size(market)
                price = market.steps_down(price, 1)
        return state

    def _drift(self, state: _MarketState) -> None:
        """The fair value moves only when the planted process says so."""

    def _requote(self, venue: Venue, state: _MarketState) -> int:
        emitted = 0
        market = state.market
        for side in ("yes", "no"):
            anchor = self._anchor(state, side)
            levels = market.side(side)
            for price in [p for p in levels if p > anchor]:
                venue.apply_delta(market.ticker, side, price, -levels[price])
                emitted += 1
        # A full ladder at the new quote, not one level: a jump pulls the whole old ladder of
        # one side, and a one-level side would be emptied by the next taker.
        for side in ("yes", "no"):
            price = self._anchor(state, side)
            other = market.best_no() if side == "yes" else market.best_yes()
            levels = market.side(side)
            for _ in range(self.config.initial_levels):
                if price <= 0:
                    break
                if price + other < PRICE_SCALE and price not in levels:
                    venue.apply_delta(market.ticker, side, price, self._size(market))
                    emitted += 1
                price = market.steps_down(price, 1)
        self.requotes += 1
        return emitted

    def step(self, venue: Venue, *, budget: int) -> int:
        fair = self.world.fair_cents(self.elapsed_s())[0].tolist()
        emitted = 0
        for state, cents in zip(self._states, fair, strict=True):
            if cents * 100 != state.fair_e4:
                state.fair_e4 = cents * 100
                emitted += self._requote(venue, state)
        if emitted:
            return emitted
        return super().step(venue, budget=budget)
