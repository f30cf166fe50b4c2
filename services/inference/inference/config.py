"""Inference settings: ``STREAMREC_INFERENCE_*``, plus the platform-wide infrastructure settings."""

from __future__ import annotations

from pathlib import Path
from typing import Self

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from streamrec_shared.settings import KafkaSettings, LogSettings, RedisSettings, TopicSettings


class InferenceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="STREAMREC_INFERENCE_", extra="ignore")

    port: int = Field(default=8003, ge=1, le=65535, description="Port the container listens on.")

    # --- the model ------------------------------------------------------------------------
    spec_id: str = Field(default="default", description="The model spec this service serves.")
    model_version: int | None = Field(
        default=None,
        ge=1,
        description="Pin one version (a canary Deployment); unset follows every new version.",
    )
    trainer_url: str = Field(
        default="http://127.0.0.1:8002",
        description="The registry: version records (digests) and artifact files over HTTP.",
    )
    artifacts_dir: Path | None = Field(
        default=None,
        description="The trainer's artifact store, when mounted here; else files come over HTTP.",
    )
    artifact_cache_dir: Path = Field(
        default=Path("model-cache"), description="Where downloaded artifacts are kept."
    )

    # --- serving --------------------------------------------------------------------------
    default_k: int = Field(default=10, ge=1, le=1000)
    max_k: int = Field(default=100, ge=1, le=1000)
    feature_timeout_s: float = Field(
        default=0.02, gt=0, le=5, description="Budget for the Redis feature read of a request."
    )
    popularity_cache_s: float = Field(
        default=1.0,
        ge=0,
        le=60,
        description=(
            "Before the first model, popularity for users without history from a copy this"
            " young (0: Redis)."
        ),
    )

    # --- features (Redis) -----------------------------------------------------------------
    run_feature_updater: bool = Field(
        default=True, description="Run the feature updater in this process (else its own)."
    )
    features_group: str = Field(default="streamrec-inference-features")
    recent_items: int = Field(default=50, ge=1, le=1000, description="Recent items per user.")
    max_seen_items: int = Field(default=1000, ge=1, le=100_000)
    popularity_half_life_s: float = Field(default=86_400.0, gt=0)
    trending_half_life_s: float = Field(default=3_600.0, gt=0)
    # New items: the feature updater keeps each one's context, inference places the items its
    # version does not know from it (``inference.new_items``).
    new_item_context_items: int = Field(
        default=10,
        ge=0,
        le=100,
        description=(
            "A new item's context counts each of its users' newest this many items before it"
            " (0: no contexts kept, new items wait for a version that knows them)."
        ),
    )
    new_item_context_events: int = Field(
        default=10, ge=1, le=1000, description="Events of a new item that count, its first ones."
    )
    new_item_context_ttl_s: int = Field(
        default=86_400, ge=60, description="A new item's context expires this long after its start."
    )
    rank_new_items: bool = Field(
        default=True,
        description="Rank items the served version does not know from their contexts.",
    )
    new_items_max: int = Field(
        default=1000, ge=1, le=100_000, description="The newest items considered for that."
    )
    young_item_events: int = Field(
        default=20,
        ge=0,
        description=(
            "Items the served version counted fewer events of get the term from their context"
            " on top of their score (0: only items it does not know use contexts)."
        ),
    )
    young_items_max: int = Field(
        default=100, ge=0, le=10_000, description="The newest items considered young, at most."
    )
    first_seen_max: int = Field(
        default=100_000,
        ge=1,
        description=(
            "Items the feature store remembers the first event of (items:first_seen), the newest;"
            " an older one seen again is taken for new, and its context reopened."
        ),
    )
    new_items_refresh_s: float = Field(
        default=0.1,
        gt=0,
        le=60,
        description="How often a change of the contexts is looked for (one HMGET).",
    )
    # One fetch is one Redis transaction: ~1,000 events hold Redis ~10 ms (serving reads have
    # a 20 ms budget); 5,000 held it ~50 ms.
    features_fetch_max_records: int = Field(default=1000, ge=1, le=100_000)

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    topics: TopicSettings = Field(default_factory=TopicSettings)
    redis: RedisSettings = Field(default_factory=RedisSettings)
    log: LogSettings = Field(default_factory=LogSettings)

    @model_validator(mode="after")
    def _first_seen_holds_the_new_items(self) -> Self:
        if self.first_seen_max < self.new_items_max:
            raise ValueError("first_seen_max must be at least new_items_max")
        return self
