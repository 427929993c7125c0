"""Wire units <-> fixed-point units (price_e4, size_e2): exact round trips and strict rejects."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apps.marketdata.kalshi import units
from apps.marketdata.kalshi.units import UnitError

prices_e4 = st.integers(min_value=0, max_value=units.PRICE_SCALE)
sizes_e2 = st.integers(min_value=-(10**12), max_value=10**12)


@settings(max_examples=500, deadline=None)
@given(prices_e4)
def test_every_price_survives_a_round_trip_through_the_wire_string(price_e4: int) -> None:
    text = units.e4_to_dollars(price_e4)
    assert units.dollars_to_e4(text) == price_e4
    assert len(text.split(".")[1]) == 4


@settings(max_examples=500, deadline=None)
@given(sizes_e2)
def test_every_signed_size_survives_a_round_trip_through_the_wire_string(size_e2: int) -> None:
    text = units.e2_to_count(size_e2)
    assert units.count_to_e2(text, signed=True) == size_e2
    assert len(text.split(".")[1]) == 2


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=10**12))
def test_unsigned_sizes_round_trip_and_agree_with_signed_parsing(size_e2: int) -> None:
    text = units.e2_to_count(size_e2)
    assert units.count_to_e2(text) == size_e2 == units.count_to_e2(text, signed=True)


@settings(max_examples=300, deadline=None)
@given(prices_e4, st.integers(min_value=1, max_value=4))
def test_a_price_with_fewer_decimals_means_the_same_amount(price_e4: int, places: int) -> None:
    # "0.960" and "0.9600" are the same price: the parser must not assume a digit count.
    step = 10 ** (4 - places)
    price_e4 -= price_e4 % step
    text = f"{price_e4 // 10_000}.{price_e4 % 10_000 // step:0{places}d}"
    assert units.dollars_to_e4(text) == price_e4


def test_it_reads_the_protocol_examples() -> None:
    assert units.dollars_to_e4("0.0650") == 650
    assert units.dollars_to_e4("0.960") == 9600
    assert units.dollars_to_e4("1.0000") == 10_000
    assert units.dollars_to_e4("0") == 0
    assert units.count_to_e2("2.95") == 295
    assert units.count_to_e2("1210036.64") == 121003664
    assert units.count_to_e2("-139.00", signed=True) == -13900
    assert units.cents_to_e4(42) == 4200
    assert units.contracts_to_e2(300) == 30000
    assert units.contracts_to_e2(-5, signed=True) == -500


@pytest.mark.parametrize(
    "text",
    [
        "1_0",
        "²",
        "+0.5",
        "-0.5",
        "0.12345",
        "1.0001",
        "1.5",
        "",
        ".5",
        "1.",
        " 0.5",
        "1e-2",
        "NaN",
        "0x1",
        "٠.٥",
    ],
)
def test_it_rejects_prices_that_are_not_plain_decimals_in_range(text: str) -> None:
    for _ in range(2):  # the second call would hit the cache if a reject were ever cached
        with pytest.raises(UnitError):
            units.dollars_to_e4(text)


@pytest.mark.parametrize("text", ["0.123", "-1", "1_000.00", "²", "1e3", "", "-", "1.2.3", "١"])
def test_it_rejects_unsigned_sizes_that_are_negative_or_too_precise(text: str) -> None:
    with pytest.raises(UnitError):
        units.count_to_e2(text)


@pytest.mark.parametrize("text", ["-0.001", "--1.00", "-", "+-1", "1.234"])
def test_it_rejects_signed_sizes_with_more_than_two_decimals_or_bad_signs(text: str) -> None:
    with pytest.raises(UnitError):
        units.count_to_e2(text, signed=True)


@pytest.mark.parametrize("value", [0.5, 1, None, b"0.5", True])
def test_it_rejects_prices_and_sizes_that_are_not_strings(value: object) -> None:
    with pytest.raises(UnitError, match="must be a string"):
        units.dollars_to_e4(value)  # type: ignore[arg-type]
    with pytest.raises(UnitError, match="must be a string"):
        units.count_to_e2(value)  # type: ignore[arg-type]


@pytest.mark.parametrize("cents", [-1, 101, True, 5.0, "5"])
def test_it_rejects_legacy_cents_outside_0_to_100_or_not_ints(cents: object) -> None:
    with pytest.raises(UnitError):
        units.cents_to_e4(cents)  # type: ignore[arg-type]


def test_it_rejects_negative_legacy_contracts_unless_signed() -> None:
    with pytest.raises(UnitError):
        units.contracts_to_e2(-1)
    with pytest.raises(UnitError):
        units.contracts_to_e2(True)  # type: ignore[arg-type]
    assert units.contracts_to_e2(-1, signed=True) == -100


def test_the_complement_turns_a_no_bid_into_a_yes_ask() -> None:
    assert units.complement_e4(6900) == 3100
    assert units.complement_e4(units.complement_e4(1234)) == 1234


# -- explicit bounds: nothing reaches int() unbounded, nothing beyond int64 comes out ---------


@pytest.mark.parametrize(
    "text",
    [
        "1" * 4300 + ".00",  # int() would raise its own ValueError (4,300-digit limit)
        "1" * 5000,
        "0." + "0" * 4400,
        "0" * 40 + "1.00",  # harmless value, but longer than any real wire number
    ],
)
def test_a_number_string_longer_than_the_bound_is_a_unit_error_not_a_crash(text: str) -> None:
    for convert in (
        units.dollars_to_e4,
        units.count_to_e2,
        lambda t: units.count_to_e2("-" + t, signed=True),
    ):
        with pytest.raises(UnitError, match="longer than 32 characters") as caught:
            convert(text)
        assert caught.value.code == "number_too_long"
        assert len(str(caught.value)) < 200  # the message quotes the start, not 4,300 digits


def test_the_longest_accepted_number_string_still_converts() -> None:
    text = "0" * (units.MAX_NUMBER_CHARS - 5) + "12.34"
    assert len(text) == units.MAX_NUMBER_CHARS
    assert units.count_to_e2(text) == 1234


def test_sizes_are_bounded_to_the_int64_columns_whatever_the_wire_format() -> None:
    biggest = units.MAX_SIZE_E2
    assert units.count_to_e2(units.e2_to_count(biggest)) == biggest
    assert units.count_to_e2(units.e2_to_count(-biggest), signed=True) == -biggest
    with pytest.raises(UnitError, match="too large") as caught:
        units.count_to_e2(units.e2_to_count(biggest + 1))
    assert caught.value.code == "number_out_of_range"
    assert units.contracts_to_e2(biggest // 100) == biggest // 100 * 100
    for contracts in (biggest // 100 + 1, -(10**4000)):
        with pytest.raises(UnitError, match="too large"):
            units.contracts_to_e2(contracts, signed=True)
    # msgspec decodes integers of ~4,000 digits; the message must not try to print them.
    with pytest.raises(UnitError, match="bits"):
        units.contracts_to_e2(10**4200)
    with pytest.raises(UnitError, match="bits"):
        units.cents_to_e4(-(10**4200))
