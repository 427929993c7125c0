"""The per-market action space: ids, types and sizes (the rules that carry an action out are
the compiled :mod:`apps.simulation.kernel`).

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

**Masks** (``kernel.action_masks``) allow an action exactly when ``kernel.execute_all`` would
carry it out, by evaluating the very fill the action would get now:

* a market whose book is untrusted (recording gap or resync, until the next snapshot) or that
  is closed allows only HOLD;
* SELL_YES / SELL_NO need at least ``size`` of that contract held (we never short; a fraction
  left over from a partial fill is closed with FLATTEN); FLATTEN needs a position;
* the walked side must show liquidity (the fill is > 0). A thin book gives a **partial** fill:
  that is allowed, it is what a market order does;
* the fill, partial or not, must break no risk rule: cash stays ≥ 0 after cost and fee;
  position, concentration and exposure limits hold (a limit only blocks an order that makes
  its own measure worse). We do **not** shrink an order to fit a limit: an order that would
  break one is masked, and the smaller sizes remain (size 1 is the finest control).

HOLD is always allowed, so a mask always has at least one True. A refused action is a hold
whose reason is logged (``layout.REFUSALS``).
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import IntEnum

from apps.simulation.layout import ACTIONS_PER_MARKET, N_SIZES, SIZE_SCALE

__all__ = [
    "ACTIONS_PER_MARKET",
    "DEFAULT_SIZES_CONTRACTS",
    "DEFAULT_SIZES_E2",
    "N_ACTION_TYPES",
    "N_SIZES",
    "ActionType",
    "decode",
    "encode",
    "sizes_e2_from_contracts",
]


class ActionType(IntEnum):
    HOLD = 0
    BUY_YES = 1
    SELL_YES = 2
    BUY_NO = 3
    SELL_NO = 4
    FLATTEN = 5


N_ACTION_TYPES = len(ActionType)
_TYPES = tuple(ActionType)
DEFAULT_SIZES_CONTRACTS: tuple[int, ...] = (1, 5, 10, 25, 50)
DEFAULT_SIZES_E2: tuple[int, ...] = tuple(c * SIZE_SCALE for c in DEFAULT_SIZES_CONTRACTS)


def sizes_e2_from_contracts(contracts: Sequence[int]) -> tuple[int, ...]:
    """Five order sizes in whole contracts -> size_e2 (0.01 contract)."""
    sizes = tuple(int(c) * SIZE_SCALE for c in contracts)
    if len(sizes) != N_SIZES or any(s <= 0 for s in sizes):
        raise ValueError(f"need {N_SIZES} positive sizes, got {list(contracts)}")
    return sizes


def encode(action_type: ActionType | int, size_index: int = 0) -> int:
    """The action id of (type, size index)."""
    if not 0 <= size_index < N_SIZES:
        raise ValueError(f"size index {size_index} is outside 0..{N_SIZES - 1}")
    return int(ActionType(action_type)) * N_SIZES + size_index


def decode(action_id: int, sizes_e2: Sequence[int] = DEFAULT_SIZES_E2) -> tuple[ActionType, int]:
    """``action_id`` (0..29) -> (type, size in 0.01 contract).

    HOLD and FLATTEN return size 0: HOLD trades nothing and FLATTEN sells whatever is held.
    """
    action_id = int(action_id)
    if not 0 <= action_id < ACTIONS_PER_MARKET:
        raise ValueError(f"action id {action_id} is outside 0..{ACTIONS_PER_MARKET - 1}")
    action_type = _TYPES[action_id // N_SIZES]
    if action_type is ActionType.HOLD or action_type is ActionType.FLATTEN:
        return action_type, 0
    return action_type, int(sizes_e2[action_id % N_SIZES])
