"""Event streams for trainer and inference tests: real event records, produced like ingest does."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from streamrec_shared.kafka import ResilientProducer
from streamrec_shared.schemas.events import EventIn, EventType, new_event_id
from streamrec_shared.settings import KafkaSettings

START = datetime(2026, 1, 1, tzinfo=UTC)


def chain_events(
    users: int,
    steps: int,
    items: int,
    prefix: str = "i",
    start_time: datetime = START,
    start_index: int = 0,
    user_prefix: str = "u",
) -> list[EventIn]:
    """Each user walks a chain: after item k comes item k+1 (mod ``items``).

    A next-item model learns this quickly; popularity cannot (every item is equally popular).
    Users start at different items so every transition is seen.
    """
    events = []
    for step in range(steps):
        for user in range(users):
            item = (user * 7 + step + start_index) % items
            events.append(
                EventIn(
                    user_id=f"{user_prefix}{user}",
                    item_id=f"{prefix}{item}",
                    type=EventType.CLICK,
                    timestamp=start_time + timedelta(seconds=step * users + user),
                )
            )
    return events


async def produce(kafka: KafkaSettings, topic: str, events: Sequence[EventIn]) -> None:
    """Produce event records keyed by user, acknowledged by the broker, as ingest does."""
    producer = ResilientProducer(kafka)
    await producer.start(wait_s=10)
    try:
        received = datetime.now(UTC)
        records = [
            (e.user_id.encode(), e.record_value(new_event_id(), received), ()) for e in events
        ]
        placed = await producer.send_many(topic, records)
        await asyncio.gather(*{id(f): f for f, _ in placed}.values())
    finally:
        await producer.stop()
