"""The shared Kafka clients against the pinned broker: consumer groups resume from commits."""

from __future__ import annotations

import uuid

import pytest
from aiokafka import TopicPartition
from streamrec_shared.kafka import ResilientProducer, build_consumer
from streamrec_shared.settings import KafkaSettings, TopicSettings

from tests.support.kafka import partitions_of

pytestmark = pytest.mark.integration


async def test_a_consumer_group_resumes_after_its_last_commit(
    kafka_settings: KafkaSettings, topic_settings: TopicSettings
) -> None:
    topic = topic_settings.events
    producer = ResilientProducer(kafka_settings)
    await producer.start(wait_s=10)
    assert producer.connected
    futures = await producer.send_many(
        topic, [(b"same-user", f"m{n}".encode(), ()) for n in range(10)]
    )
    base = (await futures[0][0]).offset
    await producer.stop()
    partition = (await futures[0][0]).partition
    tp = TopicPartition(topic, partition)
    group = f"group-{uuid.uuid4().hex[:8]}"

    first = build_consumer(kafka_settings, topic, group_id=group)
    await first.start()
    try:
        seen: list[bytes] = []
        while len(seen) < 10:
            batch = await first.getmany(timeout_ms=5000)
            assert batch, "no records within 5 s"
            seen += [record.value for records in batch.values() for record in records]
        assert seen == [f"m{n}".encode() for n in range(10)]
        # Commit after the first four, as a consumer does once their work is done.
        await first.commit({tp: base + 4})
    finally:
        await first.stop()

    second = build_consumer(kafka_settings, topic, group_id=group)
    await second.start()
    try:
        assert await second.committed(tp) == base + 4
        batch = await second.getmany(timeout_ms=10_000)
        resumed = [record.value for records in batch.values() for record in records]
        assert resumed[0] == b"m4"
    finally:
        await second.stop()
    assert await partitions_of(kafka_settings, topic) == [0, 1, 2]
