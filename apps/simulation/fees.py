"""Kalshi trading fees, as Kalshi charges them in 2026 (kalshi-protocol.md §8).

The settings (a series' fees, changing at effective times) and the exact integer arithmetic of
one fill's trade fee. The compiled kernel (:mod:`apps.simulation.kernel`, ``_decide``) applies
them per fill; this module describes and builds what it reads.

**Trade fee of one fill** (``C`` contracts at ``P`` dollars, ``m`` the series'
``fee_multiplier``), rounded **up to $0.0001**:

* ``quadratic``: takers pay ``0.07 × m × C × P × (1 − P)``, makers nothing;
* ``quadratic_with_maker_fees``: takers as above, makers ``0.0175 × C × P × (1 − P)`` (``m``
  scales the maker rate only with ``maker_uses_multiplier``: unverified on Kalshi, §8);
* ``flat``: ``m × F × C`` where ``F`` (dollars per contract) is the series' entry of the fixed
  table in Kalshi's fee-schedule PDF, which nothing fetches: set it as
  :attr:`FeeSchedule.flat_fee_per_contract` in the configuration (a ``flat`` schedule without
  it is refused). Makers pay the same on a flat series only if ``flat_makers_pay`` is set;
* ``none``: no fee (experiments).

**Balance change of one fill**: ``revenue − trade fee`` (revenue ``−C × P`` for a buyer,
``+C × P`` for a seller), floored toward −∞ to the account's precision ($0.01 by default,
$0.0001 for direct members: ``EnvConfig.account_precision_e4``, from the
``RL_ACCOUNT_PRECISION_E4`` setting); what the floor took is the fill's **rounding fee**.

**Per order**, an accumulator sums the rounding fees of the order's fills (taker and maker
alike); each time it reaches $0.01 a whole cent is refunded and the accumulator drops by
$0.01. Kalshi's page says "exceeds"; we refund at exactly $0.01 too, so an order's total debit
is never below its fills' cost plus trade fees and always less than a cent above it (with
"exceeds", an order whose rounding fees sum to exactly $0.01 would keep that cent). What is
left in the accumulator when the order ends is the order's (net) rounding fee, in
[0, $0.01). Every order the simulator places is an immediate-or-cancel taker order, so an
order's fills are the levels it takes in one step: one fill per price level (the book shows
levels, not the resting orders Kalshi fills one by one, so a level that several makers make up
is charged as one fill; Kalshi's page example of three one-lot fills at one price is checked on
the oracle).

The accounts keep the two parts apart: trade fees in $0.0001 (``fees_paid_e4``, always whole
$0.0001) and net rounding fees in $0.000001 (``rounding_fees_e6``: ``C × P`` has up to six
decimals with 0.01-contract sizes and sub-cent prices). Cash moves by both.

**Units**: prices in $0.0001 (``price_e4``), sizes in 0.01 contract (``size_e2``), so

    trade_fee_e4 = ceil(rate × size_e2 × price_e4 × (10⁴ − price_e4) / 10⁶)      (quadratic)
    trade_fee_e4 = ceil(m × F × size_e2 × 10⁸ / 10⁶)                              (flat)

with every rate an exact fraction; the kernel reads one row ``(kind, numerator,
denominator)`` per fee setting (:meth:`FeeSchedule.kernel_row`) and computes the same ceiling.

**Changes**: a market's fees are a :class:`FeeTimeline`, the schedule in force from the start
plus :class:`FeeChange` entries (``effective_ns``, schedule) as ``/series/fee_changes`` lists
them; :class:`FeeIndex` turns the markets' timelines into the kernel's table of rows and, per
tick, each market's row (the env: every tick of its history; the paper trader: the time of each
decision), so a change in the middle of an episode applies from its first tick at or after
``effective_ns``.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from fractions import Fraction

import numpy as np

from apps.simulation.layout import FEE_COLUMNS, FEE_FLAT, FEE_QUADRATIC, PRICE_SCALE

TAKER_RATE = Fraction(7, 100)
MAKER_RATE = Fraction(175, 10_000)
_ZERO = Fraction(0)

# trade_fee_e4 = rate × size_e2 × price_e4 × (10⁴ − price_e4) / FEE_TERM_DIVISOR
# (size_e2 / 100 contracts × price_e4 / 10⁴ × (10⁴ − price_e4) / 10⁴ dollars × 10⁴ e4 a dollar).
FEE_TERM_DIVISOR = 1_000_000
# A flat fee's term: size_e2 × FLAT_TERM (size_e2 / 100 contracts × 10⁴ e4 a dollar × 10⁶).
FLAT_TERM = 100_000_000
CENT_E6 = 10_000  # $0.01 in $0.000001
ACCOUNT_PRECISIONS_E4 = (1, 100)  # $0.0001 (direct members) or $0.01 (everyone else)


class FeeType(StrEnum):
    """A series' ``fee_type`` (Kalshi's three values) and ``none`` for fee-free experiments."""

    QUADRATIC = "quadratic"  # takers pay, makers free
    QUADRATIC_WITH_MAKER_FEES = "quadratic_with_maker_fees"  # both pay
    FLAT = "flat"  # a fixed fee per contract from Kalshi's fee-schedule table
    NONE = "none"  # no trading fee (for experiments and fee-free series)


def as_fraction(value: Fraction | int | str | Decimal | float) -> Fraction:
    """An exact rate or multiplier. A float is read through its shortest decimal form, so
    ``0.35`` means 35/100, not the binary double nearest to it."""
    if isinstance(value, float):
        return Fraction(repr(value))
    return Fraction(value)


def fee_term(price_e4: int, size_e2: int) -> int:
    """``size_e2 × price_e4 × (10_000 − price_e4)``: one fill's quadratic term, before the rate.

    Args:
        price_e4: fill price in $0.0001 (0..10_000).
        size_e2: filled size in 0.01 contract (≥ 0).
    """
    return size_e2 * price_e4 * (PRICE_SCALE - price_e4)


def exact_fee_e4(fills: Iterable[tuple[int, int]], rate: Fraction) -> Fraction:
    """The unrounded quadratic fee of some fills, in $0.0001 (for tests and reports).

    Args:
        fills: (price_e4, size_e2) pairs.
        rate: the fee rate in dollars per contract-P(1−P), e.g. ``TAKER_RATE × m``.
    """
    total = sum(fee_term(price_e4, size_e2) for price_e4, size_e2 in fills)
    return rate * total / FEE_TERM_DIVISOR


def ceil_fee_e4(numerator: int, denominator: int, term: int) -> int:
    """``ceil(numerator × term / (denominator × 10⁶))``: a trade fee in $0.0001 from a kernel
    row's rate and a fill's term (:func:`fee_term`, or ``size_e2 × FLAT_TERM``)."""
    if term <= 0 or numerator <= 0:
        return 0
    return -(-(numerator * term) // (denominator * FEE_TERM_DIVISOR))


@dataclass(frozen=True, slots=True)
class FeeSchedule:
    """A series' fee settings.

    Attributes:
        fee_type: ``quadratic``, ``quadratic_with_maker_fees``, ``flat`` or ``none``.
        multiplier: the series ``fee_multiplier`` ``m`` (1 normally, 0.5 on index series,
            0 = no fee). Converted to an exact :class:`~fractions.Fraction`.
        maker_uses_multiplier: also scale the maker rate by ``m`` (unverified on Kalshi, off by
            default).
        flat_fee_per_contract: ``flat`` only: dollars per contract, the series' entry of the
            table in Kalshi's fee-schedule PDF (configuration; required for ``flat``).
        flat_makers_pay: ``flat`` only: makers pay the flat fee too (off by default).
    """

    fee_type: FeeType = FeeType.QUADRATIC
    multiplier: Fraction = field(default=Fraction(1))
    maker_uses_multiplier: bool = False
    flat_fee_per_contract: Fraction | None = None
    flat_makers_pay: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "fee_type", FeeType(self.fee_type))
        multiplier = as_fraction(self.multiplier)
        if multiplier < 0:
            raise ValueError(f"fee multiplier must be ≥ 0, got {multiplier}")
        object.__setattr__(self, "multiplier", multiplier)
        flat = self.flat_fee_per_contract
        if self.fee_type is FeeType.FLAT:
            if flat is None:
                raise ValueError("a flat fee schedule needs flat_fee_per_contract (dollars)")
            flat = as_fraction(flat)
            if flat < 0:
                raise ValueError(f"flat_fee_per_contract must be ≥ 0, got {flat}")
            object.__setattr__(self, "flat_fee_per_contract", flat)

    @property
    def taker_rate(self) -> Fraction:
        """Dollars per contract × P(1−P) charged to a taker (0 on ``flat`` and ``none``)."""
        if self.fee_type is FeeType.NONE or self.fee_type is FeeType.FLAT:
            return _ZERO
        if self.multiplier == 1:
            return TAKER_RATE
        return TAKER_RATE * self.multiplier

    @property
    def maker_rate(self) -> Fraction:
        """Dollars per contract × P(1−P) charged to a maker (0 unless the series charges makers)."""
        if self.fee_type is not FeeType.QUADRATIC_WITH_MAKER_FEES:
            return _ZERO
        return MAKER_RATE * (self.multiplier if self.maker_uses_multiplier else 1)

    def kernel_row(self, *, maker: bool = False) -> tuple[int, int, int]:
        """``(kind, numerator, denominator)``: the kernel's fee row (``layout.FEE_*`` kind).

        ``FEE_QUADRATIC``: the fee term is :func:`fee_term`; ``FEE_FLAT``: ``size_e2 ×
        FLAT_TERM``; the trade fee is :func:`ceil_fee_e4` of the row and the term.
        """
        if self.fee_type is FeeType.FLAT:
            pays = not maker or self.flat_makers_pay
            assert self.flat_fee_per_contract is not None  # checked in __post_init__
            rate = self.flat_fee_per_contract * self.multiplier if pays else _ZERO
            return FEE_FLAT, rate.numerator, rate.denominator
        rate = self.maker_rate if maker else self.taker_rate
        return FEE_QUADRATIC, rate.numerator, rate.denominator

    def trade_fee_e4(self, price_e4: int, size_e2: int, *, maker: bool = False) -> int:
        """One fill's trade fee in $0.0001, rounded up (the kernel's per-fill arithmetic).

        Args:
            price_e4: the fill's price in $0.0001.
            size_e2: the fill's size in 0.01 contract.
            maker: the order rested and was hit (maker) rather than took liquidity.
        """
        kind, num, den = self.kernel_row(maker=maker)
        term = size_e2 * FLAT_TERM if kind == FEE_FLAT else fee_term(price_e4, size_e2)
        return ceil_fee_e4(num, den, term)


STANDARD_FEES = FeeSchedule()
NO_FEES = FeeSchedule(fee_type=FeeType.NONE)


@dataclass(frozen=True, slots=True)
class FeeChange:
    """A fee setting that takes effect at ``effective_ns`` (Unix ns), as
    ``/series/fee_changes`` schedules it and ``event_fee_update`` announces it."""

    effective_ns: int
    schedule: FeeSchedule


@dataclass(frozen=True)
class FeeTimeline:
    """One market's fees over time: ``initial`` until the first change, then each change from
    its ``effective_ns`` on (changes are sorted; a later one at the same time wins)."""

    initial: FeeSchedule = STANDARD_FEES
    changes: Sequence[FeeChange] = ()

    def __post_init__(self) -> None:
        ordered = tuple(sorted(self.changes, key=lambda c: c.effective_ns))
        object.__setattr__(self, "changes", ordered)

    @property
    def schedules(self) -> tuple[FeeSchedule, ...]:
        return (self.initial, *(c.schedule for c in self.changes))

    def index_at(self, time_ns: int) -> int:
        """Which of :attr:`schedules` is in force at ``time_ns`` (0 = ``initial``)."""
        return bisect.bisect_right([c.effective_ns for c in self.changes], time_ns)

    def at(self, time_ns: int) -> FeeSchedule:
        """The schedule in force at ``time_ns``."""
        return self.schedules[self.index_at(time_ns)]


class FeeIndex:
    """Each market's fee timeline as the kernel reads it: one table of fee rows
    (``layout.FEE_*`` columns, taker rows: the simulator's orders take) shared by all markets,
    and per market the effective times at which its row changes.

    :meth:`ids` is the env's per-tick ``fee_ids`` array; :meth:`write_ids` is the paper
    trader's one row for the time of its decision.
    """

    def __init__(self, timelines: Sequence[FeeTimeline]) -> None:
        rows: dict[tuple[int, int, int], int] = {}
        self.effective_ns: list[np.ndarray] = []
        self.row_ids: list[np.ndarray] = []
        for timeline in timelines:
            ids = []
            for schedule in timeline.schedules:
                row = schedule.kernel_row(maker=False)
                ids.append(rows.setdefault(row, len(rows)))
            self.effective_ns.append(
                np.array([c.effective_ns for c in timeline.changes], dtype=np.int64)
            )
            self.row_ids.append(np.array(ids, dtype=np.int32))
        self.table = np.array(list(rows) or [(0, 0, 1)], dtype=np.int64).reshape(-1, FEE_COLUMNS)

    def ids(self, times_ns: np.ndarray) -> np.ndarray:
        """(len(times_ns), n_markets) int32: each market's fee row at each tick (a change
        applies from the first tick at or after its effective time)."""
        out = np.empty((len(times_ns), len(self.row_ids)), dtype=np.int32)
        for j, (when, ids) in enumerate(zip(self.effective_ns, self.row_ids, strict=True)):
            out[:, j] = ids[np.searchsorted(when, times_ns, side="right")]
        return out

    def write_ids(self, time_ns: int, out: np.ndarray) -> None:
        """Each market's fee row at ``time_ns`` into ``out`` (n_markets,)."""
        for j, (when, ids) in enumerate(zip(self.effective_ns, self.row_ids, strict=True)):
            out[j] = ids[int(np.searchsorted(when, time_ns, side="right"))]


def check_account_precision(precision_e4: int) -> int:
    """The account precision in $0.0001: 100 ($0.01, ordinary members) or 1 ($0.0001, direct
    members); anything else is refused."""
    if precision_e4 not in ACCOUNT_PRECISIONS_E4:
        raise ValueError(
            f"account precision must be 100 ($0.01) or 1 ($0.0001) in $0.0001, got {precision_e4}"
        )
    return precision_e4


def taker_fee_e4(price_e4: int, size_e2: int, *, multiplier: Fraction | int | str = 1) -> int:
    """One taker fill's trade fee on a ``quadratic`` series, in $0.0001 (rounded up).

    Args:
        price_e4: price in $0.0001.
        size_e2: size in 0.01 contract.
        multiplier: the series fee multiplier ``m``.
    """
    return FeeSchedule(multiplier=as_fraction(multiplier)).trade_fee_e4(price_e4, size_e2)


def maker_fee_e4(price_e4: int, size_e2: int) -> int:
    """One maker fill's trade fee on a ``quadratic_with_maker_fees`` series, in $0.0001.

    Args:
        price_e4: price in $0.0001.
        size_e2: size in 0.01 contract.
    """
    return FeeSchedule(fee_type=FeeType.QUADRATIC_WITH_MAKER_FEES).trade_fee_e4(
        price_e4, size_e2, maker=True
    )
