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
        event_ids = [event.event_id or new_event_id() for event in events]
        # Only client-supplied ids can repeat; generated ones are fresh uuid4s, so they skip the
        # Redis round trip altogether.
        client_ids = [event.event_id for event in events if event.event_id is not None]
        claims, deduplicated = await self._claim(client_ids) if client_ids else ([], True)
        if len(client_ids) < len(events):
            from_client = iter(claims)
            claims = [
                next(from_client) if event.event_id is not None else _FRESH for event in events
            ]

        results: list[EventResult | None] = [None] * len(events)
        to_write: list[int] = []  # indexes of the events this request writes
        first_index: dict[str, int] = {}
        for index, (event_id, claim) in enumerate(zip(event_ids, claims, strict=True)):
            if claim.state is ClaimState.DUPLICATE:
                results[index] = EventResult(
                    event_id, Outcome.DUPLICATE, claim.partition, claim.offset
                )
            elif claim.state is ClaimState.IN_FLIGHT:
                # Another request holds this id, or an earlier event of this very request does.
                earlier = first_index.get(event_id)
                outcome = Outcome.DUPLICATE if earlier is not None else Outcome.IN_FLIGHT
                results[index] = EventResult(event_id, outcome)
            else:
                first_index[event_id] = index
                to_write.append(index)

        not_done: set[asyncio.Future[RecordMetadata]] = set()
        if to_write:
            sent_at = time.perf_counter()
            try:
                placed = await self._produce(
                    [(event_ids[i], events[i], received_at) for i in to_write]
                )
            except (KafkaUnavailableError, KafkaError, ValueError) as error:
                for i in to_write:
                    results[i] = EventResult(event_ids[i], Outcome.FAILED, error=str(error))
            else:
                _, not_done = await asyncio.wait(
                    {future for future, _ in placed}, timeout=self._ack_timeout_s
                )
                self._metrics.ack_latency.observe(time.perf_counter() - sent_at)
                for i, (future, position) in zip(to_write, placed, strict=True):
                    if future in not_done:
                        results[i] = EventResult(event_ids[i], Outcome.FAILED, error=_TIMED_OUT)
                    elif (failure := future.exception()) is not None:
                        results[i] = EventResult(event_ids[i], Outcome.FAILED, error=str(failure))
                    else:
                        metadata = future.result()
                        results[i] = EventResult(
                            event_ids[i], Outcome.STORED, metadata.partition,
                            metadata.offset + position,
                        )  # fmt: skip
                if not_done and deduplicated and client_ids:
                    # The records may still be written after we answered 503: record the outcome
                    # when it comes, so that the client's retry is recognized as a duplicate.
                    late = zip(to_write, placed, strict=True)
                    self._settle_later(
                        [(event_ids[i], f, p) for i, (f, p) in late if f in not_done]
                    )

        final = [result for result in results if result is not None]
        if deduplicated and client_ids:
            self._settle(final, set(client_ids))
        for outcome, count in collections.Counter(r.outcome for r in final).items():
            self._metrics.events.labels(outcome.value).inc(count)
        return IngestReport(final, deduplicated)

    async def _claim(self, event_ids: Sequence[str]) -> tuple[list[Claim], bool]:
        try:
            return await self._dedup.claim(event_ids), True
        except DedupUnavailableError as error:
            self._metrics.dedup_unavailable.inc()
            if not self._accept_without_dedup:
                raise DedupRejectedError(str(error)) from error
            log.warning("idempotency check skipped, redis unavailable: %s", error)
            # Without Redis, still collapse repeats inside the request itself.
            seen: set[str] = set()
            claims = []
            for event_id in event_ids:
                claims.append(Claim(ClaimState.IN_FLIGHT if event_id in seen else ClaimState.NEW))
                seen.add(event_id)
            return claims, False

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

    def _settle(self, results: Sequence[EventResult], ours: set[str]) -> None:
        """Confirm stored claims, release failed ones (only client ids this request claimed).

        Queued, not awaited: the client's answer depends on Kafka, not on this bookkeeping. A
        confirmation lost to a crash leaves a pending key that expires: a later retry is then
        written twice (a duplicate, never a loss).
        """
        self._dedup.confirm(
            [
                (r.event_id, r.partition, r.offset or 0)
                for r in results
                if r.outcome is Outcome.STORED and r.partition is not None and r.event_id in ours
            ]
        )
        self._dedup.release(
            [
                r.event_id
                for r in results
                if r.outcome is Outcome.FAILED and r.event_id in ours and r.error != _TIMED_OUT
            ]
        )

    def _settle_later(
        self, pending: Sequence[tuple[str, asyncio.Future[RecordMetadata], int]]
    ) -> None:
        async def settle() -> None:
            await asyncio.wait({future for _, future, _ in pending})
            stored = []
            failed = []
            for event_id, future, position in pending:
                if future.exception() is None:
                    metadata = future.result()
                    stored.append((event_id, metadata.partition, metadata.offset + position))
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
