"""The oracle's actions: masks and turning an action into a fill, in readable Python.

Readable reference for ``apps.simulation.kernel`` (tests only). The action table (ids, types,
sizes) is the product's :mod:`apps.simulation.actions`.

Each market has 30 actions: 6 types × 5 sizes, ``action_id = type × 5 + size_index``.

=====  ==========  ==========================================================================
type   name        effect (``size`` = ``sizes_e2[size_index]``, default 1, 5, 10, 25, 50 contracts)
=====  ==========  ==========================================================================
0      HOLD        nothing; ids 0–4 are all the same hold, and always allowed
1      BUY_YES     market order buying ``size`` YES (takes NO bids at 1 − q)
2      SELL_YES    market order selling ``size`` of the YES held (hits YES bids)
3      BUY_NO      market order buying ``size`` NO (takes YES bids at 1 − q)
4      SELL_NO     market order selling ``size`` of the NO held (hits NO bids)
5      FLATTEN     sell everything held in the market; ids 25–29 all do the same, size ignored
=====  ==========  ==========================================================================

A position is YES or NO contracts (Kalshi nets the two), so BUY_NO while holding YES reduces
the YES position, exactly as on the exchange.

**Masks.** ``action_mask()`` allows an action exactly when :func:`execute` would carry it out.
It evaluates the very fill the action would get now, through the same code:

* a market whose book is untrusted (recording gap or resync, until the next snapshot) or that
  is closed allows only HOLD;
* SELL_YES / SELL_NO need at least ``size`` of that contract held (we never short; a fraction
  left over from a partial fill is closed with FLATTEN); FLATTEN needs a position;
* the walked side must show liquidity (the fill is > 0). A thin book gives a **partial** fill:
  that is allowed, it is what a market order does;
* the fill, partial or not, must break no rule of :meth:`Portfolio.check_fill`: cash stays
  ≥ 0 after cost and fee, position, concentration and exposure limits hold. We do **not**
  shrink an order to fit a limit: an order that would break one is masked, and the smaller
  sizes remain (size 1 is the finest control).

HOLD is always allowed, so a mask always has at least one True.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from apps.simulation.actions import (
    ACTIONS_PER_MARKET,
    DEFAULT_SIZES_E2,
    N_SIZES,
    ActionType,
    decode,
)
from apps.simulation.books import BOOK_LEVELS, BookView, Level
from apps.simulation.fees import STANDARD_FEES, FeeSchedule
from tests.simulation.oracle.fills import (
    Contract,
    Fill,
    Side,
    fill_from_levels,
    taking_levels,
)
from tests.simulation.oracle.portfolio import LimitBreach, MarketPosition, Portfolio

_TYPES = tuple(ActionType)

_ORDERS = {
    ActionType.BUY_YES: (Contract.YES, Side.BUY),
    ActionType.SELL_YES: (Contract.YES, Side.SELL),
    ActionType.BUY_NO: (Contract.NO, Side.BUY),
    ActionType.SELL_NO: (Contract.NO, Side.SELL),
}


class Refusal(StrEnum):
    """Why an action is not carried out (limit breaches use :class:`LimitBreach` values)."""

    HOLD = "hold"  # not a refusal: nothing to do
    UNTRUSTED = "untrusted"  # book unknown after a gap/resync
    CLOSED = "closed"  # market closed or settled
    NOT_HELD = "not_held"  # selling more than is held
    NO_POSITION = "no_position"  # flatten with nothing held
    NO_LIQUIDITY = "no_liquidity"  # nothing to take on the walked side


@dataclass(frozen=True, slots=True)
class Order:
    """A taker order: which contract, buy or sell, how much (0.01 contract)."""

    contract: Contract
    side: Side
    size_e2: int


def order_for(action_type: ActionType, size_e2: int, position: MarketPosition) -> Order | None:
    """The order an action places given the market's position; None for HOLD and for a
    FLATTEN with nothing held.

    Args:
        action_type: the decoded type.
        size_e2: the decoded size in 0.01 contract (ignored by HOLD and FLATTEN).
        position: the market's current holdings.
    """
    if action_type is ActionType.HOLD:
        return None
    if action_type is ActionType.FLATTEN:
        # After netting only one side is held; close it.
        if position.yes_e2:
            return Order(Contract.YES, Side.SELL, position.yes_e2)
        if position.no_e2:
            return Order(Contract.NO, Side.SELL, position.no_e2)
        return None
    contract, side = _ORDERS[action_type]
    return Order(contract, side, size_e2)


@dataclass(frozen=True, slots=True)
class Decision:
    """What an action does now: the order, its fill and, when refused, why.

    Attributes:
        action_id: 0..29.
        action_type: the decoded type.
        size_e2: decoded size in 0.01 contract (0 for HOLD and FLATTEN).
        order: the order placed, None for HOLD or when refused before pricing.
        fill: the fill the order gets (present also when a limit refuses it, for logging).
        refusal: None when the action is carried out; else the reason (``Refusal.HOLD`` for
            a hold, which is allowed but trades nothing).
    """

    action_id: int
    action_type: ActionType
    size_e2: int
    order: Order | None
    fill: Fill | None
    refusal: Refusal | LimitBreach | None

    @property
    def allowed(self) -> bool:
        """True when the action may be taken (HOLD included)."""
        return self.refusal is None or self.refusal is Refusal.HOLD

    @property
    def trades(self) -> bool:
        """True when carrying it out changes the portfolio (an allowed, non-HOLD action)."""
        return self.refusal is None


class _Market:
    """One market's context for evaluating actions; caches the walked levels per direction."""

    __slots__ = (
        "book",
        "exposure_e6",
        "fees",
        "levels",
        "market",
        "max_levels",
        "portfolio",
        "position",
        "precision_e4",
    )

    def __init__(
        self,
        *,
        book: BookView,
        portfolio: Portfolio,
        market: str,
        fees: FeeSchedule,
        max_levels: int,
        precision_e4: int = 100,
    ) -> None:
        self.book = book
        self.precision_e4 = precision_e4
        self.portfolio = portfolio
        self.market = market
        self.fees = fees
        self.max_levels = max_levels
        self.position = portfolio.position(market)
        self.exposure_e6 = portfolio.exposure_e6()
        self.levels: dict[tuple[Contract, Side], list[Level]] = {}

    def decide(
        self, action_id: int, sizes_e2: Sequence[int], *, trusted: bool, is_open: bool
    ) -> Decision:
        action_type, size_e2 = decode(action_id, sizes_e2)
        order: Order | None = None
        fill: Fill | None = None
        refusal: Refusal | LimitBreach | None = None
        position = self.position
        if action_type is ActionType.HOLD:
            refusal = Refusal.HOLD
        elif not trusted:
            refusal = Refusal.UNTRUSTED
        elif not is_open or position.settled:
            refusal = Refusal.CLOSED
        else:
            order = order_for(action_type, size_e2, position)
            if order is None:
                refusal = Refusal.NO_POSITION
            elif order.side is Side.SELL and order.size_e2 > (
                position.yes_e2 if order.contract is Contract.YES else position.no_e2
            ):
                refusal = Refusal.NOT_HELD
            else:
                key = (order.contract, order.side)
                levels = self.levels.get(key)
                if levels is None:
                    levels = taking_levels(self.book, order.contract, order.side, self.max_levels)
                    self.levels[key] = levels
                if not levels:
                    refusal = Refusal.NO_LIQUIDITY
                else:
                    fill = fill_from_levels(
                        levels,
                        contract=order.contract,
                        side=order.side,
                        size_e2=order.size_e2,
                        fees=self.fees,
                        precision_e4=self.precision_e4,
                    )
                    breaches = self.portfolio.check_fill_given(position, fill, self.exposure_e6)
                    if breaches:
                        refusal = breaches[0]
        return Decision(action_id, action_type, size_e2, order, fill, refusal)


def decide(
    action_id: int,
    *,
    book: BookView,
    portfolio: Portfolio,
    market: str,
    trusted: bool = True,
    is_open: bool = True,
    sizes_e2: Sequence[int] = DEFAULT_SIZES_E2,
    fees: FeeSchedule = STANDARD_FEES,
    max_levels: int = BOOK_LEVELS,
    precision_e4: int = 100,
) -> Decision:
    """Evaluate one action against the book and portfolio as they stand (nothing changes).

    Args:
        action_id: 0..29.
        book: the market's book (OrderBook, ArrayBook, any BookView).
        portfolio: the account.
        market: the market ticker (the portfolio's key).
        trusted: False while the book is unknown after a gap/resync.
        is_open: False once the market is closed (or settled).
        sizes_e2: the five order sizes in 0.01 contract.
        fees: the market's fee schedule.
        max_levels: bid levels visible per side (the env stores ``BOOK_LEVELS``).
        precision_e4: the account precision in $0.0001 (100 = $0.01, 1 = $0.0001).
    """
    ctx = _Market(
        book=book,
        portfolio=portfolio,
        market=market,
        fees=fees,
        max_levels=max_levels,
        precision_e4=precision_e4,
    )
    return ctx.decide(action_id, sizes_e2, trusted=trusted, is_open=is_open)


def execute(
    action_id: int,
    *,
    book: BookView,
    portfolio: Portfolio,
    market: str,
    trusted: bool = True,
    is_open: bool = True,
    sizes_e2: Sequence[int] = DEFAULT_SIZES_E2,
    fees: FeeSchedule = STANDARD_FEES,
    max_levels: int = BOOK_LEVELS,
    precision_e4: int = 100,
) -> Decision:
    """Carry out one action: :func:`decide`, then apply its fill to ``portfolio`` if allowed.

    A refused action changes nothing (the env and the paper trader treat it as HOLD and log
    the refusal). Arguments as for :func:`decide`.
    """
    decision = decide(
        action_id,
        book=book,
        portfolio=portfolio,
        market=market,
        trusted=trusted,
        is_open=is_open,
        sizes_e2=sizes_e2,
        fees=fees,
        max_levels=max_levels,
        precision_e4=precision_e4,
    )
    if decision.trades:
        assert decision.fill is not None
        # decide() checked every limit against this exact portfolio state just now.
        portfolio.apply_checked_fill(market, decision.fill)
    return decision


def action_mask(
    *,
    book: BookView,
    portfolio: Portfolio,
    market: str,
    trusted: bool = True,
    is_open: bool = True,
    sizes_e2: Sequence[int] = DEFAULT_SIZES_E2,
    fees: FeeSchedule = STANDARD_FEES,
    max_levels: int = BOOK_LEVELS,
    precision_e4: int = 100,
) -> np.ndarray:
    """(30,) bool: True where :func:`execute` would carry the action out (HOLD always True).

    Arguments as for :func:`decide`.
    """
    mask = np.zeros(ACTIONS_PER_MARKET, dtype=bool)
    mask[:N_SIZES] = True  # HOLD
    if not trusted or not is_open:
        return mask
    ctx = _Market(
        book=book,
        portfolio=portfolio,
        market=market,
        fees=fees,
        max_levels=max_levels,
        precision_e4=precision_e4,
    )

    def allowed(action_id: int) -> bool:
        return ctx.decide(action_id, sizes_e2, trusted=True, is_open=True).allowed

    # Every size of every order is evaluated: with per-fill rounding an order's debit is not
    # monotone in its size (the net rounding fee, under a cent, can drop as the order grows).
    for action_id in range(N_SIZES, int(ActionType.FLATTEN) * N_SIZES):
        mask[action_id] = allowed(action_id)
    # FLATTEN ignores the size: evaluate once, copy to its five ids.
    flatten = int(ActionType.FLATTEN) * N_SIZES
    mask[flatten:] = allowed(flatten)
    return mask
