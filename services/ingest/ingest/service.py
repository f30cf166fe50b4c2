"""Ingest logic, free of HTTP: deduplicate, produce, wait for the brokers, report per event.

Batches are *not* all-or-nothing: Kafka cannot atomically write records to several partitions
without transactions, which would serialize every request. Instead every event of a request gets
its own outcome (stored with partition/offset, duplicate, or failed); the request succeeds only if
none failed. Retrying a failed request with the same ``event_id``s is always safe: stored events
come back as duplicates, the rest are written.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

from aiokafka.errors import KafkaError
from aiokafka.structs import RecordMetadata
from prometheus_client import CollectorRegistry, Counter, Histogram
from streamrec_shared.kafka import KafkaUnavailableError, ResilientProducer
from streamrec_shared.observability import LATENCY_BUCKETS
from streamrec_shared.schemas.events import EventIn, new_event_id

from ingest.dedup import Claim, ClaimState, DedupStore, DedupUnavailableError

log = logging.getLogger(__name__)

_TIMED_OUT = "timed out waiting for Kafka"
_FRESH = Claim(ClaimState.NEW)


class Outcome(StrEnum):
    STORED = "stored"
    DUPLICATE = "duplicate"
    IN_FLIGHT = "in_flight"  # the same event_id is being written by another request right now
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class EventResult:
    event_id: str
    outcome: Outcome
    partition: int | None = None
    offset: int | None = None
    error: str | None = None

    def as_dict(self) -> dict[str, object]:
        result: dict[str, object] = {"event_id": self.event_id, "status": self.outcome.value}
        if self.partition is not None:
            result["partition"] = self.partition
            result["offset"] = self.offset
        if self.error:
            result["error"] = self.error
        return result


@dataclass(frozen=True, slots=True)
class IngestReport:
    results: list[EventResult]
    deduplicated: bool  # False when Redis was unreachable and events went in unchecked

    def count(self, outcome: Outcome) -> int:
        return sum(1 for r in self.results if r.outcome is outcome)


class IngestMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.events = Counter(
            "ingest_events_total", "Events by outcome.", ["outcome"], registry=registry
        )
        self.ack_latency = Histogram(
            "ingest_kafka_ack_seconds",
            "From handing a request's events to the producer to the last broker acknowledgement.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.dedup_unavailable = Counter(
            "ingest_dedup_unavailable_total",
            "Requests whose idempotency check could not reach Redis.",
            registry=registry,
        )


class DedupRejectedError(RuntimeError):
    """Redis is down and the settings say not to ingest without the idempotency check."""


class EventIngestor:
    def __init__(
        self,
        producer: ResilientProducer,
        dedup: DedupStore,
        metrics: IngestMetrics,
        topic: str,
        ack_timeout_s: float,
        accept_without_dedup: bool,
    ) -> None:
        self._producer = producer
        self._dedup = dedup
        self._metrics = metrics
        self._topic = topic
        self._ack_timeout_s = ack_timeout_s
        self._accept_without_dedup = accept_without_dedup
        self._background: set[asyncio.Task[None]] = set()

    async def ingest(self, events: Sequence[EventIn]) -> IngestReport:
        received_at = _now_ms()
        event_ids = [event.event_id or new_event_id() for event in events]
        claims, deduplicated = await self._claim(events)

        results: list[EventResult | None] = [None] * len(events)
        to_write: list[int] = []  # indexes of the events this request writes
        repeats: dict[int, int] = {}  # index of a repeated id -> index of its first occurrence
        first_index: dict[str, int] = {}
        for index, (event_id, claim) in enumerate(zip(event_ids, claims, strict=True)):
            if event_id in first_index:
                repeats[index] = first_index[event_id]
            elif claim.state is ClaimState.DUPLICATE:
                results[index] = EventResult(
                    event_id, Outcome.DUPLICATE, claim.partition, claim.offset
                )
            elif claim.state is ClaimState.IN_FLIGHT:
                results[index] = EventResult(event_id, Outcome.IN_FLIGHT)
            else:
                first_index[event_id] = index
                to_write.append(index)

        late: list[tuple[str, asyncio.Future[RecordMetadata], int]] = []
        if to_write:
            late = await self._write(to_write, event_ids, events, received_at, results)
        for index, first in repeats.items():
            # A repeat inside the request shares its first occurrence's fate.
            original = results[first]
            assert original is not None
            outcome: Outcome = (
                Outcome.DUPLICATE if original.outcome is Outcome.STORED else original.outcome
            )
            results[index] = dataclasses.replace(original, outcome=outcome)

        final = [result for result in results if result is not None]
        if deduplicated:
            self._settle(final, {event_ids[i] for i in to_write if events[i].event_id}, late)
        for outcome, count in collections.Counter(r.outcome for r in final).items():
            self._metrics.events.labels(outcome.value).inc(count)
        return IngestReport(final, deduplicated)

    async def _claim(self, events: Sequence[EventIn]) -> tuple[list[Claim], bool]:
        """A claim per event. Only client-supplied ids can repeat; generated ones are fresh
        uuid4s and skip the Redis round trip altogether."""
        client_ids = [event.event_id for event in events if event.event_id is not None]
        if not client_ids:
            return [_FRESH] * len(events), True
        try:
            from_redis = iter(await self._dedup.claim(client_ids))
            return [next(from_redis) if e.event_id is not None else _FRESH for e in events], True
        except DedupUnavailableError as error:
            self._metrics.dedup_unavailable.inc()
            if not self._accept_without_dedup:
                raise DedupRejectedError(str(error)) from error
            # Repeats inside the request are still collapsed (by the caller).
            log.warning("idempotency check skipped, redis unavailable: %s", error)
            return [_FRESH] * len(events), False

    async def _write(
        self,
        to_write: Sequence[int],
        event_ids: Sequence[str],
        events: Sequence[EventIn],
        received_at: datetime,
        results: list[EventResult | None],
    ) -> list[tuple[str, asyncio.Future[RecordMetadata], int]]:
        """Produce ``events[to_write]``, fill in their results; return the writes whose
        acknowledgement did not come in time (event id, future, offset delta)."""
        sent_at = time.perf_counter()
        try:
            placed = await self._produce([(event_ids[i], events[i], received_at) for i in to_write])
        except (KafkaUnavailableError, KafkaError, ValueError) as error:
            for i in to_write:
                results[i] = EventResult(event_ids[i], Outcome.FAILED, error=str(error))
            return []
        _, not_done = await asyncio.wait(
            {future for future, _ in placed}, timeout=self._ack_timeout_s
        )
        self._metrics.ack_latency.observe(time.perf_counter() - sent_at)
        late = []
        for i, (future, position) in zip(to_write, placed, strict=True):
            if future in not_done:
                results[i] = EventResult(event_ids[i], Outcome.FAILED, error=_TIMED_OUT)
                late.append((event_ids[i], future, position))
            elif (failure := future.exception()) is not None:
                results[i] = EventResult(event_ids[i], Outcome.FAILED, error=str(failure))
            else:
                metadata = future.result()
                results[i] = EventResult(
                    event_ids[i], Outcome.STORED, metadata.partition, metadata.offset + position
                )
        return late

    async def _produce(
        self, batch: Sequence[tuple[str, EventIn, datetime]]
    ) -> list[tuple[asyncio.Future[RecordMetadata], int]]:
        """Hand records to the producer: per record, its delivery future and offset delta."""
        records = [
            (event.user_id.encode(), event.record_value(event_id, received_at),
             (("event_id", event_id.encode()),))
            for event_id, event, received_at in batch
        ]  # fmt: skip
        if len(records) == 1:
            # One record: the producer's own batching merges it with other requests' records.
            key, value, headers = records[0]
            future = await self._producer.send(self._topic, value, key=key, headers=headers)
            return [(future, 0)]
        return await self._producer.send_many(self._topic, records)

    def _settle(
        self,
        results: Sequence[EventResult],
        claimed: set[str],
        late: Sequence[tuple[str, asyncio.Future[RecordMetadata], int]],
    ) -> None:
        """Confirm stored claims and release failed ones, for the ids this request claimed.

        Queued, not awaited: the client's answer depends on Kafka, not on this bookkeeping. A
        confirmation lost to a crash leaves a pending key that expires: a later retry is then
        written twice (a duplicate, never a loss). Writes still unacknowledged at the answer may
        yet be stored: they are settled when the broker answers, so that the client's retry is
        then recognized as a duplicate.
        """
        pending = {event_id for event_id, _, _ in late}
        stored, failed = [], []
        for r in results:
            if r.event_id not in claimed or r.event_id in pending:
                continue
            if r.outcome is Outcome.STORED and r.partition is not None and r.offset is not None:
                stored.append((r.event_id, r.partition, r.offset))
            elif r.outcome is Outcome.FAILED:
                failed.append(r.event_id)
        self._dedup.confirm(stored)
        self._dedup.release(failed)
        late = [entry for entry in late if entry[0] in claimed]
        if late:
            task = asyncio.create_task(self._settle_late(late))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _settle_late(
        self, late: Sequence[tuple[str, asyncio.Future[RecordMetadata], int]]
    ) -> None:
        await asyncio.wait({future for _, future, _ in late})
        stored = []
        failed = []
        for event_id, future, position in late:
            if future.exception() is None:
                metadata = future.result()
                stored.append((event_id, metadata.partition, metadata.offset + position))
            else:
                failed.append(event_id)
        self._dedup.confirm(stored)
        self._dedup.release(failed)


def _now_ms() -> datetime:
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)
