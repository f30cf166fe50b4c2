"""Inference settings: ``STREAMREC_INFERENCE_*``, plus the platform-wide infrastructure settings."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from streamrec_shared.settings import KafkaSettings, LogSettings, RedisSettings, TopicSettings


class InferenceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="STREAMREC_INFERENCE_", extra="ignore")

    port: int = Field(default=8003, ge=1, le=65535, description="Port the container listens on.")

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    topics: TopicSettings = Field(default_factory=TopicSettings)
    redis: RedisSettings = Field(default_factory=RedisSettings)
    log: LogSettings = Field(default_factory=LogSettings)
