"""Reading back what landed in Kafka, for assertions."""

from __future__ import annotations

import asyncio
import time
import uuid

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord
from streamrec_shared.kafka import client_options, topic_partitions
from streamrec_shared.settings import KafkaSettings


async def partitions_of(kafka: KafkaSettings, topic: str) -> list[int]:
    return await topic_partitions(kafka, topic)


async def read_topic(
    kafka: KafkaSettings, topic: str, expected: int, timeout_s: float = 20.0, settle_s: float = 0.5
) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record of ``topic`` from the beginning: at least ``expected``, then ``settle_s`` more
    to catch any extra (duplicate) records."""
    consumer = AIOKafkaConsumer(
        # A throwaway group: aiokafka's group-less mode can raise CancelledError on stop().
        **client_options(kafka), group_id=f"reader-{uuid.uuid4().hex}", enable_auto_commit=False,
        auto_offset_reset="earliest", isolation_level="read_committed",
    )  # fmt: skip
    await consumer.start()
    try:
        deadline = time.monotonic() + timeout_s
        assignment = [TopicPartition(topic, p) for p in await partitions_of(kafka, topic)]
        consumer.assign(assignment)
        await consumer.seek_to_beginning(*assignment)
        records: list[ConsumerRecord[bytes, bytes]] = []
        settle_until: float | None = None
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for part in batch.values():
                records.extend(part)
            if len(records) >= expected:
                settle_until = settle_until or time.monotonic() + settle_s
                if time.monotonic() >= settle_until:
                    break
            await asyncio.sleep(0)
        return records
    finally:
        await consumer.stop()
