"""The cheap decoder of ``events`` records used by training and feature updates."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest
from streamrec_shared.schemas.events import (
    INTERACTION_WEIGHTS,
    EventIn,
    EventRecord,
    EventType,
    Interaction,
    decode_interaction,
)

RECEIVED = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def record(type_: EventType, **fields: object) -> bytes:
    """Record bytes exactly as ingest writes them."""
    value = 4.0 if type_ is EventType.RATING else None
    event = EventIn.model_validate(
        {"user_id": "u1", "item_id": "i1", "type": type_, "value": value, **fields}
    )
    return event.record_value("e-1", RECEIVED)


def test_weights_cover_every_positive_type_and_nothing_else() -> None:
    negatives = {EventType.REMOVE_FROM_CART, EventType.DISLIKE}
    assert set(INTERACTION_WEIGHTS) == set(EventType) - negatives
    assert all(weight > 0 for weight in INTERACTION_WEIGHTS.values())
    assert INTERACTION_WEIGHTS["purchase"] > INTERACTION_WEIGHTS["add_to_cart"]
    assert INTERACTION_WEIGHTS["add_to_cart"] > INTERACTION_WEIGHTS["click"]


@pytest.mark.parametrize("type_", sorted(INTERACTION_WEIGHTS), ids=str)
def test_positives_decode_with_their_weight(type_: str) -> None:
    decoded = decode_interaction(record(EventType(type_)))
    assert decoded == Interaction(
        user_id="u1",
        item_id="i1",
        weight=INTERACTION_WEIGHTS[type_],
        timestamp=RECEIVED.isoformat(),
    )


def test_event_time_is_kept_rather_than_receipt() -> None:
    decoded = decode_interaction(
        record(EventType.CLICK, timestamp=datetime(2020, 1, 2, 3, 4, 5, tzinfo=UTC))
    )
    assert decoded is not None
    assert datetime.fromisoformat(decoded.timestamp) == datetime(2020, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_decoded_fields_match_the_full_record_decoder() -> None:
    value = record(EventType.PURCHASE, user_id="ü🙂", item_id="sku:42", context={"page": "x"})
    full = EventRecord.model_validate_json(value)
    decoded = decode_interaction(value)
    assert decoded is not None
    assert (decoded.user_id, decoded.item_id) == (full.user_id, full.item_id)
    assert datetime.fromisoformat(decoded.timestamp) == full.timestamp


@pytest.mark.parametrize("type_", [EventType.REMOVE_FROM_CART, EventType.DISLIKE], ids=str)
def test_non_positives_are_none(type_: EventType) -> None:
    assert decode_interaction(record(type_)) is None


def test_unknown_type_from_a_newer_producer_is_none() -> None:
    body = orjson.loads(record(EventType.VIEW))
    body["type"] = "hover"
    assert decode_interaction(orjson.dumps(body)) is None


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"{oops", id="bad-json"),
        pytest.param(b"\xff", id="not-utf8"),
        pytest.param(b"[]", id="array"),
        pytest.param(b"null", id="null"),
        pytest.param(b"42", id="number"),
        pytest.param(b'"view"', id="string"),
        pytest.param(orjson.dumps({"type": "view", "user_id": "u"}), id="missing-fields"),
        pytest.param(orjson.dumps({"user_id": "u", "item_id": "i"}), id="missing-type"),
        pytest.param(orjson.dumps({"type": ["view"]}), id="unhashable-type"),
    ],
)
def test_garbage_raises_value_error(value: bytes) -> None:
    with pytest.raises(ValueError, match="not an event record"):
        decode_interaction(value)
