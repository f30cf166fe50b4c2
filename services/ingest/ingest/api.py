"""HTTP routes of ingest: thin, they parse and map outcomes to status codes."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ValidationError
from starlette.responses import Response
from streamrec_shared.http import (
    ApiError,
    RawRoute,
    json_response,
    read_body_limited,
    require_json,
)
from streamrec_shared.openapi import json_request_body
from streamrec_shared.schemas.errors import ErrorDetail, validation_details
from streamrec_shared.schemas.events import EventBatchIn, EventIn, batch_adapter

from ingest.service import DedupRejectedError, IngestReport, Outcome

if TYPE_CHECKING:
    from ingest.main import IngestState

router = APIRouter(prefix="/v1", tags=["events"], route_class=RawRoute)


class EventAccepted(BaseModel):
    event_id: str
    status: str
    partition: int | None = None
    offset: int | None = None
    deduplicated: bool


class BatchAccepted(BaseModel):
    stored: int
    duplicates: int
    failed: int
    deduplicated: bool
    results: list[dict[str, Any]]


def _state(request: Request) -> IngestState:
    state: IngestState = request.app.state.ingest
    return state


def _invalid(error: ValidationError) -> ApiError:
    details = validation_details(error)
    if any(item["type"] == "json_invalid" for item in error.errors(include_url=False)):
        return ApiError(400, "malformed_json", "the body is not valid JSON", details)
    return ApiError(422, "validation_error", "the event does not match the schema", details)


def _validation_context(state: IngestState) -> dict[str, Any]:
    return {"window": state.window, "now": datetime.now(UTC)}


def _unavailable(
    state: IngestState, message: str, extra: dict[str, object] | None = None
) -> ApiError:
    headers = {"Retry-After": str(state.settings.retry_after_s)}
    return ApiError(503, "unavailable", message, headers=headers, extra=extra)


async def _ingest(state: IngestState, events: list[EventIn]) -> IngestReport:
    try:
        return await state.ingestor.ingest(events)
    except DedupRejectedError:
        raise _unavailable(state, "idempotency store unavailable; retry later") from None


@router.post(
    "/events",
    status_code=202,
    summary="Write one event to Kafka",
    openapi_extra=json_request_body(EventIn),
    responses={
        202: {"model": EventAccepted, "description": "Stored on every in-sync replica"},
        200: {"model": EventAccepted, "description": "Duplicate event_id: stored before"},
        400: {"description": "Malformed JSON"},
        409: {"description": "The same event_id is being written right now; retry"},
        413: {"description": "Body too large"},
        415: {"description": "Not JSON"},
        422: {"description": "Schema violation, with field-level reasons"},
        503: {"description": "Kafka unavailable or slow; nothing stored; see Retry-After"},
    },
)
async def post_event(request: Request) -> Response:
    state = _state(request)
    require_json(request)
    body = await read_body_limited(request, state.settings.max_event_bytes)
    try:
        event = EventIn.model_validate_json(body, context=_validation_context(state))
    except ValidationError as error:
        raise _invalid(error) from None
    report = await _ingest(state, [event])
    result = report.results[0]
    payload = {**result.as_dict(), "deduplicated": report.deduplicated}
    if result.outcome is Outcome.STORED:
        return json_response(payload, 202)
    if result.outcome is Outcome.DUPLICATE:
        return json_response(payload, 200)
    if result.outcome is Outcome.IN_FLIGHT:
        raise ApiError(
            409,
            "in_flight",
            "an event with this event_id is being written; retry to learn its outcome",
            [ErrorDetail(field="event_id", reason="in flight")],
            {"Retry-After": str(state.settings.retry_after_s)},
        )
    raise _unavailable(state, f"event not stored: {result.error}", {"result": payload})


@router.post(
    "/events/batch",
    status_code=202,
    summary="Write up to max_batch_events events to Kafka",
    description=(
        "Not all-or-nothing: each event gets its own outcome. 202 when every event is stored or a "
        "duplicate; 503 with Retry-After when any failed, listing which were stored. Retrying the "
        "same batch with the same event_ids is safe. Invalid batches (422) write nothing."
    ),
    openapi_extra=json_request_body(EventBatchIn),
    responses={
        202: {"model": BatchAccepted},
        400: {"description": "Malformed JSON"},
        413: {"description": "Body too large"},
        422: {"description": "Schema violation or too many events; nothing written"},
        503: {"model": BatchAccepted, "description": "Some or all events not stored; retry"},
    },
)
async def post_batch(request: Request) -> Response:
    state = _state(request)
    require_json(request)
    body = await read_body_limited(request, state.settings.max_batch_bytes)
    try:
        batch = batch_adapter(state.settings.max_batch_events).validate_json(
            body, context=_validation_context(state)
        )
    except ValidationError as error:
        raise _invalid(error) from None
    report = await _ingest(state, batch.events)
    stored, duplicates = report.count(Outcome.STORED), report.count(Outcome.DUPLICATE)
    not_stored = len(report.results) - stored - duplicates  # failed or in flight elsewhere
    summary: dict[str, object] = {
        "stored": stored,
        "duplicates": duplicates,
        "failed": not_stored,
        "deduplicated": report.deduplicated,
        "results": [result.as_dict() for result in report.results],
    }
    if not_stored:
        raise _unavailable(state, f"{not_stored} event(s) not stored; retry them", summary)
    return json_response(summary, 202)
