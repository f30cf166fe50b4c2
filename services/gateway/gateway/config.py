"""Gateway settings: ``STREAMREC_GATEWAY_*``, plus the platform-wide infrastructure settings."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from streamrec_shared.settings import KafkaSettings, LogSettings, RedisSettings, TopicSettings


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="STREAMREC_GATEWAY_", extra="ignore")

    port: int = Field(default=8000, ge=1, le=65535, description="Port the container listens on.")
    # Where the other services answer (Kubernetes: their Service names).
    ingest_url: str = "http://127.0.0.1:8001"
    trainer_url: str = "http://127.0.0.1:8002"
    inference_url: str = "http://127.0.0.1:8003"
    upstream_timeout_s: float = Field(default=1.0, gt=0)

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    topics: TopicSettings = Field(default_factory=TopicSettings)
    redis: RedisSettings = Field(default_factory=RedisSettings)
    log: LogSettings = Field(default_factory=LogSettings)
