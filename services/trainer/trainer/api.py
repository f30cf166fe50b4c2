"""The trainer's REST API: specs, training requests, runs with live figures, versions.

Training is requested through the control topic (``train_requested``), never started here
directly: the API is one producer of control messages among others.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field
from streamrec_shared.artifacts import ArtifactError
from streamrec_shared.http import ApiError
from streamrec_shared.kafka import KafkaUnavailableError, partition_bounds
from streamrec_shared.schemas.control import (
    BoundedStream,
    ControlMessageBase,
    FollowStream,
    OffsetRange,
    PublishPolicy,
    StopRequested,
    TrainingMode,
    TrainRequested,
    ValidationPolicy,
)
from streamrec_shared.schemas.errors import ErrorDetail
from streamrec_shared.schemas.models import ModelSpec, ModelSpecIn, SpecId

from trainer.registry import (
    RejectedRecord,
    RunRecord,
    RunStatus,
    SpecExists,
    SpecRecord,
    StepRecord,
    VersionRecord,
)
from trainer.state import TrainerState

router = APIRouter(prefix="/v1")
ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"description": "No such spec, run or version."},
    503: {"description": "Kafka is unavailable; retry later."},
}


def _state(request: Request) -> TrainerState:
    state: TrainerState = request.app.state.trainer
    return state


class TrainIn(BaseModel):
    """A training request; the stream defaults to the whole ``events`` topic as it is now
    (batch: a bounded, reproducible snapshot) or following it from the start (incremental)."""

    model_config = ConfigDict(extra="forbid")

    mode: TrainingMode
    stream: BoundedStream | FollowStream | None = Field(default=None, discriminator="kind")
    validation: ValidationPolicy = Field(default_factory=ValidationPolicy)
    publish: PublishPolicy = Field(default_factory=PublishPolicy)
    warm_start: bool = True
    epochs: int = Field(default=1, ge=1, le=100)


class Accepted(BaseModel):
    run_id: str
    spec_id: str
    message_id: str
    mode: TrainingMode
    stream: BoundedStream | FollowStream


class RunOut(BaseModel):
    run: RunRecord
    live: dict[str, Any] | None = Field(
        default=None, description="In-memory figures of a run in progress on this trainer."
    )
    recent_steps: list[StepRecord] = Field(default_factory=list)


def _not_found(what: str) -> ApiError:
    return ApiError(404, "not_found", f"{what} not found")


async def _send(state: TrainerState, message: ControlMessageBase) -> None:
    try:
        future = await state.services.producer.send(
            state.settings.topics.control, message.encode(), key=message.subject_key()
        )
        await asyncio.wait_for(future, timeout=10)
    except (KafkaUnavailableError, TimeoutError) as error:
        raise ApiError(
            503,
            "kafka_unavailable",
            f"control topic unavailable: {error}",
            headers={"Retry-After": "2"},
        ) from error


# --- specs ------------------------------------------------------------------------------


@router.post("/specs", status_code=201, response_model=SpecRecord, responses={409: {}})
async def create_spec(body: ModelSpecIn, request: Request) -> SpecRecord:
    registry = _state(request).services.registry
    try:
        return await asyncio.to_thread(
            registry.create_spec,
            body.id,
            body.spec.family,
            body.spec.hyperparameters.model_dump(),
            body.description,
        )
    except SpecExists as error:
        raise ApiError(
            409,
            "spec_exists",
            f"spec {body.id!r} exists; specs are immutable, use a new id",
            [ErrorDetail(field="id", reason="already exists")],
        ) from error


@router.get("/specs", response_model=list[SpecRecord])
async def list_specs(request: Request) -> list[SpecRecord]:
    return await asyncio.to_thread(_state(request).services.registry.list_specs)


async def _spec(state: TrainerState, spec_id: str) -> SpecRecord:
    spec = await asyncio.to_thread(state.services.registry.get_spec, spec_id)
    if spec is None:
        raise _not_found(f"spec {spec_id!r}")
    return spec


@router.get("/specs/{spec_id}", response_model=SpecRecord, responses=ERRORS)
async def get_spec(spec_id: SpecId, request: Request) -> SpecRecord:
    return await _spec(_state(request), spec_id)


# --- training ---------------------------------------------------------------------------


@router.post("/specs/{spec_id}/runs", status_code=202, response_model=Accepted, responses=ERRORS)
async def request_training(spec_id: SpecId, body: TrainIn, request: Request) -> Accepted:
    """Emit ``train_requested``; the trainer's control loop starts the run from it."""
    state = _state(request)
    record = await _spec(state, spec_id)
    spec = ModelSpec.model_validate(
        {"family": record.family, "hyperparameters": record.hyperparameters}
    )
    stream = body.stream
    events = state.settings.topics.events
    if stream is None:
        if body.mode is TrainingMode.BATCH:
            try:
                bounds = await partition_bounds(state.settings.kafka, events)
            except KafkaUnavailableError as error:
                raise ApiError(503, "kafka_unavailable", str(error)) from error
            stream = BoundedStream(
                topic=events,
                partitions={p: OffsetRange(start=b, end=e) for p, (b, e) in bounds.items()},
            )
        else:
            stream = FollowStream(topic=events)
    try:
        message = TrainRequested(
            spec_id=spec_id,
            spec=spec,
            mode=body.mode,
            stream=stream,
            validation=body.validation,
            publish=body.publish,
            warm_start=body.warm_start,
            epochs=body.epochs,
        )
    except ValueError as error:
        raise ApiError(422, "invalid_request", str(error)) from error
    await _send(state, message)
    return Accepted(
        run_id=message.run_id,
        spec_id=spec_id,
        message_id=message.message_id,
        mode=message.mode,
        stream=message.stream,
    )


@router.post("/runs/{run_id}/stop", status_code=202, responses=ERRORS)
async def stop_run(run_id: str, request: Request) -> dict[str, str]:
    state = _state(request)
    run = await asyncio.to_thread(state.services.registry.get_run, run_id)
    if run is None:
        raise _not_found(f"run {run_id!r}")
    message = StopRequested(run_id=run_id, spec_id=run.spec_id)
    await _send(state, message)
    return {"run_id": run_id, "message_id": message.message_id}


def _live(state: TrainerState, run_id: str) -> dict[str, Any] | None:
    run = state.coordinator.runs.get(run_id)
    if run is None:
        return None
    live = dataclasses.asdict(run.progress)
    live["events_per_s"] = round(live["events_per_s"], 1)
    return live


@router.get("/runs", response_model=list[RunOut])
async def list_runs(
    request: Request,
    spec_id: SpecId | None = None,
    status: RunStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[RunOut]:
    state = _state(request)
    runs = await asyncio.to_thread(state.services.registry.list_runs, spec_id, status, limit)
    return [RunOut(run=run, live=_live(state, run.id)) for run in runs]


@router.get("/runs/{run_id}", response_model=RunOut, responses=ERRORS)
async def get_run(run_id: str, request: Request) -> RunOut:
    state = _state(request)
    run = await asyncio.to_thread(state.services.registry.get_run, run_id)
    if run is None:
        raise _not_found(f"run {run_id!r}")
    steps = await asyncio.to_thread(state.services.registry.list_steps, run_id, 20)
    return RunOut(run=run, live=_live(state, run_id), recent_steps=steps)


@router.get("/runs/{run_id}/steps", response_model=list[StepRecord], responses=ERRORS)
async def run_steps(
    run_id: str, request: Request, limit: Annotated[int, Query(ge=1, le=10_000)] = 1000
) -> list[StepRecord]:
    state = _state(request)
    if await asyncio.to_thread(state.services.registry.get_run, run_id) is None:
        raise _not_found(f"run {run_id!r}")
    return await asyncio.to_thread(state.services.registry.list_steps, run_id, limit)


# --- versions ---------------------------------------------------------------------------


@router.get("/specs/{spec_id}/versions", response_model=list[VersionRecord], responses=ERRORS)
async def list_versions(
    spec_id: SpecId, request: Request, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> list[VersionRecord]:
    state = _state(request)
    await _spec(state, spec_id)
    return await asyncio.to_thread(state.services.registry.list_versions, spec_id, limit)


async def _version(state: TrainerState, spec_id: str, version: str) -> VersionRecord:
    registry = state.services.registry
    found: VersionRecord | None
    if version == "latest":
        found = await asyncio.to_thread(registry.latest_version, spec_id)
    elif version.isdigit():
        found = await asyncio.to_thread(registry.get_version, spec_id, int(version))
    else:
        raise ApiError(
            422,
            "invalid_version",
            "version is a number or 'latest'",
            [ErrorDetail(field="version", reason="not a number or 'latest'")],
        )
    if found is None:
        raise _not_found(f"version {version} of {spec_id!r}")
    return found


@router.get("/specs/{spec_id}/versions/{version}", response_model=VersionRecord, responses=ERRORS)
async def get_version(spec_id: SpecId, version: str, request: Request) -> VersionRecord:
    """A version's record: artifact URI, digest, offline metrics, trained-through offsets."""
    return await _version(_state(request), spec_id, version)


@router.get("/specs/{spec_id}/versions/{version}/files/{name}", responses=ERRORS)
async def version_file(spec_id: SpecId, version: str, name: str, request: Request) -> FileResponse:
    """One file of a version's artifact, for readers without access to the store's volume.

    Readers verify the whole artifact against the registry's digest before using it.
    """
    state = _state(request)
    found = await _version(state, spec_id, version)
    try:
        folder = state.services.store.path_of(found.artifact_uri)
    except ArtifactError as error:
        raise _not_found(str(error)) from error
    files = {p.name: p for p in folder.iterdir() if p.is_file()} if folder.is_dir() else {}
    if name not in files:
        raise _not_found(f"file {name!r} of version {found.version}")
    return FileResponse(files[name])


@router.get("/specs/{spec_id}/rejections", response_model=list[RejectedRecord], responses=ERRORS)
async def list_rejections(
    spec_id: SpecId, request: Request, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> list[RejectedRecord]:
    state = _state(request)
    await _spec(state, spec_id)
    return await asyncio.to_thread(state.services.registry.list_rejections, spec_id, limit)
