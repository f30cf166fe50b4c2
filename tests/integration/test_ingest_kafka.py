"""Ingest against the real broker and the real Redis server."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest
from ingest.config import IngestSettings
from ingest.main import create_app
from streamrec_dev.servers import KafkaServer, RedisServer, free_port
from streamrec_shared.kafka import ensure_topics
from streamrec_shared.schemas import EventRecord
from streamrec_shared.settings import KafkaSettings, RedisSettings, TopicSettings

from tests.support.apps import serve
from tests.support.kafka import read_topic

pytestmark = pytest.mark.integration


def settings_for(
    kafka: KafkaSettings, topics: TopicSettings, redis: RedisSettings, **extra: object
) -> IngestSettings:
    return IngestSettings(kafka=kafka, topics=topics, redis=redis, **extra)  # type: ignore[arg-type]


async def test_accepted_event_is_in_kafka_with_key_and_payload(
    kafka_settings: KafkaSettings, topic_settings: TopicSettings, redis_settings: RedisSettings
) -> None:
    async with serve(
        create_app(settings_for(kafka_settings, topic_settings, redis_settings))
    ) as client:
        response = await client.post(
            "/v1/events",
            json={
                "event_id": "evt-1",
                "user_id": "alice",
                "item_id": "m42",
                "type": "rating",
                "value": 4,
                "context": {"page": "home"},
            },
        )
        assert response.status_code == 202, response.text
        body = response.json()
        assert body["status"] == "stored"
        assert body["deduplicated"] is True
        assert (await client.get("/readyz")).json() == {
            "status": "ready",
            "checks": {"kafka": True},
        }

    records = await read_topic(kafka_settings, topic_settings.events, expected=1)
    assert len(records) == 1
    record = records[0]
    assert record.key == b"alice"
    assert (record.partition, record.offset) == (body["partition"], body["offset"])
    assert dict(record.headers)["event_id"] == b"evt-1"
    stored = EventRecord.model_validate_json(record.value)
    assert (stored.event_id, stored.user_id, stored.item_id, stored.value) == (
        "evt-1",
        "alice",
        "m42",
        4.0,
    )
    assert stored.context == {"page": "home"}
    assert stored.received_at == stored.timestamp  # defaulted to receipt time


@pytest.mark.parametrize("max_batch_bytes", [262_144, 2048], ids=["one-batch", "many-batches"])
async def test_batch_reports_offsets_and_same_user_keeps_order(
    kafka_settings: KafkaSettings,
    topic_settings: TopicSettings,
    redis_settings: RedisSettings,
    max_batch_bytes: int,
) -> None:
    # With 2 KiB producer batches, each partition's share of the request spans several batches.
    events = [
        {"user_id": f"u{n % 3}", "item_id": f"i{n}", "type": "view", "event_id": f"b{n}"}
        for n in range(60)
    ]
    kafka = kafka_settings.model_copy(update={"max_batch_bytes": max_batch_bytes})
    async with serve(create_app(settings_for(kafka, topic_settings, redis_settings))) as client:
        response = await client.post("/v1/events/batch", json={"events": events})
    assert response.status_code == 202, response.text
    body = response.json()
    assert (body["stored"], body["duplicates"], body["failed"]) == (60, 0, 0)
    records = await read_topic(kafka_settings, topic_settings.events, expected=60)
    by_id = {orjson.loads(r.value)["event_id"]: r for r in records}
    assert len(by_id) == 60
    for result in body["results"]:
        assert (by_id[result["event_id"]].partition, by_id[result["event_id"]].offset) == (
            result["partition"],
            result["offset"],
        )
    for user in ("u0", "u1", "u2"):
        items = [
            orjson.loads(r.value)["item_id"]
            for r in sorted(records, key=lambda r: r.offset)
            if r.key == user.encode()
        ]
        assert items == [e["item_id"] for e in events if e["user_id"] == user]


async def test_duplicate_event_id_is_stored_once(
    kafka_settings: KafkaSettings, topic_settings: TopicSettings, redis_settings: RedisSettings
) -> None:
    event = {"event_id": "dup-1", "user_id": "bob", "item_id": "m1", "type": "click"}
    async with serve(
        create_app(settings_for(kafka_settings, topic_settings, redis_settings))
    ) as client:
        first = await client.post("/v1/events", json=event)
        second = await client.post("/v1/events", json=event)
        batch = await client.post(
            "/v1/events/batch", json={"events": [event, {**event, "event_id": "dup-2"}]}
        )
    assert first.status_code == 202
    assert second.status_code == 200
    assert second.json()["status"] == "duplicate"
    assert second.json()["offset"] == first.json()["offset"]
    assert [r["status"] for r in batch.json()["results"]] == ["duplicate", "stored"]
    records = await read_topic(kafka_settings, topic_settings.events, expected=2, settle_s=1.0)
    assert sorted(orjson.loads(r.value)["event_id"] for r in records) == ["dup-1", "dup-2"]


async def test_invalid_events_never_reach_kafka(
    kafka_settings: KafkaSettings, topic_settings: TopicSettings, redis_settings: RedisSettings
) -> None:
    good = {"user_id": "u", "item_id": "i", "type": "view", "event_id": "good"}
    async with serve(
        create_app(settings_for(kafka_settings, topic_settings, redis_settings))
    ) as client:
        bad_batch = await client.post(
            "/v1/events/batch", json={"events": [good, {**good, "type": "x"}]}
        )
        assert bad_batch.status_code == 422
        marker = await client.post("/v1/events", json={**good, "event_id": "marker"})
        assert marker.status_code == 202
        # The rejected batch did not claim "good": it is accepted now.
        assert (await client.post("/v1/events", json=good)).status_code == 202
    records = await read_topic(kafka_settings, topic_settings.events, expected=2, settle_s=1.0)
    assert sorted(orjson.loads(r.value)["event_id"] for r in records) == ["good", "marker"]


async def test_topic_creation_is_idempotent(kafka_settings: KafkaSettings, unique: str) -> None:
    names = ("events", "control", "events_dlq", "impressions", "rec_requests", "rec_responses")
    topics = TopicSettings(**{name: f"{name}-{unique}" for name in names})  # type: ignore[arg-type]
    first = await ensure_topics(kafka_settings, topics)
    second = await ensure_topics(kafka_settings, topics)
    assert set(first.values()) == {"created"}
    assert set(second.values()) == {"exists"}


async def test_broker_down_gives_503_then_recovers(
    tmp_path: Path, redis_settings: RedisSettings, unique: str
) -> None:
    """A broker of its own: stopped under a running ingest, then started again."""
    broker = KafkaServer(
        name="kafka", home=tmp_path / "kafka", port=free_port(), controller_port=free_port()
    )
    broker.start(timeout=90)
    try:
        kafka = KafkaSettings(bootstrap_servers=broker.bootstrap, request_timeout_ms=3000)
        topics = TopicSettings(events=f"events-{unique}", events_partitions=2)
        await ensure_topics(kafka, topics)
        settings = settings_for(kafka, topics, redis_settings, ack_timeout_s=2.0, retry_after_s=3)
        async with serve(create_app(settings)) as client:
            ok = {"user_id": "carol", "item_id": "m1", "type": "view"}
            assert (
                await client.post("/v1/events", json={**ok, "event_id": "before"})
            ).status_code == 202

            broker.stop()
            down = await client.post("/v1/events", json={**ok, "event_id": "during"})
            assert down.status_code == 503, down.text
            assert down.headers["retry-after"] == "3"
            assert (await client.get("/readyz", headers={})).status_code == 503

            broker.start(timeout=90)
            recovered = None
            for _ in range(60):
                recovered = await client.post("/v1/events", json={**ok, "event_id": "during"})
                if recovered.status_code in (200, 202):
                    break
                # 409 while the first attempt's late outcome is pending, 503 while reconnecting.
                assert recovered.status_code in (409, 503), recovered.text
                await asyncio.sleep(0.5)
            assert recovered is not None
            assert recovered.status_code in (200, 202), recovered.text
            assert (
                await client.post("/v1/events", json={**ok, "event_id": "after"})
            ).status_code == 202
        records = await read_topic(kafka, topics.events, expected=3, settle_s=1.0)
        ids = [orjson.loads(r.value)["event_id"] for r in records]
        # "during" may have been written by the producer's own retry after the 503; then the
        # client's retry was recognized as a duplicate. Either way it is in Kafka exactly once.
        assert sorted(ids) == ["after", "before", "during"]
    finally:
        broker.stop()


async def test_redis_down_still_accepts_events_unchecked(
    tmp_path: Path, kafka_settings: KafkaSettings, topic_settings: TopicSettings
) -> None:
    redis = RedisServer(name="redis", home=tmp_path / "redis", port=free_port())
    redis.start()
    settings = settings_for(
        kafka_settings,
        topic_settings,
        RedisSettings(url=redis.url, socket_timeout_s=0.3),  # type: ignore[arg-type]
    )
    async with serve(create_app(settings)) as client:
        assert (
            await client.post(
                "/v1/events",
                json={"user_id": "d", "item_id": "i", "type": "view", "event_id": "r1"},
            )
        ).json()["deduplicated"] is True
        redis.stop()
        response = await client.post(
            "/v1/events", json={"user_id": "d", "item_id": "i", "type": "view", "event_id": "r2"}
        )
        assert response.status_code == 202
        assert response.json()["deduplicated"] is False
        assert (await client.get("/readyz")).status_code == 200  # Redis is not required
    records = await read_topic(kafka_settings, topic_settings.events, expected=2)
    assert len(records) == 2
