"""What the registry returns: frozen pydantic records, read from the ORM rows.

Offsets are ``{partition: offset}`` with int keys (JSON stores them as strings); timestamps are
aware and in UTC on both backends.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict

from trainer.registry.tables import RunMode, RunStatus


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


UTCTimestamp = Annotated[datetime, AfterValidator(_utc)]
# pydantic's lax mode turns the JSON object's "3" keys into 3.
Offsets = dict[int, int]


class _Record(BaseModel):
    model_config = ConfigDict(from_attributes=True, frozen=True)


class SpecRecord(_Record):
    id: str
    family: str
    hyperparameters: dict[str, Any]
    description: str
    # Highest version published so far; 0 before the first.
    last_version: int
    created_at: UTCTimestamp


class RunRecord(_Record):
    id: str
    spec_id: str
    mode: RunMode
    status: RunStatus
    request: dict[str, Any]
    start_offsets: Offsets
    end_offsets: Offsets | None
    trained_through: Offsets | None
    events_trained: int
    error: str | None
    created_at: UTCTimestamp
    started_at: UTCTimestamp | None
    finished_at: UTCTimestamp | None
    updated_at: UTCTimestamp


class StepRecord(_Record):
    run_id: str
    step: int
    recorded_at: UTCTimestamp
    events: int
    loss: float
    metrics: dict[str, Any]


class VersionRecord(_Record):
    spec_id: str
    version: int
    run_id: str | None
    artifact_uri: str
    digest: str
    metrics: dict[str, Any]
    baseline_metrics: dict[str, Any] | None
    trained_through: Offsets
    events_trained: int
    created_at: UTCTimestamp


class RejectedRecord(_Record):
    id: int
    spec_id: str
    run_id: str | None
    metrics: dict[str, Any]
    baseline_metrics: dict[str, Any] | None
    trained_through: Offsets
    events_trained: int
    reason: str
    created_at: UTCTimestamp


class DeploymentRecord(_Record):
    name: str
    spec_id: str
    stable_version: int | None
    canary_version: int | None
    canary_weight: float
    updated_at: UTCTimestamp


class DeploymentChangeRecord(_Record):
    id: int
    name: str
    spec_id: str
    stable_version: int | None
    canary_version: int | None
    canary_weight: float
    reason: str
    changed_at: UTCTimestamp
