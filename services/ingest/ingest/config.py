"""Ingest settings: ``STREAMREC_INGEST_*``, plus the platform-wide Kafka/Redis/topic settings."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from streamrec_shared.settings import KafkaSettings, LogSettings, RedisSettings, TopicSettings


class IngestSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="STREAMREC_INGEST_", extra="ignore")

    port: int = Field(default=8001, ge=1, le=65535, description="Port the container listens on.")
    max_batch_events: int = Field(default=1000, ge=1, le=100_000)
    max_event_bytes: int = Field(default=16_384, ge=256)
    max_batch_bytes: int = Field(default=4_194_304, ge=1024)
    # How long a request waits for the brokers' acknowledgement before answering 503.
    ack_timeout_s: float = Field(default=5.0, gt=0)
    retry_after_s: int = Field(default=2, ge=1)
    dedup_window_s: int = Field(default=86_400, ge=1, description="Repeated event_ids ignored.")
    # A claimed-but-unacknowledged event_id blocks retries this long; it must outlast the
    # producer's own delivery timeout so that a late acknowledgement is still recorded.
    dedup_pending_ttl_s: int = Field(default=120, ge=1)
    # When Redis is down: "accept" keeps ingesting (duplicates possible, nothing lost),
    # "reject" answers 503 (no duplicates, producers must retry).
    dedup_on_redis_error: Literal["accept", "reject"] = "accept"
    # At start-up, wait this long for Kafka before serving (then keep connecting in background).
    kafka_connect_wait_s: float = Field(default=5.0, ge=0)
    earliest_timestamp: datetime = datetime(1990, 1, 1, tzinfo=UTC)
    max_future_skew_s: int = Field(default=300, ge=0)

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    topics: TopicSettings = Field(default_factory=TopicSettings)
    redis: RedisSettings = Field(default_factory=RedisSettings)
    log: LogSettings = Field(default_factory=LogSettings)
