"""The feature updater: ``events`` → Redis features, exactly once, with a freshness metric.

Runs inside the inference service (``run_feature_updater``) or in its own process::

    python -m inference.updater            # until SIGTERM
    python -m inference.updater --rebuild  # delete this prefix's features, replay from the start

Every partition of ``events`` is assigned manually and positioned at the offsets stored in Redis
*with* the features (earliest where none are stored), never at the consumer group's committed
offsets: a batch and its position are one ``MULTI/EXEC`` (see :mod:`inference.features`), so
after any crash nothing is applied twice and nothing is skipped. The group
(``features_group``) only receives commits afterwards, so lag tools show how far behind we are.

Failures: an undecodable record goes to ``events.dlq`` (acknowledged before the batch that
skips it is applied); Redis down means log, back off and retry the *same* batch, never skip it;
a Kafka error closes the consumer and reconnects from the Redis positions.

Scaling out: one updater per deployment for now (inference replicas other than one should set
``run_feature_updater=false``). Several writers are *safe* — a batch that starts below the
stored position is refused and the loser seeks forward — but wasteful. To shard, give each
updater a disjoint set of partitions (e.g. ``partition % shards == index``; all of a user's
events are on one partition, so user keys never share writers) and keep one consumer group for
the commits; item scores are shared, and the optimistic transaction retries on contention.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import logging
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord, OffsetAndMetadata
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from redis.asyncio import Redis
from redis.exceptions import RedisError
from streamrec_shared.kafka import (
    KafkaUnavailableError,
    ResilientProducer,
    build_consumer,
    dead_letter,
    topic_partitions,
)
from streamrec_shared.observability import LATENCY_BUCKETS, configure_logging
from streamrec_shared.redis import build_redis
from streamrec_shared.tasks import BackgroundTask

from inference.config import InferenceSettings
from inference.features import (
    FeatureBatch,
    FeatureEvent,
    FeatureStore,
    PositionConflict,
    decode_event,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

FRESHNESS_BUCKETS = (
    0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1.0,
    2.0, 5.0, 10.0,
)  # fmt: skip
COMMIT_INTERVAL_S = 1.0
MAX_BACKOFF_S = 5.0

# (partition, offset, key, value, error)
DeadRecord = tuple[int, int, bytes | None, bytes | None, str]


class FeatureMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.freshness = Histogram(
            "inference_feature_freshness_seconds",
            "From ingest's receive time of an event to its features being in Redis (after EXEC).",
            buckets=FRESHNESS_BUCKETS,
            registry=registry,
        )
        self.applied = Counter(
            "inference_feature_events_applied",
            "Events applied to the Redis features.",
            registry=registry,
        )
        self.dead_lettered = Counter(
            "inference_feature_dead_letters",
            "Records the feature updater could not decode (sent to the dead-letter topic).",
            registry=registry,
        )
        self.apply_seconds = Histogram(
            "inference_feature_apply_seconds",
            "Duration of one batch's Redis transaction.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.retries = Counter(
            "inference_feature_retries",
            "Retries of the feature updater by cause.",
            ["cause"],
            registry=registry,
        )
        self.last_applied = Gauge(
            "inference_feature_last_applied_timestamp_seconds",
            "Wall time of the last applied batch.",
            registry=registry,
        )


class FeatureUpdater:
    def __init__(
        self,
        settings: InferenceSettings,
        redis: Redis,
        producer: ResilientProducer,
        metrics_registry: CollectorRegistry,
    ) -> None:
        self.settings = settings
        self.store = FeatureStore(redis, settings)
        self.producer = producer
        self.metrics = FeatureMetrics(metrics_registry)
        self.topic = settings.topics.events
        self._loop = BackgroundTask("feature-updater", self._run)
        self._uncommitted: dict[int, int] = {}
        self._committed_at = 0.0

    @property
    def running(self) -> bool:
        return self._loop.running

    async def start(self) -> None:
        self._loop.start()

    async def stop(self) -> None:
        # Safe at any point: Redis holds a batch with its position or neither of them.
        await self._loop.stop()

    # --- the loop ------------------------------------------------------------------------

    async def _run(self) -> None:
        failures = 0
        while True:
            consumer: AIOKafkaConsumer | None = None
            try:
                consumer, assigned = await self._connect()
                failures = 0
                await self._consume(consumer, assigned)
            except (KafkaError, OSError, KeyError) as error:
                # KeyError: the topic does not exist (yet).
                self.metrics.retries.labels("kafka").inc()
                log.warning("feature updater: kafka error, reconnecting: %r", error)
            except Exception:  # a bug must not end the updater silently; keep retrying
                self.metrics.retries.labels("unexpected").inc()
                log.exception("feature updater failed; restarting it")
            finally:
                if consumer is not None:
                    await self._close(consumer)
            failures += 1
            await asyncio.sleep(min(MAX_BACKOFF_S, 0.1 * 2**failures))

    async def _connect(self) -> tuple[AIOKafkaConsumer, list[TopicPartition]]:
        partitions = await topic_partitions(self.settings.kafka, self.topic)
        await self._retry_redis(self.store.migrate)  # a store an older version wrote
        positions = await self._retry_redis(functools.partial(self.store.positions, self.topic))
        consumer = build_consumer(self.settings.kafka, group_id=self.settings.features_group)
        try:
            await consumer.start()
            assigned = [TopicPartition(self.topic, p) for p in partitions]
            consumer.assign(assigned)
            for tp in assigned:
                if tp.partition in positions:
                    consumer.seek(tp, positions[tp.partition])
                else:
                    await consumer.seek_to_beginning(tp)
        except BaseException:
            await consumer.stop()
            raise
        log.info("feature updater following %s from %s", self.topic, positions or "the start")
        return consumer, assigned

    async def _consume(self, consumer: AIOKafkaConsumer, assigned: list[TopicPartition]) -> None:
        by_partition = {tp.partition: tp for tp in assigned}
        while True:
            fetched = await consumer.getmany(
                timeout_ms=100, max_records=self.settings.features_fetch_max_records
            )
            if not fetched:
                await self._maybe_commit(consumer)
                continue
            batch, dead = self._decode(fetched)
            if dead:
                await self._park(dead)
            try:
                started = time.perf_counter()
                await self._retry_redis(functools.partial(self.store.apply, batch))
            except PositionConflict as conflict:
                # Already applied (our EXEC's reply was lost, or another writer got there):
                # continue after what Redis holds, re-read the rest of the batch.
                self.metrics.retries.labels("conflict").inc()
                log.info("feature batch already applied, skipping to %s", conflict.stored)
                for partition, first in batch.first.items():
                    consumer.seek(
                        by_partition[partition], max(first, conflict.stored.get(partition, first))
                    )
                continue
            self._observe(batch.events, time.perf_counter() - started)
            self._uncommitted.update(batch.next)
            await self._maybe_commit(consumer)

    def _decode(
        self, fetched: dict[TopicPartition, list[ConsumerRecord]]
    ) -> tuple[FeatureBatch, list[DeadRecord]]:
        events: list[FeatureEvent] = []
        dead: list[DeadRecord] = []
        first: dict[int, int] = {}
        after: dict[int, int] = {}
        for tp, records in fetched.items():
            for record in records:
                partition, offset, value = tp.partition, record.offset, record.value
                first.setdefault(partition, offset)
                after[partition] = offset + 1
                try:
                    event = decode_event(value or b"")
                except ValueError as error:
                    dead.append((partition, offset, record.key, value, str(error)))
                    continue
                if event is not None:
                    events.append(event)
        return FeatureBatch(self.topic, events, first, after), dead

    def _observe(self, events: Sequence[FeatureEvent], apply_s: float) -> None:
        now = time.time()
        freshness = self.metrics.freshness
        for event in events:
            freshness.observe(max(0.0, now - event.received_at))
        self.metrics.applied.inc(len(events))
        self.metrics.apply_seconds.observe(apply_s)
        self.metrics.last_applied.set(now)

    # --- failure handling ----------------------------------------------------------------

    async def _retry_redis(self, operation: Callable[[], Awaitable[T]]) -> T:
        """Run ``operation`` until Redis answers; ``PositionConflict`` passes through."""
        attempt = 0
        while True:
            try:
                return await operation()
            except (RedisError, OSError) as error:
                attempt += 1
                self.metrics.retries.labels("redis").inc()
                if attempt == 1 or attempt % 50 == 0:
                    log.warning(
                        "feature updater: redis unavailable (attempt %d): %r", attempt, error
                    )
                await asyncio.sleep(min(MAX_BACKOFF_S, 0.05 * 2 ** min(attempt, 10)))

    async def _park(self, dead: list[DeadRecord]) -> None:
        """Every undecodable record onto the dead-letter topic before its batch is applied."""
        for partition, offset, key, value, error in dead:
            attempt = 0
            while True:
                try:
                    await dead_letter(
                        self.producer,
                        self.settings.topics.events_dlq,
                        (self.topic, partition, offset),
                        key,
                        value,
                        error,
                    )
                    break
                except (KafkaUnavailableError, KafkaError, OSError) as failure:
                    attempt += 1
                    self.metrics.retries.labels("dead_letter").inc()
                    if attempt == 1:
                        log.warning("feature updater: dead-letter topic unavailable: %r", failure)
                    await asyncio.sleep(min(MAX_BACKOFF_S, 0.1 * 2 ** min(attempt, 6)))
            self.metrics.dead_lettered.inc()

    async def _maybe_commit(self, consumer: AIOKafkaConsumer, force: bool = False) -> None:
        """Commit the applied positions to the group, at most once a second (for lag display;
        Redis holds the positions that count)."""
        if not self._uncommitted:
            return
        if not force and time.monotonic() - self._committed_at < COMMIT_INTERVAL_S:
            return
        offsets = {
            TopicPartition(self.topic, p): OffsetAndMetadata(o, "")
            for p, o in self._uncommitted.items()
        }
        self._committed_at = time.monotonic()
        try:
            await consumer.commit(offsets)
            self._uncommitted.clear()
        except (KafkaError, OSError) as error:
            log.warning("feature updater could not commit offsets: %r", error)

    async def _close(self, consumer: AIOKafkaConsumer) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._maybe_commit(consumer, force=True), 5.0)
        with contextlib.suppress(Exception):
            await consumer.stop()


# --- its own process -----------------------------------------------------------------------


async def run_updater(
    settings: InferenceSettings, registry: CollectorRegistry, rebuild: bool, stop: asyncio.Event
) -> None:
    redis = build_redis(settings.redis)
    producer = ResilientProducer(settings.kafka)
    await producer.start(wait_s=5)
    try:
        updater = FeatureUpdater(settings, redis, producer, registry)
        if rebuild:
            deleted = await updater.store.clear()
            log.info("rebuild: deleted %d feature keys; replaying %s", deleted, updater.topic)
        await updater.start()
        await stop.wait()
        await updater.stop()
    finally:
        await producer.stop()
        await redis.aclose()


def main(argv: list[str] | None = None) -> int:
    settings = InferenceSettings()
    parser = argparse.ArgumentParser(
        prog="python -m inference.updater", description="Keep the Redis features up to date."
    )
    parser.add_argument(
        "--rebuild",
        action="store_true",
        help="delete this prefix's feature keys, then replay events from the beginning "
        "(stop every other feature updater of this prefix first)",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=settings.port,
        help="serve Prometheus metrics on this port (0: none)",
    )
    parser.add_argument(
        "--metrics-host",
        default="0.0.0.0",  # noqa: S104 - in a container; local runs pass 127.0.0.1
        help="address the metrics server binds",
    )
    args = parser.parse_args(argv)
    configure_logging(settings.log, "inference-features")
    registry = CollectorRegistry()
    if args.metrics_port:
        start_http_server(args.metrics_port, addr=args.metrics_host, registry=registry)

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await run_updater(settings, registry, args.rebuild, stop)

    asyncio.run(serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
