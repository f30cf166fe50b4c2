"""Settings shared by every service, read from environment variables.

Infrastructure settings (Kafka, Redis, topics, logging) have one prefix for the whole platform
(``STREAMREC_KAFKA_...``, ``STREAMREC_REDIS_...``), so a single ConfigMap can feed every service;
each service's own settings carry its prefix (``STREAMREC_INGEST_...``) and nest these.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class KafkaSettings(BaseSettings):
    """How to reach the brokers and how hard to insist on durability."""

    model_config = SettingsConfigDict(env_prefix="STREAMREC_KAFKA_", extra="ignore")

    bootstrap_servers: str = "127.0.0.1:19092"
    client_id: str = "streamrec"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    # Producer batching: a small linger lets concurrent requests share one produce request.
    linger_ms: int = Field(default=2, ge=0, le=1000)
    max_batch_bytes: int = Field(default=262_144, ge=1024)
    request_timeout_ms: int = Field(default=30_000, ge=1000)
    compression: Literal["none", "gzip", "lz4", "zstd", "snappy"] = "none"


class TopicSettings(BaseSettings):
    """Topic names and the partition/replication layout the project creates."""

    model_config = SettingsConfigDict(env_prefix="STREAMREC_TOPIC_", extra="ignore")

    events: str = "events"
    control: str = "control"
    events_dlq: str = "events.dlq"
    impressions: str = "impressions"
    rec_requests: str = "rec.requests"
    rec_responses: str = "rec.responses"
    events_partitions: int = Field(default=6, ge=1, le=10_000)
    control_partitions: int = Field(default=1, ge=1, le=1000)
    default_partitions: int = Field(default=3, ge=1, le=10_000)
    replication_factor: int = Field(default=1, ge=1, le=10)
    min_insync_replicas: int = Field(default=1, ge=1, le=10)

    def isolated(self, tag: str) -> TopicSettings:
        """The same layout with every topic named ``<name>-<tag>``: tests and evaluation arms
        share one broker without sharing a topic."""
        names = ("events", "control", "events_dlq", "impressions", "rec_requests", "rec_responses")
        return self.model_copy(update={name: f"{getattr(self, name)}-{tag}" for name in names})

    def environment(self) -> dict[str, str]:
        """These settings as the ``STREAMREC_TOPIC_*`` variables a service reads them from."""
        return {f"STREAMREC_TOPIC_{key.upper()}": str(value) for key, value in self}


class RedisSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="STREAMREC_REDIS_", extra="ignore")

    url: SecretStr = SecretStr("redis://127.0.0.1:16379/0")
    # Every key the platform writes starts with this, so tests and tenants can share a server.
    key_prefix: str = "streamrec:"
    socket_timeout_s: float = Field(default=0.5, gt=0)
    max_connections: int = Field(default=64, ge=1)


class LogSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="STREAMREC_LOG_", extra="ignore")

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["json", "text"] = "json"
