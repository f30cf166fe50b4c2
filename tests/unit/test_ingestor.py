"""EventIngestor's bookkeeping with an in-memory Redis and a scripted producer (unit level)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import fakeredis
import pytest
from aiokafka.structs import RecordMetadata
from ingest.dedup import DedupStore
from ingest.service import DedupRejectedError, EventIngestor, IngestMetrics, Outcome
from prometheus_client import CollectorRegistry
from streamrec_shared.kafka import KafkaUnavailableError
from streamrec_shared.schemas import EventIn


class ScriptedProducer:  # the part of ResilientProducer that EventIngestor uses
    """Acknowledges, fails or holds each send, as the test says."""

    def __init__(self, mode: str = "ack") -> None:
        self.mode = mode
        self.sent: list[tuple[str, bytes, bytes | None]] = []
        self.held: list[asyncio.Future[RecordMetadata]] = []

    async def send(
        self, topic: str, value: bytes, key: bytes | None = None, headers: object = None
    ) -> asyncio.Future[RecordMetadata]:
        if self.mode == "down":
            raise KafkaUnavailableError("not connected")
        self.sent.append((topic, value, key))
        future: asyncio.Future[RecordMetadata] = asyncio.get_running_loop().create_future()
        if self.mode == "ack":
            future.set_result(RecordMetadata(topic, 0, None, len(self.sent) - 1, -1, -1, None))
        elif self.mode == "fail":
            future.set_exception(RuntimeError("broker said no"))
        else:
            self.held.append(future)
        return future

    async def send_many(
        self, topic: str, records: list[tuple[bytes, bytes, object]]
    ) -> list[tuple[asyncio.Future[RecordMetadata], int]]:
        return [(await self.send(topic, value, key), 0) for key, value, _ in records]


def ingestor(
    producer: ScriptedProducer,
    dedup: DedupStore,
    accept: bool = True,
    timeout: float = 0.2,
) -> EventIngestor:
    return EventIngestor(
        producer,  # type: ignore[arg-type]
        dedup,
        IngestMetrics(CollectorRegistry()),
        topic="events",
        ack_timeout_s=timeout,
        accept_without_dedup=accept,
    )


def event(event_id: str | None = "e1", user: str = "u1") -> EventIn:
    return EventIn(event_id=event_id, user_id=user, item_id="i1", type="view")  # type: ignore[arg-type]


@pytest.fixture
async def redis() -> AsyncIterator[DedupStore]:
    store = DedupStore(fakeredis.FakeAsyncRedis(), "t:", window_s=60, pending_ttl_s=30)
    await store.start()
    yield store
    await store.stop()


async def test_stored_then_duplicate_with_original_offset(redis: DedupStore) -> None:
    producer = ScriptedProducer()
    first = await ingestor(producer, redis).ingest([event()])
    second = await ingestor(producer, redis).ingest([event()])
    assert first.results[0].outcome is Outcome.STORED
    assert second.results[0].outcome is Outcome.DUPLICATE
    assert (second.results[0].partition, second.results[0].offset) == (0, 0)
    assert len(producer.sent) == 1
    assert producer.sent[0][2] == b"u1"  # keyed by user


async def test_repeats_inside_one_batch_are_written_once(redis: DedupStore) -> None:
    producer = ScriptedProducer()
    report = await ingestor(producer, redis).ingest([event("a"), event("a"), event("b")])
    assert [r.outcome for r in report.results] == [
        Outcome.STORED,
        Outcome.DUPLICATE,
        Outcome.STORED,
    ]
    assert len(producer.sent) == 2
    # The repeat points at the record its first occurrence wrote.
    assert (report.results[1].partition, report.results[1].offset) == (
        report.results[0].partition,
        report.results[0].offset,
    )


async def test_a_repeat_of_a_failed_write_is_failed_too(redis: DedupStore) -> None:
    report = await ingestor(ScriptedProducer("fail"), redis).ingest([event("a"), event("a")])
    assert [r.outcome for r in report.results] == [Outcome.FAILED, Outcome.FAILED]
    retry = await ingestor(ScriptedProducer(), redis).ingest([event("a")])
    assert retry.results[0].outcome is Outcome.STORED


async def test_a_failed_write_releases_its_claim_so_a_retry_is_stored(
    redis: DedupStore,
) -> None:
    failing = await ingestor(ScriptedProducer("fail"), redis).ingest([event()])
    assert failing.results[0].outcome is Outcome.FAILED
    down = await ingestor(ScriptedProducer("down"), redis).ingest([event()])
    assert down.results[0].outcome is Outcome.FAILED
    retry = await ingestor(ScriptedProducer(), redis).ingest([event()])
    assert retry.results[0].outcome is Outcome.STORED


async def test_a_timed_out_write_is_recorded_when_the_broker_acks_late(
    redis: DedupStore,
) -> None:
    producer = ScriptedProducer("hold")
    service = ingestor(producer, redis, timeout=0.05)
    report = await service.ingest([event()])
    assert report.results[0].outcome is Outcome.FAILED
    # While unresolved, a retry must neither be written nor be called a duplicate.
    retry = await ingestor(ScriptedProducer(), redis).ingest([event()])
    assert retry.results[0].outcome is Outcome.IN_FLIGHT
    producer.held[0].set_result(RecordMetadata("events", 2, None, 7, -1, -1, None))
    await asyncio.sleep(0.05)
    late = await ingestor(ScriptedProducer(), redis).ingest([event()])
    assert late.results[0].outcome is Outcome.DUPLICATE
    assert (late.results[0].partition, late.results[0].offset) == (2, 7)


async def test_without_redis_events_are_accepted_unchecked_or_rejected_by_setting() -> None:
    broken = DedupStore(fakeredis.FakeAsyncRedis(connected=False), "t:", 60, 30)
    await broken.start()
    producer = ScriptedProducer()
    report = await ingestor(producer, broken, accept=True).ingest([event("a"), event("a")])
    assert not report.deduplicated
    assert [r.outcome for r in report.results] == [Outcome.STORED, Outcome.DUPLICATE]
    with pytest.raises(DedupRejectedError):
        await ingestor(producer, broken, accept=False).ingest([event("b")])
    assert len(producer.sent) == 1


async def test_generated_ids_never_collide(redis: DedupStore) -> None:
    producer = ScriptedProducer()
    report = await ingestor(producer, redis).ingest([event(None), event(None)])
    assert report.count(Outcome.STORED) == 2
    assert report.results[0].event_id != report.results[1].event_id


async def test_server_generated_ids_skip_the_idempotency_store() -> None:
    broken = DedupStore(fakeredis.FakeAsyncRedis(connected=False), "t:", 60, 30)
    await broken.start()
    producer = ScriptedProducer()
    # Redis is down, yet events without a client id are stored and still count as deduplicated:
    # they cannot repeat.
    report = await ingestor(producer, broken, accept=False).ingest([event(None), event(None)])
    assert report.deduplicated
    assert report.count(Outcome.STORED) == 2
    await broken.stop()
