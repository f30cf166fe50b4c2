from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
import pytest
from pydantic import ValidationError
from streamrec_shared.schemas import (
    EventIn,
    EventRecord,
    EventTimeWindow,
    EventType,
    batch_adapter,
    validation_details,
)
from streamrec_shared.schemas.events import new_event_id

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def parse(body: dict[str, object]) -> EventIn:
    return EventIn.model_validate_json(orjson.dumps(body), context={"now": NOW})


def reasons(body: dict[str, object]) -> dict[str, str]:
    with pytest.raises(ValidationError) as caught:
        parse(body)
    return {detail.field: detail.reason for detail in validation_details(caught.value)}


def test_minimal_event_gets_defaults_resolved_in_its_record() -> None:
    event = parse({"user_id": "u1", "item_id": "i1", "type": "view"})
    assert event.event_id is None
    assert event.timestamp is None
    assert event.context == {}
    record = EventRecord.model_validate_json(event.record_value(new_event_id(), NOW))
    assert len(record.event_id) == 32
    assert record.timestamp == NOW
    assert record.received_at == NOW
    assert record.type is EventType.VIEW


def test_client_event_id_and_fields_are_kept() -> None:
    event = parse(
        {
            "event_id": "abc-1:2",
            "user_id": "ü🙂",
            "item_id": "i1",
            "type": "rating",
            "value": 4.5,
            "timestamp": "2026-06-01T11:00:00+02:00",
            "rec_id": "r1",
            "context": {"page": "home", "pos": 3, "ab": True},
        }
    )
    record = EventRecord.model_validate_json(event.record_value("abc-1:2", NOW))
    assert record.event_id == "abc-1:2"
    assert record.timestamp == datetime(2026, 6, 1, 9, 0, tzinfo=UTC)
    assert record.context == {"page": "home", "pos": 3, "ab": True}


def test_unix_seconds_and_naive_timestamps_are_utc() -> None:
    unix = parse({"user_id": "u", "item_id": "i", "type": "view", "timestamp": 891_000_000})
    assert unix.timestamp == datetime.fromtimestamp(891_000_000, UTC)
    naive = parse(
        {"user_id": "u", "item_id": "i", "type": "view", "timestamp": "2020-01-01T00:00:00"}
    )
    assert naive.timestamp == datetime(2020, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("body", "field", "reason"),
    [
        ({"user_id": "u", "item_id": "i", "type": "teleport"}, "type", "Input should be"),
        ({"user_id": "u", "item_id": "i"}, "type", "Field required"),
        ({"user_id": 5, "item_id": "i", "type": "view"}, "user_id", "valid string"),
        ({"user_id": "u" * 129, "item_id": "i", "type": "view"}, "user_id", "at most 128"),
        ({"user_id": "", "item_id": "i", "type": "view"}, "user_id", "at least 1"),
        ({"user_id": "a\nb", "item_id": "i", "type": "view"}, "user_id", "pattern"),
        (
            {"user_id": "u", "item_id": "i", "type": "view", "event_id": "a b"},
            "event_id",
            "pattern",
        ),
        ({"user_id": "u", "item_id": "i", "type": "view", "extra": 1}, "extra", "Extra inputs"),
        ({"user_id": "u", "item_id": "i", "type": "view", "value": "x"}, "value", "valid number"),
        ({"user_id": "u", "item_id": "i", "type": "view", "value": 1e12}, "value", "less than"),
        ({"user_id": "u", "item_id": "i", "type": "rating"}, "body", "needs a value"),
        (
            {"user_id": "u", "item_id": "i", "type": "view", "schema_version": 2},
            "schema_version",
            "1",
        ),
    ],
)
def test_invalid_fields_are_named_with_a_reason(
    body: dict[str, object], field: str, reason: str
) -> None:
    found = reasons(body)
    assert field in found, found
    assert reason in found[field]


def test_timestamps_far_in_the_future_or_absurd_past_are_rejected() -> None:
    future = (NOW + timedelta(hours=1)).isoformat()
    assert (
        "future"
        in reasons({"user_id": "u", "item_id": "i", "type": "view", "timestamp": future})[
            "timestamp"
        ]
    )
    past = "1969-12-31T00:00:00Z"
    assert (
        "before 1990"
        in reasons({"user_id": "u", "item_id": "i", "type": "view", "timestamp": past})["timestamp"]
    )
    # Clock skew within the window is fine, and the window is configurable.
    parse(
        {
            "user_id": "u",
            "item_id": "i",
            "type": "view",
            "timestamp": (NOW + timedelta(minutes=4)).isoformat(),
        }
    )
    strict = EventTimeWindow(max_future_skew=timedelta(0))
    with pytest.raises(ValidationError):
        EventIn.model_validate_json(
            orjson.dumps(
                {
                    "user_id": "u",
                    "item_id": "i",
                    "type": "view",
                    "timestamp": (NOW + timedelta(minutes=1)).isoformat(),
                }
            ),
            context={"now": NOW, "window": strict},
        )


def test_context_is_bounded() -> None:
    too_many = {f"k{n}": n for n in range(17)}
    assert "context" in reasons(
        {"user_id": "u", "item_id": "i", "type": "view", "context": too_many}
    )
    long_value = {"k": "v" * 257}
    assert any(
        f.startswith("context.k")
        for f in reasons({"user_id": "u", "item_id": "i", "type": "view", "context": long_value})
    )
    nested = {"k": {"deep": 1}}
    assert any(
        f.startswith("context.k")
        for f in reasons({"user_id": "u", "item_id": "i", "type": "view", "context": nested})
    )


def test_batch_limits_and_field_paths() -> None:
    adapter = batch_adapter(3)
    ok = {"user_id": "u", "item_id": "i", "type": "view"}
    assert len(adapter.validate_json(orjson.dumps({"events": [ok, ok]})).events) == 2
    with pytest.raises(ValidationError) as caught:
        adapter.validate_json(orjson.dumps({"events": [ok] * 4}))
    assert validation_details(caught.value)[0].field == "events"
    with pytest.raises(ValidationError) as caught:
        adapter.validate_json(orjson.dumps({"events": [ok, {**ok, "type": "nope"}]}))
    assert [d.field for d in validation_details(caught.value)] == ["events[1].type"]
    with pytest.raises(ValidationError):
        adapter.validate_json(orjson.dumps({"events": []}))


def test_malformed_json_is_reported_on_the_body() -> None:
    with pytest.raises(ValidationError) as caught:
        EventIn.model_validate_json(b"{nope")
    assert caught.value.errors()[0]["type"] == "json_invalid"
    assert validation_details(caught.value)[0].field == "body"
