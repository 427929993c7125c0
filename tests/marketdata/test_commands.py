"""Client commands: exact §3 shapes, per-connection ids, clear argument errors."""

from __future__ import annotations

import json

import pytest

from apps.marketdata.kalshi.commands import Command, CommandBuilder


def test_subscribe_matches_the_protocol_example_byte_for_byte() -> None:
    command = CommandBuilder().subscribe(["orderbook_delta"], ["KXFEDDECISION-26SEP-H0"])
    assert command == Command(
        1,
        '{"id":1,"cmd":"subscribe","params":{"channels":["orderbook_delta"],'
        '"market_tickers":["KXFEDDECISION-26SEP-H0"]}}',
    )


def test_unsubscribe_matches_the_protocol_example() -> None:
    command = CommandBuilder(first_id=124).unsubscribe([1, 2])
    assert command.text == '{"id":124,"cmd":"unsubscribe","params":{"sids":[1,2]}}'


def test_update_subscription_matches_the_protocol_example() -> None:
    command = CommandBuilder(first_id=125).update_subscription(
        sid=1, action="add_markets", market_tickers=["NEW-MKT"]
    )
    assert command.text == (
        '{"id":125,"cmd":"update_subscription","params":{"sid":1,"market_tickers":["NEW-MKT"],'
        '"action":"add_markets"}}'
    )


@pytest.mark.parametrize("action", ["add_markets", "delete_markets", "get_snapshot"])
def test_update_subscription_accepts_the_three_actions(action: str) -> None:
    command = CommandBuilder().update_subscription(sid=4, action=action, market_tickers=["A-1"])
    assert json.loads(command.text)["params"] == {
        "sid": 4,
        "market_tickers": ["A-1"],
        "action": action,
    }


def test_list_subscriptions_matches_the_protocol_example() -> None:
    command = CommandBuilder(first_id=3).list_subscriptions()
    assert command.text == '{"id":3,"cmd":"list_subscriptions"}'


def test_ids_start_at_1_and_rise_by_one_per_command() -> None:
    builder = CommandBuilder()
    ids = [
        builder.subscribe(["trade"]).id,
        builder.list_subscriptions().id,
        builder.unsubscribe([1]).id,
        builder.update_subscription(sid=1, action="get_snapshot", market_tickers=["A-1"]).id,
    ]
    assert ids == [1, 2, 3, 4]
    assert builder.next_id == 5


def test_a_command_unpacks_as_id_and_json_text_for_a_text_frame() -> None:
    command_id, text = CommandBuilder().subscribe(["ticker"])
    assert command_id == 1
    assert isinstance(text, str)
    assert json.loads(text) == {"id": 1, "cmd": "subscribe", "params": {"channels": ["ticker"]}}


def test_subscribe_always_sends_the_market_tickers_array_even_for_one_market() -> None:
    params = json.loads(CommandBuilder().subscribe(["orderbook_delta"], ["A-1"]).text)["params"]
    assert params["market_tickers"] == ["A-1"]
    assert "market_ticker" not in params


def test_subscribe_sends_use_yes_price_explicitly_when_given() -> None:
    for flag in (False, True):
        command = CommandBuilder().subscribe(
            ["orderbook_delta"], ["KXFEDDECISION-26SEP-H0"], use_yes_price=flag
        )
        assert json.loads(command.text)["params"] == {
            "channels": ["orderbook_delta"],
            "market_tickers": ["KXFEDDECISION-26SEP-H0"],
            "use_yes_price": flag,
        }


def test_subscribe_sends_send_initial_snapshot_for_the_ticker_channel() -> None:
    command = CommandBuilder().subscribe(["ticker", "trade"], ["A-1"], send_initial_snapshot=True)
    assert json.loads(command.text)["params"] == {
        "channels": ["ticker", "trade"],
        "market_tickers": ["A-1"],
        "send_initial_snapshot": True,
    }


def test_tickers_with_dots_are_accepted() -> None:
    command = CommandBuilder().subscribe(["orderbook_delta"], ["FED-23DEC-T3.00"])
    assert json.loads(command.text)["params"]["market_tickers"] == ["FED-23DEC-T3.00"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"channels": []}, "at least one channel"),
        ({"channels": "orderbook_delta", "market_tickers": ["A-1"]}, "list of strings"),
        ({"channels": ["orderbook_deltas"], "market_tickers": ["A-1"]}, "unknown channel"),
        ({"channels": ["ticker_v2"]}, "unknown channel"),
        ({"channels": ["trade", "trade"]}, "listed twice"),
        ({"channels": [""]}, "non-empty strings"),
        ({"channels": ["orderbook_delta"]}, "needs market_tickers"),
        ({"channels": ["orderbook_delta"], "market_tickers": []}, "market_tickers is empty"),
        ({"channels": ["orderbook_delta"], "market_tickers": "A-1"}, "list of strings"),
        ({"channels": ["orderbook_delta"], "market_tickers": ["a-1"]}, "A-Z, 0-9"),
        ({"channels": ["orderbook_delta"], "market_tickers": ["A 1"]}, "A-Z, 0-9"),
        ({"channels": ["orderbook_delta"], "market_tickers": ["A-1", "A-1"]}, "listed twice"),
        ({"channels": ["orderbook_delta"], "market_tickers": [None]}, "non-empty strings"),
        (
            {"channels": ["orderbook_delta"], "market_tickers": ["A-1"], "use_yes_price": 1},
            "True or False",
        ),
        ({"channels": ["ticker"], "use_yes_price": True}, "only to the orderbook_delta"),
        (
            {
                "channels": ["orderbook_delta"],
                "market_tickers": ["A"],
                "send_initial_snapshot": True,
            },
            "only to the ticker",
        ),
    ],
)
def test_subscribe_rejects_bad_arguments_with_a_clear_message(kwargs: dict, message: str) -> None:
    builder = CommandBuilder()
    with pytest.raises(ValueError, match=message):
        builder.subscribe(**kwargs)
    assert builder.next_id == 1  # a refused command does not use up an id


@pytest.mark.parametrize(
    ("sids", "message"),
    [([], "at least one sid"), ([0], ">= 1"), ([True], ">= 1"), (["1"], ">= 1"), (1, "list"),
     ([1, 1], "listed twice")],
)  # fmt: skip
def test_unsubscribe_rejects_bad_sids(sids: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CommandBuilder().unsubscribe(sids)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sid": 1, "action": "add_market", "market_tickers": ["A-1"]}, "unknown .* action"),
        ({"sid": 1, "action": "", "market_tickers": ["A-1"]}, "add_markets, delete_markets"),
        ({"sid": 0, "action": "add_markets", "market_tickers": ["A-1"]}, ">= 1"),
        ({"sid": [1], "action": "add_markets", "market_tickers": ["A-1"]}, ">= 1"),
        ({"sid": 1, "action": "get_snapshot", "market_tickers": []}, "market_tickers is empty"),
    ],
)
def test_update_subscription_rejects_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CommandBuilder().update_subscription(**kwargs)


@pytest.mark.parametrize("first_id", [0, -1, True, 1.5])
def test_ids_cannot_start_below_1_because_0_means_no_id(first_id: object) -> None:
    with pytest.raises(ValueError, match="first_id"):
        CommandBuilder(first_id=first_id)  # type: ignore[arg-type]
