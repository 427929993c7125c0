"""The one place where Kalshi's wire units become the product's fixed-point units.

Everywhere in the product:

* a **price** is an integer number of $0.0001 (``price_e4``): 10_000 = $1.00, 1 = $0.0001;
* a **size** is an integer number of 0.01 contract (``size_e2``): 100 = one contract;
* a **time** is an aware UTC ``datetime`` (stored as ``timestamptz``), from the protocol's
  Unix milliseconds (:func:`utc_from_ms`) or a local ``time.time_ns()`` (:func:`utc_from_ns`).

Kalshi sends prices as dollar strings with up to 4 decimals (``"0.0650"``, ``"0.960"``) and
sizes as strings with 2 decimals (``"2.95"``, ``"-139.00"``); the legacy formats send integer
cents and integer contracts. Floats are never used for either.

Bounds (every value outside them raises :class:`UnitError`, never a bare ``ValueError``):

* a price or size string has at most :data:`MAX_NUMBER_CHARS` characters, checked before any
  digit is converted (``int()`` of a 4,300-digit string raises its own ``ValueError``, and
  converting a long one costs quadratic time);
* a size is at most :data:`MAX_SIZE_E2` in absolute value (the int64 ``size_e2`` columns),
  whether it came as a fixed-point string or as legacy integer contracts.
"""

from __future__ import annotations

from datetime import UTC, datetime

PRICE_SCALE = 10_000  # price_e4 units per dollar
SIZE_SCALE = 100  # size_e2 units per contract
CENT_E4 = 100  # one cent in price_e4 units
MAX_PRICE_E4 = PRICE_SCALE
MAX_SIZE_E2 = 2**63 - 1  # sizes are stored in bigint columns
# "-92233720368547758.07" is 21 characters; a few more leave room for leading zeros and "+".
MAX_NUMBER_CHARS = 32

# Parsed strings repeat constantly (a market has few distinct price levels), so a small
# bounded cache turns most conversions into one dict lookup.
_CACHE_LIMIT = 65_536
_price_cache: dict[str, int] = {}
_size_cache: dict[str, int] = {}
_signed_size_cache: dict[str, int] = {}


class UnitError(ValueError):
    """A price or size string that is not an exact decimal in the allowed range.

    ``code`` names the kind of problem in a few words (a bounded set: it keys the recorder's
    counters of malformed frames).
    """

    def __init__(self, message: str, *, code: str = "bad_number") -> None:
        super().__init__(message)
        self.code = code


def _show(text: str) -> str:
    """The value for an error message: repr of the first characters and the full length."""
    if len(text) <= MAX_NUMBER_CHARS:
        return repr(text)
    return f"{text[:MAX_NUMBER_CHARS]!r}... ({len(text)} characters)"


def _digits(text: str) -> bool:
    # str.isdigit() alone accepts non-ASCII digits such as '²' and int() accepts '1_0';
    # both would be silent coercions, so only plain ASCII digits pass.
    return text.isascii() and text.isdigit()


def _show_int(value: object) -> str:
    # msgspec decodes integers of up to ~4,300 digits: never put one of those in a message
    # (and repr() of a longer one would raise ValueError itself).
    if type(value) is int and not -(10**MAX_NUMBER_CHARS) < value < 10**MAX_NUMBER_CHARS:
        return f"{'-' if value < 0 else ''}<an integer of {value.bit_length()} bits>"
    return repr(value)


def _fixed(text: str, places: int, *, signed: bool, what: str) -> int:
    if len(text) > MAX_NUMBER_CHARS:
        raise UnitError(
            f"{what} {_show(text)} is longer than {MAX_NUMBER_CHARS} characters",
            code="number_too_long",
        )
    body = text
    negative = False
    if signed and body[:1] in ("-", "+"):
        negative = body[0] == "-"
        body = body[1:]
    whole, dot, frac = body.partition(".")
    if not _digits(whole) or (dot and not _digits(frac)):
        raise UnitError(f"{what} {_show(text)} is not a plain decimal number")
    if len(frac) > places:
        raise UnitError(f"{what} {_show(text)} has more than {places} decimals")
    value = int(whole) * 10**places + (int(frac) * 10 ** (places - len(frac)) if frac else 0)
    if value > MAX_SIZE_E2:
        raise UnitError(f"{what} {_show(text)} is too large", code="number_out_of_range")
    return -value if negative else value


def dollars_to_e4(text: str) -> int:
    """``"0.0650"`` -> 650. Prices must lie in [0, 1] dollars and have at most 4 decimals."""
    if type(text) is not str:
        raise UnitError(f"price must be a string, got {type(text).__name__}")
    cached = _price_cache.get(text)
    if cached is not None:
        return cached
    value = _fixed(text, 4, signed=False, what="price")
    if value > MAX_PRICE_E4:
        raise UnitError(f"price {_show(text)} is above $1.00", code="number_out_of_range")
    if len(_price_cache) < _CACHE_LIMIT:
        _price_cache[text] = value
    return value


def count_to_e2(text: str, *, signed: bool = False) -> int:
    """``"2.95"`` -> 295; with ``signed=True`` also ``"-139.00"`` -> -13900."""
    if type(text) is not str:
        raise UnitError(f"size must be a string, got {type(text).__name__}")
    cache = _signed_size_cache if signed else _size_cache
    cached = cache.get(text)
    if cached is not None:
        return cached
    value = _fixed(text, 2, signed=signed, what="size")
    if len(cache) < _CACHE_LIMIT:
        cache[text] = value
    return value


_MAX_CONTRACTS = MAX_SIZE_E2 // SIZE_SCALE


def cents_to_e4(cents: int) -> int:
    """Legacy integer cents (1..99, 0 and 100 tolerated) -> price_e4."""
    if type(cents) is not int or not 0 <= cents <= 100:
        raise UnitError(
            f"legacy price {_show_int(cents)} is not an integer number of cents in [0, 100]"
        )
    return cents * CENT_E4


def contracts_to_e2(contracts: int, *, signed: bool = False) -> int:
    """Legacy integer contracts -> size_e2 (at most :data:`MAX_SIZE_E2` in absolute value)."""
    if type(contracts) is not int or (not signed and contracts < 0):
        raise UnitError(f"legacy size {_show_int(contracts)} is not a valid integer contract count")
    if not -_MAX_CONTRACTS <= contracts <= _MAX_CONTRACTS:
        raise UnitError(
            f"legacy size {_show_int(contracts)} is too large", code="number_out_of_range"
        )
    return contracts * SIZE_SCALE


def e4_to_dollars(price_e4: int) -> str:
    """650 -> ``"0.0650"`` (always 4 decimals, the current wire format)."""
    if price_e4 < 0:
        raise UnitError(f"negative price {price_e4}")
    return f"{price_e4 // PRICE_SCALE}.{price_e4 % PRICE_SCALE:04d}"


def e2_to_count(size_e2: int) -> str:
    """-13900 -> ``"-139.00"`` (always 2 decimals, the current wire format)."""
    sign = "-" if size_e2 < 0 else ""
    size = abs(size_e2)
    return f"{sign}{size // SIZE_SCALE}.{size % SIZE_SCALE:02d}"


def complement_e4(price_e4: int) -> int:
    """A NO bid at q is a YES ask at $1 - q (and vice versa)."""
    return PRICE_SCALE - price_e4


def e4_to_float(price_e4: int) -> float:
    """For display and features only; never store the result."""
    return price_e4 / PRICE_SCALE


def e2_to_float(size_e2: int) -> float:
    """For display and features only; never store the result."""
    return size_e2 / SIZE_SCALE


def utc_from_ms(epoch_ms: int | None) -> datetime | None:
    """Unix milliseconds (the protocol's ``*_ts_ms``) -> aware UTC datetime; None stays None."""
    if epoch_ms is None:
        return None
    return datetime.fromtimestamp(epoch_ms / 1000, UTC)


def utc_from_ns(epoch_ns: int) -> datetime:
    """Unix nanoseconds (``time.time_ns()``) -> aware UTC datetime, truncated to microseconds
    (integer arithmetic: no float rounding)."""
    seconds, ns = divmod(epoch_ns, 1_000_000_000)
    return datetime.fromtimestamp(seconds, UTC).replace(microsecond=ns // 1000)
