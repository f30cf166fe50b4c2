"""The feature updater against real Kafka and Redis: order, exactly-once restarts, dead letters,
and feature freshness end to end (ingest's receive time → features in Redis)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta

import pytest
from aiokafka import TopicPartition
from aiokafka.structs import OffsetAndMetadata
from inference.config import InferenceSettings
from inference.features import FeatureStore
from inference.updater import FeatureUpdater
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis
from streamrec_dev.evaluation.replay import AppliedPositions, await_positions
from streamrec_shared.kafka import ResilientProducer, build_consumer
from streamrec_shared.redis import build_redis
from streamrec_shared.schemas.events import EventIn, EventType, new_event_id
from streamrec_shared.settings import KafkaSettings, RedisSettings, TopicSettings

from tests.support.kafka import read_topic
from tests.support.streams import START, chain_events, produce

pytestmark = pytest.mark.integration


@pytest.fixture
def settings(
    kafka_settings: KafkaSettings,
    topic_settings: TopicSettings,
    redis_settings: RedisSettings,
    unique: str,
) -> InferenceSettings:
    return InferenceSettings(
        kafka=kafka_settings,
        topics=topic_settings,
        redis=redis_settings,
        features_group=f"features-{unique}",
    )


@pytest.fixture
async def redis(settings: InferenceSettings) -> AsyncIterator[Redis]:
    client = build_redis(settings.redis)
    yield client
    await client.aclose()


@pytest.fixture
async def producer(kafka_settings: KafkaSettings) -> AsyncIterator[ResilientProducer]:
    producer = ResilientProducer(kafka_settings)
    await producer.start(wait_s=10)
    yield producer
    await producer.stop()


async def wait_until(check: Callable[[], object], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")


async def applied(store: FeatureStore, topic: str) -> int:
    return sum((await store.positions(topic)).values())


def expected_recent(events: list[EventIn], user: str) -> list[str]:
    return [e.item_id for e in events if e.user_id == user][::-1]


async def test_features_in_order_and_exactly_once_across_restarts(
    settings: InferenceSettings, redis: Redis, producer: ResilientProducer
) -> None:
    topic = settings.topics.events
    first = chain_events(users=6, steps=5, items=100)
    await produce(settings.kafka, topic, first)
    updater = FeatureUpdater(settings, redis, producer, CollectorRegistry())
    await updater.start()
    await wait_until(lambda: _applied_is(updater.store, topic, len(first)))
    for user in ("u0", "u5"):
        features = await updater.store.user_features(user)
        assert features.recent == expected_recent(first, user)
        assert features.counts == {"click": 5}
    # The replay's barrier (devtools) reads the same positions, synchronously.
    stored = await updater.store.positions(topic)
    positions = AppliedPositions(
        settings.redis.url.get_secret_value(), settings.redis.key_prefix, topic
    )
    try:
        assert [positions.next_offset(p) for p in range(3)] == [stored.get(p, 0) for p in range(3)]
        assert await_positions(positions, stored, timeout_s=1.0, poll_s=0.01)
        beyond = {**stored, 0: stored.get(0, 0) + 1}
        assert not await_positions(positions, beyond, timeout_s=0.05, poll_s=0.01)
    finally:
        positions.close()
    await updater.stop()

    # The group's committed offsets are rewound: a restart that trusted them would apply every
    # event twice. The positions stored with the features are the ones that count.
    consumer = build_consumer(settings.kafka, group_id=settings.features_group)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(3)]
        consumer.assign(partitions)
        await consumer.commit({tp: OffsetAndMetadata(0, "") for tp in partitions})
    finally:
        await consumer.stop()

    second = chain_events(users=6, steps=10, items=100, start_time=START + timedelta(hours=1))[
        6 * 5 :
    ]
    registry = CollectorRegistry()
    restarted = FeatureUpdater(settings, redis, producer, registry)
    await restarted.start()
    try:
        await produce(settings.kafka, topic, second)
        await wait_until(lambda: _applied_is(restarted.store, topic, len(first) + len(second)))
        # The counter moves once the transaction's reply is back, a moment after Redis shows it.
        counted = "inference_feature_events_applied_total"
        await wait_until(lambda: (registry.get_sample_value(counted) or 0) >= len(second))
        assert registry.get_sample_value(counted) == len(second)
        for user in (f"u{i}" for i in range(6)):
            features = await restarted.store.user_features(user)
            assert features.recent == expected_recent(first + second, user)
            assert features.counts == {"click": 10}
            assert sorted(features.seen) == sorted(features.recent)
        popular = await restarted.store.popular(200, set())
        assert len(popular) == len({e.item_id for e in first + second})
    finally:
        await restarted.stop()


async def _applied_is(store: FeatureStore, topic: str, count: int) -> bool:
    return await applied(store, topic) == count


async def test_undecodable_records_go_to_the_dead_letter_topic(
    settings: InferenceSettings, redis: Redis, producer: ResilientProducer
) -> None:
    topic = settings.topics.events
    registry = CollectorRegistry()
    updater = FeatureUpdater(settings, redis, producer, registry)
    await updater.start()
    try:
        await (await producer.send(topic, b"{not json", key=b"u1"))
        events = [
            EventIn(user_id="u1", item_id="i1", type=EventType.VIEW),
            EventIn(user_id="u1", item_id="i2", type=EventType.DISLIKE),
            EventIn(user_id="u1", item_id="i3", type=EventType.PURCHASE),
        ]
        await produce(settings.kafka, topic, events)
        await wait_until(lambda: _applied_is(updater.store, topic, 4))
        features = await updater.store.user_features("u1")
        assert features.recent == ["i3", "i1"]
        assert features.counts == {"view": 1, "dislike": 1, "purchase": 1}
        assert registry.get_sample_value("inference_feature_dead_letters_total") == 1
        (parked,) = await read_topic(settings.kafka, settings.topics.events_dlq, 1)
        assert parked.value == b"{not json"
        assert parked.key == b"u1"
        headers = dict(parked.headers)
        assert headers["x-dlq-source"].startswith(f"{topic}/".encode())
        assert b"not an event record" in headers["x-dlq-error"]
    finally:
        await updater.stop()


def quantile(registry: CollectorRegistry, name: str, q: float) -> float:
    """A quantile from histogram buckets, interpolated linearly within the bucket."""
    buckets: list[tuple[float, float]] = []
    for metric in registry.collect():
        for sample in metric.samples:
            if sample.name == f"{name}_bucket":
                buckets.append((float(sample.labels["le"]), sample.value))
    buckets.sort()
    total = buckets[-1][1]
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return lower_bound
            share = (rank - lower_count) / (count - lower_count) if count > lower_count else 0.0
            return lower_bound + share * (bound - lower_bound)
        lower_bound, lower_count = bound, count
    return lower_bound


async def test_feature_freshness_end_to_end(
    settings: InferenceSettings,
    redis: Redis,
    producer: ResilientProducer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """500 events/s for 4 s, stamped with their receive time as ingest does. Figures are printed
    (run with ``-s``), not asserted: machines are noisy."""
    rate, seconds, tick_s = 500, 4.0, 0.01
    total = int(rate * seconds)
    per_tick = int(rate * tick_s)
    registry = CollectorRegistry()
    updater = FeatureUpdater(settings, redis, producer, registry)
    exact: list[float] = []
    histogram = updater.metrics.freshness
    observe = histogram.observe

    def recording(value: float, exemplar: dict[str, str] | None = None) -> None:
        exact.append(value)
        observe(value, exemplar)

    monkeypatch.setattr(histogram, "observe", recording)
    await updater.start()
    try:
        await asyncio.sleep(0.5)  # connected and positioned
        futures = []
        loop = asyncio.get_running_loop()
        started = loop.time()
        for tick in range(total // per_tick):
            await asyncio.sleep(max(0.0, started + tick * tick_s - loop.time()))
            received = datetime.now(UTC)
            records = [
                (
                    f"u{n % 50}".encode(),
                    EventIn(
                        user_id=f"u{n % 50}", item_id=f"i{n % 97}", type=EventType.CLICK
                    ).record_value(new_event_id(), received),
                    (),
                )
                for n in range(tick * per_tick, (tick + 1) * per_tick)
            ]
            futures.extend(f for f, _ in await producer.send_many(settings.topics.events, records))
        produced_s = loop.time() - started
        await asyncio.gather(*{id(f): f for f in futures}.values())
        name = "inference_feature_freshness_seconds"
        await wait_until(lambda: registry.get_sample_value(f"{name}_count") == total)
        await asyncio.sleep(0.3)
        assert registry.get_sample_value(f"{name}_count") == total  # each event observed once
        exact.sort()
        p50, p99 = (quantile(registry, name, q) for q in (0.5, 0.99))
        print(
            f"\nfeature freshness: {total} events at {total / produced_s:.0f}/s; "
            f"histogram p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms; "
            f"exact p50 {exact[total // 2] * 1000:.1f} ms, "
            f"p99 {exact[int(total * 0.99)] * 1000:.1f} ms, max {exact[-1] * 1000:.1f} ms"
        )
    finally:
        await updater.stop()


async def test_own_process_runs_until_sigterm_and_rebuilds(
    settings: InferenceSettings, redis: Redis
) -> None:
    """``python -m inference.updater`` with settings from the environment; ``--rebuild`` drops
    what is stored (a stale key here) and replays the topic: counts come out exact, not doubled."""
    topic = settings.topics.events
    events = chain_events(users=3, steps=4, items=50)
    await produce(settings.kafka, topic, events)
    environment = {
        **os.environ,
        "STREAMREC_KAFKA_BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
        "STREAMREC_TOPIC_EVENTS": topic,
        "STREAMREC_TOPIC_EVENTS_DLQ": settings.topics.events_dlq,
        "STREAMREC_REDIS_URL": settings.redis.url.get_secret_value(),
        "STREAMREC_REDIS_KEY_PREFIX": settings.redis.key_prefix,
        "STREAMREC_INFERENCE_FEATURES_GROUP": settings.features_group,
    }
    store = FeatureStore(redis, settings)

    async def done() -> bool:
        ghost = await redis.exists(store.user_key("ghost", "recent"))
        return not ghost and await _applied_is(store, topic, len(events))

    async def run(*arguments: str) -> None:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "inference.updater", "--metrics-port", "0", *arguments,
            env=environment, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            await wait_until(done, timeout_s=60)
            await asyncio.sleep(0.3)
            process.send_signal(signal.SIGTERM)
            _, stderr = await asyncio.wait_for(process.communicate(), 30)
            assert process.returncode == 0, stderr.decode()[-2000:]
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()

    await run()
    assert (await store.user_features("u1")).counts == {"click": 4}
    await redis.rpush(store.user_key("ghost", "recent"), "i1")
    await run("--rebuild")
    assert not await redis.exists(store.user_key("ghost", "recent"))
    for user in ("u0", "u1", "u2"):
        features = await store.user_features(user)
        assert features.counts == {"click": 4}
        assert features.recent == expected_recent(events, user)
