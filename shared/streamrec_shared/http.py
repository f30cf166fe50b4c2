"""HTTP pieces every service shares: error responses, bounded body reading, probes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

import orjson
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from streamrec_shared.schemas.errors import ErrorBody, ErrorDetail


class ApiError(Exception):
    """An expected failure with a status code, a stable code and field-level reasons.

    ``extra`` adds top-level fields beside ``error``, e.g. the per-event results of a batch that
    was partly stored.
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: Sequence[ErrorDetail] = (),
        headers: dict[str, str] | None = None,
        extra: dict[str, object] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = ErrorBody(code=code, message=message, details=list(details))
        self.headers = headers or {}
        self.extra = extra or {}


def json_response(
    content: object, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(
        orjson.dumps(content), status_code=status, media_type="application/json", headers=headers
    )


def error_response(error: ApiError) -> Response:
    return json_response(
        {"error": error.body.model_dump(), **error.extra}, error.status, error.headers
    )


async def read_body_limited(request: Request, max_bytes: int) -> bytes:
    """Read the body, counting bytes as they arrive: Content-Length is a claim, not a limit."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise too_large(max_bytes)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise too_large(max_bytes)
        chunks.append(chunk)
    return b"".join(chunks)


def too_large(max_bytes: int) -> ApiError:
    return ApiError(
        413,
        "payload_too_large",
        f"request body exceeds {max_bytes} bytes",
        [ErrorDetail(field="body", reason=f"at most {max_bytes} bytes")],
    )


def require_json(request: Request) -> None:
    content_type = request.headers.get("content-type")
    if content_type is None:
        return  # lenient: a body without a type is parsed as JSON
    media = content_type.split(";", 1)[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        raise ApiError(
            415,
            "unsupported_media_type",
            "send the body as application/json",
            [ErrorDetail(field="content-type", reason=f"{media!r} is not JSON")],
        )


def install_error_handlers(app: FastAPI) -> None:
    """Every error, including FastAPI's own, in the one ``{"error": {...}}`` shape."""

    async def on_api_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return error_response(exc)

    async def on_validation(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        details = [
            ErrorDetail(
                field=".".join(str(p) for p in item["loc"] if p not in ("query", "path", "body"))
                or "request",
                reason=item["msg"],
            )
            for item in exc.errors()
        ]
        return error_response(ApiError(422, "validation_error", "invalid request", details))

    async def on_http(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(ApiError(exc.status_code, code, str(exc.detail)))

    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(HTTPException, on_http)


Probe = Callable[[], Awaitable[dict[str, bool]]]


def add_probes(app: FastAPI, readiness: Probe) -> None:
    """``/healthz``: the process answers. ``/readyz``: its required dependencies answer."""

    @app.get("/healthz", tags=["ops"], summary="Liveness: the process is serving")
    async def healthz() -> Response:
        return json_response({"status": "ok"})

    @app.get("/readyz", tags=["ops"], summary="Readiness: required dependencies are reachable")
    async def readyz() -> Response:
        checks = await readiness()
        ready = all(checks.values())
        return json_response(
            {"status": "ready" if ready else "not_ready", "checks": checks}, 200 if ready else 503
        )


class RawRoute(APIRoute):
    """A route whose endpoint takes the ``Request`` and returns a ``Response`` itself.

    FastAPI's per-request dependency solving and response validation cost more than the whole
    work of a hot endpoint such as ingest's; this route class (FastAPI's documented extension
    point) calls the endpoint directly, while the route still appears in the OpenAPI schema.
    Use it only for endpoints that validate their own input.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        endpoint = self.endpoint

        async def handle(request: Request) -> Response:
            response: Response = await endpoint(request)
            return response

        return handle
