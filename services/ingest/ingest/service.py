"""Ingest logic, free of HTTP: deduplicate, produce, wait for the brokers, report per event.

Batches are *not* all-or-nothing: Kafka cannot atomically write records to several partitions
without transactions, which would serialize every request. Instead every event of a request gets
its own outcome (stored with partition/offset, duplicate, or failed); the request succeeds only if
none failed. Retrying a failed request with the same ``event_id``s is always safe: stored events
come back as duplicates, the rest are written.
"""

from __future__ import annotations

import asyncio
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
from streamrec_shared.schemas.events import EventIn, EventRecord

from ingest.dedup import Claim, ClaimState, DedupStore, DedupUnavailableError

log = logging.getLogger(__name__)

_TIMED_OUT = "timed out waiting for Kafka"


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

    @property
    def all_accepted(self) -> bool:
        return all(r.outcome in (Outcome.STORED, Outcome.DUPLICATE) for r in self.results)

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
        records = [event.to_record(received_at) for event in events]
        claims, deduplicated = await self._claim(records)

        results: list[EventResult | None] = [None] * len(records)
        pending: dict[int, asyncio.Future[RecordMetadata]] = {}
        first_index: dict[str, int] = {}
        sent_at = time.perf_counter()
        for index, (record, claim) in enumerate(zip(records, claims, strict=True)):
            if claim.state is ClaimState.DUPLICATE:
                results[index] = EventResult(
                    record.event_id, Outcome.DUPLICATE, claim.partition, claim.offset
                )
            elif claim.state is ClaimState.IN_FLIGHT:
                # Another request holds this id, or an earlier event of this very request does.
                earlier = first_index.get(record.event_id)
                outcome = Outcome.DUPLICATE if earlier is not None else Outcome.IN_FLIGHT
                results[index] = EventResult(record.event_id, outcome)
            else:
                first_index[record.event_id] = index
                try:
                    pending[index] = await self._send(record)
                except (KafkaUnavailableError, KafkaError) as error:
                    results[index] = EventResult(record.event_id, Outcome.FAILED, error=str(error))

        if pending:
            done, not_done = await asyncio.wait(pending.values(), timeout=self._ack_timeout_s)
            self._metrics.ack_latency.observe(time.perf_counter() - sent_at)
            for index, future in pending.items():
                record = records[index]
                if future in done and future.exception() is None:
                    metadata = future.result()
                    results[index] = EventResult(
                        record.event_id, Outcome.STORED, metadata.partition, metadata.offset
                    )
                else:
                    reason = _TIMED_OUT if future in not_done else str(future.exception())
                    results[index] = EventResult(record.event_id, Outcome.FAILED, error=reason)
            if not_done and deduplicated:
                # The records may still be written after we answered 503: record the outcome
                # when it comes, so that the client's retry is recognized as a duplicate.
                late = {records[i].event_id: f for i, f in pending.items() if f in not_done}
                self._settle_later(late)

        final = [result for result in results if result is not None]
        if deduplicated:
            self._settle(final, first_index, records)
        for result in final:
            self._metrics.events.labels(result.outcome.value).inc()
        return IngestReport(final, deduplicated)

    async def _claim(self, records: Sequence[EventRecord]) -> tuple[list[Claim], bool]:
        try:
            return await self._dedup.claim([r.event_id for r in records]), True
        except DedupUnavailableError as error:
            self._metrics.dedup_unavailable.inc()
            if not self._accept_without_dedup:
                raise DedupRejectedError(str(error)) from error
            log.warning("idempotency check skipped, redis unavailable: %s", error)
            # Without Redis, still collapse repeats inside the request itself.
            seen: set[str] = set()
            claims = []
            for record in records:
                state = ClaimState.IN_FLIGHT if record.event_id in seen else ClaimState.NEW
                seen.add(record.event_id)
                claims.append(Claim(state))
            return claims, False

    async def _send(self, record: EventRecord) -> asyncio.Future[RecordMetadata]:
        return await self._producer.send(
            self._topic,
            value=record.model_dump_json().encode(),
            key=record.user_id.encode(),
            headers=(("event_id", record.event_id.encode()),),
        )

    def _settle(
        self,
        results: Sequence[EventResult],
        first_index: dict[str, int],
        records: Sequence[EventRecord],
    ) -> None:
        """Confirm stored claims, release failed ones (only claims this request made).

        Queued, not awaited: the client's answer depends on Kafka, not on this bookkeeping. A
        confirmation lost to a crash leaves a pending key that expires: a later retry is then
        written twice (a duplicate, never a loss).
        """
        ours = {records[i].event_id for i in first_index.values()}
        self._dedup.confirm(
            [
                (r.event_id, r.partition, r.offset or 0)
                for r in results
                if r.outcome is Outcome.STORED and r.partition is not None
            ]
        )
        self._dedup.release(
            [
                r.event_id
                for r in results
                if r.outcome is Outcome.FAILED and r.event_id in ours and r.error != _TIMED_OUT
            ]
        )

    def _settle_later(self, futures: dict[str, asyncio.Future[RecordMetadata]]) -> None:
        async def settle() -> None:
            await asyncio.wait(futures.values())
            stored = []
            failed = []
            for event_id, future in futures.items():
                if future.exception() is None:
                    metadata = future.result()
                    stored.append((event_id, metadata.partition, metadata.offset))
                else:
                    failed.append(event_id)
            self._dedup.confirm(stored)
            self._dedup.release(failed)

        task = asyncio.create_task(settle())
        self._background.add(task)
        task.add_done_callback(self._background.discard)


def _now_ms() -> datetime:
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)
