"""Trainer settings: ``STREAMREC_TRAINER_*``, plus the platform-wide infrastructure settings."""

from __future__ import annotations

import sys
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict
from streamrec_shared.settings import KafkaSettings, LogSettings, RedisSettings, TopicSettings


class TrainerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="STREAMREC_TRAINER_", extra="ignore")

    port: int = Field(default=8002, ge=1, le=65535, description="Port the container listens on.")
    database_url: SecretStr = Field(
        default=SecretStr("sqlite:///registry.db"),
        description="Registry database (SQLAlchemy URL): SQLite file or postgresql+psycopg://.",
    )
    artifacts_dir: Path = Field(
        default=Path("artifacts"), description="Root of the directory artifact store."
    )
    control_group: str = Field(
        default="streamrec-trainer",
        description="Consumer group reading the control topic (one trainer acts on a request).",
    )
    run_group_prefix: str = Field(
        default="streamrec-trainer-run-",
        description="Each run commits its progress under the group <prefix><spec>-<run>.",
    )
    max_active_runs: int = Field(default=4, ge=1, le=64)
    fetch_max_records: int = Field(
        default=16_384, ge=1, le=1_000_000, description="Records per fetch from events."
    )
    max_seen_items: int = Field(
        default=1000, ge=1, le=1_000_000, description="Seen items kept per user for evaluation."
    )
    checkpoints_kept: int = Field(default=3, ge=1, le=100)
    checkpoint_every_s: float = Field(
        default=30.0,
        ge=0,
        le=3600,
        description=(
            "A follow run writes its checkpoint (the whole learner: tables, optimizer slots,"
            " user histories, the replay sample) at the first publish cycle this long after the"
            " last one, and when it stops; 0: every cycle. A restart reads the events since the"
            " last checkpoint again. At a 2 s publish cadence, a checkpoint every cycle took a"
            " third of a core."
        ),
    )
    training_states_kept: int = Field(
        default=3,
        ge=1,
        le=100,
        description=(
            "Training states (optimizer slots for warm starts) a run keeps of the versions it"
            " published: a warm start reads only the latest version's."
        ),
    )
    kafka_connect_wait_s: float = Field(default=5.0, ge=0, le=300)
    batch_spec_id: str = Field(
        default="default", description="Spec that `python -m trainer.batch` trains (Job runs)."
    )
    batch_epochs: int = Field(default=3, ge=1, le=100)
    gil_switch_interval_ms: float = Field(
        default=0.5,
        gt=0,
        le=100,
        description=(
            "How long a Python thread may hold the GIL while another waits (Python's default"
            " is 5 ms). TensorFlow's training thread gives the GIL up during every step and"
            " must win it back from the Kafka loop and the prep thread: at 5 ms it waits for"
            " them a good part of an 8 ms step."
        ),
    )

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    topics: TopicSettings = Field(default_factory=TopicSettings)
    redis: RedisSettings = Field(default_factory=RedisSettings)
    log: LogSettings = Field(default_factory=LogSettings)


def tune_process(settings: TrainerSettings) -> None:
    """Process-wide settings a trainer process applies once, at start (service and Job)."""
    sys.setswitchinterval(settings.gil_switch_interval_ms / 1000)
