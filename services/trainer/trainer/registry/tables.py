"""The registry's tables (SQLAlchemy 2 declarative), one schema for SQLite and PostgreSQL.

Portable on purpose: JSON columns are ``sqlalchemy.JSON`` (json on PostgreSQL, text on
SQLite), timestamps are stored in UTC, enumerations are strings guarded by CHECK constraints.
Every constraint is named by ``NAMING_CONVENTION``, so a migration can address it by name on
both backends. ``migrations/versions/`` must match these models exactly; a test compares them.

Offsets (``{partition: offset}``) are JSON objects, so their keys are strings in the database;
the records in ``records.py`` turn them back into ints.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    CheckConstraint,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class RunMode(StrEnum):
    BATCH = "batch"
    INCREMENTAL = "incremental"


class RunStatus(StrEnum):
    REQUESTED = "requested"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    STOPPED = "stopped"


TERMINAL_RUN_STATUSES = frozenset({RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.STOPPED})


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """``DateTime(timezone=True)`` that only takes aware datetimes and always returns UTC ones.

    PostgreSQL keeps the instant (timestamptz); SQLite keeps the text without an offset and
    returns naive values, so values are converted to UTC on the way in and marked UTC on the
    way out.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: the registry stores aware (UTC) timestamps only")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _one_of(column: str, values: type[StrEnum]) -> str:
    return f"{column} IN ({', '.join(repr(v.value) for v in values)})"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {  # noqa: RUF012  (SQLAlchemy reads it from the class)
        datetime: UTCDateTime(),
        dict[str, Any]: JSON(),
        str: String(),
    }


class ModelSpec(Base):
    """A named model definition (family + hyperparameters); runs and versions belong to one."""

    __tablename__ = "model_specs"

    id: Mapped[str] = mapped_column(String(63), primary_key=True)
    family: Mapped[str] = mapped_column(String(64))
    hyperparameters: Mapped[dict[str, Any]]
    description: Mapped[str] = mapped_column(Text, default="")
    # The highest version number published for this spec (0: none yet). Publishing bumps it
    # with an UPDATE in the transaction that inserts the version: see Registry.publish_version.
    last_version: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class TrainingRun(Base):
    """One training run, created from a ``train_requested`` control message."""

    __tablename__ = "training_runs"
    __table_args__ = (
        CheckConstraint(_one_of("mode", RunMode), name="mode"),
        CheckConstraint(_one_of("status", RunStatus), name="status"),
        CheckConstraint("events_trained >= 0", name="events_trained"),
        Index("ix_training_runs_spec_id_created_at", "spec_id", "created_at"),
        Index("ix_training_runs_status", "status"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    spec_id: Mapped[str] = mapped_column(ForeignKey("model_specs.id"))
    mode: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    # The control message that asked for the run, as received.
    request: Mapped[dict[str, Any]]
    start_offsets: Mapped[dict[str, Any]]
    # Batch runs stop here (exclusive); incremental runs have none.
    end_offsets: Mapped[dict[str, Any] | None]
    # Per partition, the next offset not yet trained on.
    trained_through: Mapped[dict[str, Any] | None]
    events_trained: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class RunStep(Base):
    """Metrics of one training step of a run."""

    __tablename__ = "run_steps"

    run_id: Mapped[str] = mapped_column(ForeignKey("training_runs.id"), primary_key=True)
    step: Mapped[int] = mapped_column(Integer, primary_key=True)
    recorded_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Events the run had seen when the step was taken.
    events: Mapped[int] = mapped_column(Integer)
    loss: Mapped[float] = mapped_column(Float)
    metrics: Mapped[dict[str, Any]]


class ModelVersion(Base):
    """A published model: every row has an artifact. Candidates that lost their evaluation are
    ``RejectedCandidate`` rows and take no version number, so versions have no gaps."""

    __tablename__ = "model_versions"
    __table_args__ = (CheckConstraint("version >= 1", name="version"),)

    spec_id: Mapped[str] = mapped_column(ForeignKey("model_specs.id"), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[str | None] = mapped_column(ForeignKey("training_runs.id"), index=True)
    artifact_uri: Mapped[str] = mapped_column(Text)
    digest: Mapped[str] = mapped_column(String(64))  # sha256 hex of the artifact
    # The candidate's offline metrics, e.g. {"hr@10": 0.31, "ndcg@10": 0.17}.
    metrics: Mapped[dict[str, Any]]
    # The previous version's metrics on the same evaluation window (none for a first version).
    baseline_metrics: Mapped[dict[str, Any] | None]
    trained_through: Mapped[dict[str, Any]]
    events_trained: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class RejectedCandidate(Base):
    """A trained candidate that was not published (e.g. worse than the current version)."""

    __tablename__ = "rejected_candidates"
    __table_args__ = (Index("ix_rejected_candidates_spec_id_id", "spec_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    spec_id: Mapped[str] = mapped_column(ForeignKey("model_specs.id"))
    run_id: Mapped[str | None] = mapped_column(ForeignKey("training_runs.id"), index=True)
    metrics: Mapped[dict[str, Any]]
    baseline_metrics: Mapped[dict[str, Any] | None]
    trained_through: Mapped[dict[str, Any]]
    events_trained: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Deployment(Base):
    """What a deployment name serves: a stable version and optionally a canary with a weight."""

    __tablename__ = "deployments"
    __table_args__ = (
        CheckConstraint("canary_weight >= 0 AND canary_weight <= 1", name="canary_weight"),
        # A version named here must exist for the spec (a NULL version is not checked).
        ForeignKeyConstraint(
            ["spec_id", "stable_version"], ["model_versions.spec_id", "model_versions.version"]
        ),
        ForeignKeyConstraint(
            ["spec_id", "canary_version"], ["model_versions.spec_id", "model_versions.version"]
        ),
    )

    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    spec_id: Mapped[str] = mapped_column(ForeignKey("model_specs.id"))
    stable_version: Mapped[int | None] = mapped_column(Integer)
    canary_version: Mapped[int | None] = mapped_column(Integer)
    canary_weight: Mapped[float] = mapped_column(Float, default=0.0)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class DeploymentChange(Base):
    """One row per ``set_deployment``: the deployment as it became, and why."""

    __tablename__ = "deployment_history"
    __table_args__ = (Index("ix_deployment_history_name_id", "name", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(63))
    spec_id: Mapped[str] = mapped_column(ForeignKey("model_specs.id"))
    stable_version: Mapped[int | None] = mapped_column(Integer)
    canary_version: Mapped[int | None] = mapped_column(Integer)
    canary_weight: Mapped[float] = mapped_column(Float)
    reason: Mapped[str] = mapped_column(Text)
    changed_at: Mapped[datetime] = mapped_column(default=utcnow)


metadata = Base.metadata
