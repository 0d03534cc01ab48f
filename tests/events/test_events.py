"""Events are frozen, closed and registered by type; bad types and payloads say what is wrong."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from events import Event, EventError, Signal, event_class, parse_event, registered_types


class OrderPlaced(Event, type="t_events.order_placed"):
    order_id: str
    quantity: int


def test_an_event_is_frozen() -> None:
    # Given an event
    placed = OrderPlaced(order_id="o-1", quantity=2)
    # Then its fields cannot be changed
    with pytest.raises(ValidationError, match="frozen"):
        placed.quantity = 3  # type: ignore[misc]
    assert placed.quantity == 2


def test_an_event_rejects_fields_it_does_not_declare() -> None:
    with pytest.raises(ValidationError, match="coupon") as error:
        OrderPlaced(order_id="o-1", quantity=2, coupon="FREE")  # type: ignore[call-arg]
    assert error.value.errors()[0]["type"] == "extra_forbidden"


def test_the_registry_maps_each_type_to_its_class() -> None:
    # Then the declared type and the built-in ones are registered, with their classes
    assert OrderPlaced.type == "t_events.order_placed"
    assert event_class("t_events.order_placed") is OrderPlaced
    assert event_class("baton.signal") is Signal
    assert {"t_events.order_placed", "baton.signal", "baton.run.failed"} <= set(registered_types())
    assert registered_types() == sorted(registered_types())


def test_parse_event_validates_data_into_the_registered_class() -> None:
    parsed = parse_event("t_events.order_placed", {"order_id": "o-1", "quantity": "3"})
    assert parsed == OrderPlaced(order_id="o-1", quantity=3)
    # And an event survives its JSON form unchanged, as the store keeps it
    assert parse_event(parsed.type, parsed.model_dump(mode="json")) == parsed


def test_an_unknown_type_names_the_type_and_the_known_ones() -> None:
    with pytest.raises(EventError) as error:
        parse_event("t_events.order_placd", {})
    message = str(error.value)
    assert "unknown event type 't_events.order_placd'" in message
    assert "t_events.order_placed" in message


def test_invalid_data_names_the_type_and_each_bad_field() -> None:
    with pytest.raises(EventError) as error:
        parse_event("t_events.order_placed", {"quantity": "many"})
    message = str(error.value)
    assert "'t_events.order_placed'" in message
    assert "quantity: Input should be a valid integer" in message
    assert "order_id: Field required" in message


def test_data_that_is_not_an_object_is_refused_with_its_kind() -> None:
    with pytest.raises(EventError, match="must be a JSON object, got an array"):
        parse_event("t_events.order_placed", [1, 2])


def test_an_event_without_a_type_cannot_be_declared() -> None:
    with pytest.raises(EventError) as error:

        class Untyped(Event):
            pass

    assert "Untyped" in str(error.value) and 'type="' in str(error.value)


def test_a_type_declared_twice_is_refused_and_the_first_class_kept() -> None:
    with pytest.raises(EventError) as error:

        class Impostor(Event, type="t_events.order_placed"):
            pass

    message = str(error.value)
    assert "declared twice" in message and "OrderPlaced" in message and "Impostor" in message
    assert event_class("t_events.order_placed") is OrderPlaced


def test_a_type_that_is_not_a_dotted_lower_case_name_is_refused() -> None:
    with pytest.raises(EventError, match="dotted lower-case"):

        class Shouting(Event, type="ORDER PLACED"):
            pass

    assert "ORDER PLACED" not in registered_types()
