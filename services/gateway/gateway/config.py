"""Gateway settings: ``STREAMREC_GATEWAY_*``, plus the platform-wide infrastructure settings."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from streamrec_shared.settings import KafkaSettings, LogSettings, RedisSettings, TopicSettings

_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="STREAMREC_GATEWAY_", extra="ignore")

    port: int = Field(default=8000, ge=1, le=65535, description="Port the container listens on.")
    # Where the other services answer (Kubernetes: their Service names).
    ingest_url: str = "http://127.0.0.1:8001"
    trainer_url: str = "http://127.0.0.1:8002"
    inference_url: str = Field(
        default="http://127.0.0.1:8003", description="The stable inference pool."
    )
    inference_canary_url: str | None = Field(
        default=None, description="The canary inference pool; unset: no canary."
    )
    canary_weight: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="Share of users sent to the canary pool (sticky by user_id).",
    )
    # NoDecode: the variable is a comma list, not the JSON list pydantic-settings expects.
    api_key_hashes: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="sha256 hex digests of the accepted API keys (comma list); empty: no auth.",
    )
    upstream_timeout_s: float = Field(default=1.0, gt=0)

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    topics: TopicSettings = Field(default_factory=TopicSettings)
    redis: RedisSettings = Field(default_factory=RedisSettings)
    log: LogSettings = Field(default_factory=LogSettings)

    @field_validator("inference_canary_url", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: Any) -> Any:
        # A ConfigMap can only clear a value by setting it empty.
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("api_key_hashes", mode="before")
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip().lower() for part in value.split(",") if part.strip()]
        return value

    @field_validator("api_key_hashes")
    @classmethod
    def _sha256_digests(cls, value: list[str]) -> list[str]:
        # A key pasted where its digest belongs would never match: refuse it at start instead.
        bad = [i for i, digest in enumerate(value) if not _SHA256_HEX.match(digest)]
        if bad:
            raise ValueError(f"entries {bad} are not sha256 hex digests (64 hex characters)")
        return value
