"""One error body for every service: a code, a sentence, and field-level reasons."""

from __future__ import annotations

from pydantic import BaseModel, ValidationError


class ErrorDetail(BaseModel):
    field: str
    reason: str


class ErrorBody(BaseModel):
    code: str
    message: str
    details: list[ErrorDetail] = []


def _field_path(location: tuple[int | str, ...]) -> str:
    """``("events", 3, "type")`` -> ``events[3].type``, the way a client would write it."""
    path = ""
    for part in location:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path or "body"


def validation_details(error: ValidationError) -> list[ErrorDetail]:
    return [
        ErrorDetail(field=_field_path(tuple(item["loc"])), reason=item["msg"])
        for item in error.errors(include_url=False, include_input=False)
    ]
