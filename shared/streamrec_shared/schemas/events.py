"""Clickstream events, version 1.

``EventIn`` is what a producer posts; ``EventRecord`` is what ingest writes to the ``events``
topic (every optional field resolved, plus the receive time that freshness is measured from).
Consumers decode ``EventRecord``; producers never write it directly.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from functools import lru_cache
from typing import Annotated, Any, Literal

import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationInfo,
    field_validator,
    model_validator,
)

EVENT_SCHEMA_VERSION = 1

# No control characters anywhere in identifiers: they end up in logs, Redis keys and Kafka keys.
_PRINTABLE = r"^[^\x00-\x1f\x7f]+$"
EntityId = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=_PRINTABLE)]
EventId = Annotated[
    str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:\-]+$")
]
RecId = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=_PRINTABLE)]
ContextKey = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=_PRINTABLE)]
ContextValue = (
    Annotated[str, StringConstraints(max_length=256)]
    | bool
    | int
    | Annotated[float, Field(allow_inf_nan=False)]
)

MAX_CONTEXT_ENTRIES = 16


class EventType(StrEnum):
    VIEW = "view"
    CLICK = "click"
    ADD_TO_CART = "add_to_cart"
    REMOVE_FROM_CART = "remove_from_cart"
    PURCHASE = "purchase"
    RATING = "rating"
    LIKE = "like"
    DISLIKE = "dislike"
    SHARE = "share"


@dataclass(frozen=True, slots=True)
class EventTimeWindow:
    """Which event timestamps are plausible, relative to the receive time.

    The floor is absolute rather than "N days ago" so that historical streams (MovieLens starts
    in 1997) can be replayed through the same API; the ceiling allows for client clock skew.
    """

    earliest: datetime = datetime(1990, 1, 1, tzinfo=UTC)
    max_future_skew: timedelta = timedelta(minutes=5)


def _as_utc(value: datetime) -> datetime:
    # A timestamp without a zone is taken as UTC, the only zone producers are told to use.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class EventIn(BaseModel):
    """One interaction as a producer posts it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = 1
    event_id: EventId | None = Field(
        default=None, description="Client idempotency key; generated when absent."
    )
    user_id: EntityId
    item_id: EntityId
    type: EventType
    value: Annotated[float, Field(ge=-1e9, le=1e9, allow_inf_nan=False)] | None = Field(
        default=None, description="E.g. the rating for a `rating` event, a price for `purchase`."
    )
    timestamp: datetime | None = Field(
        default=None, description="Event time (ISO 8601 or unix seconds); defaults to receipt."
    )
    rec_id: RecId | None = Field(default=None, description="The recommendation this answers.")
    context: dict[ContextKey, ContextValue] = Field(
        default_factory=dict, max_length=MAX_CONTEXT_ENTRIES
    )

    @field_validator("timestamp")
    @classmethod
    def _plausible_time(cls, value: datetime | None, info: ValidationInfo) -> datetime | None:
        if value is None:
            return None
        value = _as_utc(value)
        context: dict[str, Any] = info.context or {}
        window: EventTimeWindow = context.get("window") or EventTimeWindow()
        now: datetime = context.get("now") or datetime.now(UTC)
        if value < window.earliest:
            raise ValueError(f"timestamp is before {window.earliest.isoformat()}")
        if value > now + window.max_future_skew:
            raise ValueError(
                f"timestamp is more than {int(window.max_future_skew.total_seconds())}s "
                "in the future"
            )
        return value

    @model_validator(mode="after")
    def _rating_has_value(self) -> EventIn:
        if self.type is EventType.RATING and self.value is None:
            raise ValueError("a rating event needs a value")
        return self

    def record_value(self, event_id: str, received_at: datetime) -> bytes:
        """The ``EventRecord`` JSON of this event, as written to Kafka.

        Built directly with orjson: constructing an ``EventRecord`` first would double the cost
        per event of a batch. ``EventRecord.model_validate_json`` reads it (tested).
        """
        return orjson.dumps(
            {
                "schema_version": EVENT_SCHEMA_VERSION,
                "event_id": event_id,
                "user_id": self.user_id,
                "item_id": self.item_id,
                "type": self.type.value,
                "value": self.value,
                "timestamp": self.timestamp or received_at,
                "received_at": received_at,
                "rec_id": self.rec_id,
                "context": self.context,
            }
        )


def new_event_id() -> str:
    return uuid.uuid4().hex


class EventBatchIn(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    events: list[EventIn] = Field(min_length=1)


@lru_cache(maxsize=8)
def batch_adapter(max_events: int) -> TypeAdapter[EventBatchIn]:
    """A validator for batches of at most ``max_events`` (the limit is a setting)."""

    class _BoundedBatch(EventBatchIn):
        events: list[EventIn] = Field(min_length=1, max_length=max_events)

    return TypeAdapter(_BoundedBatch)


class EventRecord(BaseModel):
    """The value of a record on the ``events`` topic (key: ``user_id``)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    schema_version: int = EVENT_SCHEMA_VERSION
    event_id: str
    user_id: str
    item_id: str
    type: EventType
    value: float | None = None
    timestamp: datetime
    received_at: datetime
    rec_id: str | None = None
    context: dict[str, str | bool | int | float] = Field(default_factory=dict)


# How strongly each event type says "the user wants this item". Types missing here (removals,
# dislikes) are not positives: they enter neither a user's recent items nor the training data.
# Ratings count whatever their value: a rating means the user watched the item.
INTERACTION_WEIGHTS: dict[str, float] = {
    EventType.VIEW: 1.0,
    EventType.CLICK: 1.0,
    EventType.RATING: 1.0,
    EventType.LIKE: 1.5,
    EventType.SHARE: 1.5,
    EventType.ADD_TO_CART: 2.0,
    EventType.PURCHASE: 3.0,
}


@dataclass(frozen=True, slots=True)
class Interaction:
    """The fields of an event record that learning and features need, decoded cheaply."""

    user_id: str
    item_id: str
    weight: float
    timestamp: str


def decode_interaction(value: bytes) -> Interaction | None:
    """An ``events`` record as an interaction; ``None`` for events that are not positives.

    The hot paths (training, feature updates) read tens of thousands of records a second, so this
    skips pydantic: ingest validated every record before producing it. Raises ``ValueError`` for
    bytes that are not an event record (the caller dead-letters them).
    """
    try:
        record = orjson.loads(value)
        weight = INTERACTION_WEIGHTS.get(record["type"])
        if weight is None:
            return None
        return Interaction(record["user_id"], record["item_id"], weight, record["timestamp"])
    except (orjson.JSONDecodeError, KeyError, TypeError) as error:
        raise ValueError(f"not an event record: {error}") from error
