"""Top-K bid ladders as arrays: the layout the env stores, the kernel walks and the features read.

Kalshi publishes bids only (kalshi-protocol.md §4): a NO bid at q is a YES ask at $1 − q. A
ladder is the best ``BOOK_LEVELS`` bids of one side, best first, prices in $0.0001 and sizes in
0.01 contract, empty slots (price 0, size 0) after the real levels. The live
:class:`~apps.marketdata.kalshi.book.OrderBook` and :class:`ArrayBook` both satisfy
:class:`BookView`
(``depth(side, n)``: the best ``n`` bids of a side as (price_e4, size_e2)), so a live book and a
recorded one are read the same way. Which ladder an order walks, and at what price, is the
kernel's rule (:mod:`apps.simulation.kernel`).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from apps.simulation.layout import BOOK_LEVELS, PRICE_SCALE

__all__ = [
    "BOOK_LEVELS",
    "ArrayBook",
    "BookArrayError",
    "BookView",
    "Level",
    "book_to_arrays",
    "validate_book_arrays",
]

Level = tuple[int, int]  # (price_e4, size_e2)


class BookView(Protocol):
    """What a fill needs from a book: the best ``n`` bids of one side, best first."""

    def depth(self, side: str, n: int) -> list[Level]: ...


class BookArrayError(ValueError):
    """Book arrays that do not describe a valid bid ladder."""


def validate_book_arrays(
    yes_px: np.ndarray, yes_sz: np.ndarray, no_px: np.ndarray, no_sz: np.ndarray
) -> None:
    """Check top-K ladders (any leading shape, last axis = levels, best first).

    A ladder is a prefix of real levels (size > 0, prices strictly descending within
    [0, 10_000]) followed by empty slots (size 0, price 0).

    Args:
        yes_px, no_px: bid prices in $0.0001.
        yes_sz, no_sz: bid sizes in 0.01 contract.

    Raises:
        BookArrayError: naming the first rule broken.
    """
    for name, px, sz in (("yes", yes_px, yes_sz), ("no", no_px, no_sz)):
        px = np.asarray(px)
        sz = np.asarray(sz)
        if px.shape != sz.shape or px.ndim < 1:
            raise BookArrayError(f"{name}: price shape {px.shape} != size shape {sz.shape}")
        if not (np.issubdtype(px.dtype, np.integer) and np.issubdtype(sz.dtype, np.integer)):
            raise BookArrayError(f"{name}: prices and sizes must be integer arrays")
        if (sz < 0).any():
            raise BookArrayError(f"{name}: negative size")
        if ((px < 0) | (px > PRICE_SCALE)).any():
            raise BookArrayError(f"{name}: price outside [0, {PRICE_SCALE}]")
        filled = sz > 0
        # Real levels must form a prefix: once a slot is empty, every later slot is empty.
        if (filled[..., 1:] & ~filled[..., :-1]).any():
            raise BookArrayError(f"{name}: a level follows an empty slot")
        if (px[~filled] != 0).any():
            raise BookArrayError(f"{name}: an empty slot carries a price")
        both = filled[..., 1:]
        if (both & (px[..., 1:] >= px[..., :-1])).any():
            raise BookArrayError(f"{name}: prices are not strictly descending (best first)")


def book_to_arrays(book: BookView, k: int = BOOK_LEVELS) -> tuple[np.ndarray, ...]:
    """The best ``k`` levels of each side as four int64 arrays (yes_px, yes_sz, no_px, no_sz).

    Empty slots are (price 0, size 0). Prices in $0.0001, sizes in 0.01 contract.
    """
    out = []
    for side in ("yes", "no"):
        px = np.zeros(k, dtype=np.int64)
        sz = np.zeros(k, dtype=np.int64)
        for i, (price_e4, size_e2) in enumerate(book.depth(side, k)):
            px[i] = price_e4
            sz[i] = size_e2
        out += [px, sz]
    return tuple(out)


class ArrayBook:
    """A :class:`BookView` over top-K bid arrays (best first, empty slots have size 0).

    Holds references, not copies: the env can point it at rows of its history arrays.
    """

    __slots__ = ("no_px", "no_sz", "yes_px", "yes_sz")

    def __init__(
        self,
        yes_px: np.ndarray,
        yes_sz: np.ndarray,
        no_px: np.ndarray,
        no_sz: np.ndarray,
        *,
        validate: bool = True,
    ) -> None:
        """Args:
        yes_px, no_px: (K,) bid prices in $0.0001, best first.
        yes_sz, no_sz: (K,) bid sizes in 0.01 contract; 0 marks an empty slot.
        validate: check the ladder rules (skip only for arrays validated at load time).
        """
        if validate:
            validate_book_arrays(yes_px, yes_sz, no_px, no_sz)
        self.yes_px = yes_px
        self.yes_sz = yes_sz
        self.no_px = no_px
        self.no_sz = no_sz

    @classmethod
    def from_book(cls, book: BookView, k: int = BOOK_LEVELS) -> ArrayBook:
        """Copy the best ``k`` levels of any book view (e.g. an OrderBook)."""
        return cls(*book_to_arrays(book, k), validate=False)

    def depth(self, side: str, n: int) -> list[Level]:
        """The best ``n`` bids of ``side`` as (price_e4, size_e2), best first."""
        if side == "yes":
            px, sz = self.yes_px, self.yes_sz
        elif side == "no":
            px, sz = self.no_px, self.no_sz
        else:
            raise ValueError(f"side {side!r} is not 'yes' or 'no'")
        levels = []
        for price_e4, size_e2 in zip(px[:n].tolist(), sz[:n].tolist(), strict=True):
            if size_e2 <= 0:
                break
            levels.append((price_e4, size_e2))
        return levels
