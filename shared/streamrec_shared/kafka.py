"""The one place that builds Kafka clients and topics.

aiokafka's defaults are weaker than the Java client's (acks=1, no idempotence); every producer in
the platform is built here with ``acks="all"`` and idempotence on, so "acknowledged" means "on
every in-sync replica".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.structs import RecordMetadata

from streamrec_shared.settings import KafkaSettings, TopicSettings

log = logging.getLogger(__name__)


class KafkaUnavailableError(RuntimeError):
    """The brokers cannot be reached (yet); callers answer 503 and let the client retry."""


def client_options(settings: KafkaSettings) -> dict[str, Any]:
    """Connection options common to producers, consumers and admin clients."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap_servers,
        "client_id": settings.client_id,
        "security_protocol": settings.security_protocol,
        "request_timeout_ms": settings.request_timeout_ms,
    }
    if settings.security_protocol in ("SSL", "SASL_SSL"):
        from aiokafka.helpers import create_ssl_context

        options["ssl_context"] = create_ssl_context()
    if settings.sasl_mechanism:
        options["sasl_mechanism"] = settings.sasl_mechanism
        options["sasl_plain_username"] = settings.sasl_username
        options["sasl_plain_password"] = (
            settings.sasl_password.get_secret_value() if settings.sasl_password else None
        )
    return options


def build_producer(settings: KafkaSettings) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        **client_options(settings),
        acks="all",
        enable_idempotence=True,
        linger_ms=settings.linger_ms,
        max_batch_size=settings.max_batch_bytes,
        compression_type=None if settings.compression == "none" else settings.compression,
    )


def build_consumer(
    settings: KafkaSettings, *topics: str, group_id: str | None, **overrides: Any
) -> AIOKafkaConsumer:
    """A consumer that never auto-commits: callers commit ``offset + 1`` after their work."""
    options: dict[str, Any] = {
        **client_options(settings),
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "isolation_level": "read_committed",
        **overrides,
    }
    return AIOKafkaConsumer(*topics, **options)


class ResilientProducer:
    """An idempotent, acks=all producer that tolerates brokers being down at start-up.

    ``AIOKafkaProducer.start()`` fails outright when no broker answers, which would crash a
    service that starts before Kafka (normal on Kubernetes). This keeps retrying in the background;
    until it connects, ``send`` raises :class:`KafkaUnavailableError`. Once connected, aiokafka
    itself reconnects after broker restarts.
    """

    def __init__(self, settings: KafkaSettings, retry_interval_s: float = 1.0) -> None:
        self._settings = settings
        self._retry_interval_s = retry_interval_s
        self._producer: AIOKafkaProducer | None = None
        self._connector: asyncio.Task[None] | None = None
        self._last_probe: tuple[float, bool] = (0.0, False)
        self._partitioner = DefaultPartitioner()

    async def start(self, wait_s: float = 0.0) -> None:
        """Begin connecting; wait up to ``wait_s`` seconds for the first connection."""
        self._connector = asyncio.create_task(self._connect_forever(), name="kafka-connect")
        if wait_s > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._connector), wait_s)

    async def _connect_forever(self) -> None:
        while True:
            producer = build_producer(self._settings)
            try:
                await producer.start()
            except KafkaError as error:
                await producer.stop()
                log.warning("kafka not reachable yet: %s", error)
                await asyncio.sleep(self._retry_interval_s)
                continue
            self._producer = producer
            log.info("kafka producer connected to %s", self._settings.bootstrap_servers)
            return

    @property
    def connected(self) -> bool:
        return self._producer is not None

    async def send(
        self,
        topic: str,
        value: bytes,
        key: bytes | None = None,
        headers: Sequence[tuple[str, bytes]] | None = None,
    ) -> asyncio.Future[RecordMetadata]:
        """Queue one record; the returned future resolves when every in-sync replica has it."""
        if self._producer is None:
            raise KafkaUnavailableError("not connected to Kafka")
        future: asyncio.Future[RecordMetadata] = await self._producer.send(
            topic, value=value, key=key, headers=list(headers) if headers else None
        )
        return future

    async def send_many(
        self, topic: str, records: Sequence[tuple[bytes, bytes, Sequence[tuple[str, bytes]]]]
    ) -> list[tuple[asyncio.Future[RecordMetadata], int]]:
        """Queue ``(key, value, headers)`` records as one batch per partition.

        Returns, per record, its batch's future and its index in that batch: the record's offset
        is the batch's base offset plus the index. aiokafka's per-record ``send`` costs tens of
        microseconds (a future and a partitioner call each); building one batch per partition is
        several times cheaper for multi-record requests. Partitioning is the default murmur2 on
        the key, the same as ``send`` and the Java client, so a user's events stay in order.
        """
        if self._producer is None:
            raise KafkaUnavailableError("not connected to Kafka")
        producer = self._producer
        partitions = sorted(await producer.partitions_for(topic))
        batches: list[tuple[int, Any]] = []  # (partition, builder), in creation order
        open_batch: dict[int, int] = {}  # partition -> index in batches of its open batch
        placed: list[tuple[int, int]] = []  # per record: (index in batches, index in batch)
        sizes: list[int] = []  # records per batch
        for key, value, headers in records:
            partition = self._partitioner(key, partitions, partitions)
            slot = open_batch.get(partition)
            record = {"timestamp": None, "key": key, "value": value, "headers": list(headers)}
            if slot is None or batches[slot][1].append(**record) is None:
                # No batch for this partition yet, or it is full: start another (an empty
                # batch always takes its first record; the broker judges its size).
                slot = len(batches)
                batches.append((partition, producer.create_batch()))
                sizes.append(0)
                open_batch[partition] = slot
                batches[slot][1].append(**record)
            placed.append((slot, sizes[slot]))
            sizes[slot] += 1
        futures = [
            await producer.send_batch(builder, topic, partition=partition)
            for partition, builder in batches
        ]
        return [(futures[slot], index) for slot, index in placed]

    async def reachable(self, timeout_s: float = 2.0, cache_s: float = 1.0) -> bool:
        """Whether a broker answers a metadata request now (cached briefly for probes)."""
        checked_at, ok = self._last_probe
        if time.monotonic() - checked_at < cache_s:
            return ok
        ok = False
        if self._producer is not None:
            try:
                await asyncio.wait_for(self._producer.client.fetch_all_metadata(), timeout_s)
                ok = bool(self._producer.client.cluster.brokers())
            except (KafkaError, TimeoutError, OSError):
                ok = False
        self._last_probe = (time.monotonic(), ok)
        return ok

    async def stop(self) -> None:
        if self._connector is not None and not self._connector.done():
            self._connector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._connector
        if self._producer is not None:
            # Flushes what is queued: records already acknowledged to clients are on the broker,
            # the rest were never acknowledged.
            await self._producer.stop()
            self._producer = None


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str]


def platform_topics(topics: TopicSettings) -> list[TopicSpec]:
    """Every topic the platform uses, with its layout."""
    durable = {"min.insync.replicas": str(topics.min_insync_replicas)}
    return [
        TopicSpec(topics.events, topics.events_partitions, {**durable, "retention.ms": "-1"}),
        # Control messages are the coordination log: kept forever, in order (one partition).
        TopicSpec(topics.control, topics.control_partitions, {**durable, "retention.ms": "-1"}),
        TopicSpec(topics.events_dlq, topics.default_partitions, durable),
        TopicSpec(topics.impressions, topics.events_partitions, durable),
        TopicSpec(topics.rec_requests, topics.default_partitions, durable),
        TopicSpec(topics.rec_responses, topics.default_partitions, durable),
    ]


async def ensure_topics(
    kafka: KafkaSettings, topics: TopicSettings, specs: Sequence[TopicSpec] | None = None
) -> dict[str, str]:
    """Create missing topics; leave existing ones alone. Returns ``{name: "created"|"exists"}``.

    Partition counts of existing topics are never changed here: adding partitions to ``events``
    would move users to other partitions and break per-user ordering.
    """
    specs = list(specs) if specs is not None else platform_topics(topics)
    admin = AIOKafkaAdminClient(**client_options(kafka))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        outcome = {spec.name: "exists" for spec in specs if spec.name in existing}
        missing = [spec for spec in specs if spec.name not in existing]
        if missing:
            response = await admin.create_topics(
                [
                    NewTopic(
                        name=spec.name,
                        num_partitions=spec.partitions,
                        replication_factor=topics.replication_factor,
                        topic_configs=spec.config,
                    )
                    for spec in missing
                ],
                timeout_ms=kafka.request_timeout_ms,
            )
            for name, code, *rest in response.topic_errors:
                if code == 0:
                    outcome[name] = "created"
                elif code == TopicAlreadyExistsError.errno:
                    outcome[name] = "exists"  # raced with another creator: fine
                else:
                    message = rest[0] if rest else ""
                    raise KafkaError(f"creating topic {name} failed: error {code} {message}")
        return outcome
    finally:
        await admin.close()


async def dead_letter(
    producer: ResilientProducer,
    dlq_topic: str,
    source: tuple[str, int, int],
    key: bytes | None,
    value: bytes | None,
    error: str,
) -> None:
    """Park a record a consumer cannot use on the dead-letter topic, with where it came from.

    The original key and bytes are kept as they were, so an operator can replay them once the
    cause is fixed. Waits for the broker's acknowledgement: the caller moves past the record only
    after it is safely parked.
    """
    topic, partition, offset = source
    headers = [
        ("x-dlq-source", f"{topic}/{partition}/{offset}".encode()),
        ("x-dlq-error", error[:1000].encode()),
    ]
    future = await producer.send(dlq_topic, value or b"", key=key, headers=headers)
    await future


async def topic_partitions(settings: KafkaSettings, topic: str) -> list[int]:
    """The partition numbers of ``topic``; ``KeyError`` when it does not exist."""
    admin = AIOKafkaAdminClient(**client_options(settings))
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic])
    finally:
        await admin.close()
    if described["error_code"] != 0:
        raise KeyError(topic)
    return sorted(p["partition"] for p in described["partitions"])


async def partition_bounds(settings: KafkaSettings, topic: str) -> dict[int, tuple[int, int]]:
    """``{partition: (first stored offset, end offset)}`` of a topic, right now."""
    partitions = [TopicPartition(topic, p) for p in await topic_partitions(settings, topic)]
    consumer = build_consumer(settings, group_id=f"streamrec-bounds-{uuid.uuid4().hex}")
    await consumer.start()
    try:
        begins = await consumer.beginning_offsets(partitions)
        ends = await consumer.end_offsets(partitions)
        return {tp.partition: (begins[tp], ends[tp]) for tp in partitions}
    finally:
        await consumer.stop()


async def _start_fully(consumer: AIOKafkaConsumer, grace_s: float = 10.0) -> None:
    """``consumer.start()``, but a cancellation (a service shutting down) lets a start already
    under way finish first: stopping a half-started consumer leaves the connections it had
    opened behind (seen as "Unclosed AIOKafkaConnection" at shutdown)."""
    starting = asyncio.ensure_future(consumer.start())
    try:
        await asyncio.shield(starting)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.wait_for(starting, grace_s)
        raise


async def consume_forever(
    what: str,
    make: Callable[[], AIOKafkaConsumer],
    consume: Callable[[AIOKafkaConsumer], Awaitable[None]],
    retry_s: float = 2.0,
) -> None:
    """Start a consumer from ``make()`` and hand it to ``consume`` until that fails; then stop
    it, wait ``retry_s`` and start again, until cancelled.

    The one reconnect loop of every long-lived consumer (control loop, model follower, stream
    inference): a broker restart or a network cut must never end a service's consumer.
    """
    while True:
        consumer = make()
        try:
            await _start_fully(consumer)
            await consume(consumer)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.warning("%s failed; reconnecting in %.0f s", what, retry_s, exc_info=True)
            await asyncio.sleep(retry_s)
        finally:
            with contextlib.suppress(Exception):
                await consumer.stop()
